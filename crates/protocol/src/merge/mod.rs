//! Field-level last-writer-wins merge of one record: the rule every device
//! applies to its own writes and to the changes it receives, so that devices
//! that have seen the same changes hold the same record, whatever the order in
//! which they saw them.
//!
//! A record's merge state ([`RecordState`]) keeps, for every field, the winning
//! write: its value (the exact JSON text it was written with), its timestamp
//! and its actor. A record deleted anywhere keeps a [`Tombstone`].
//!
//! The rules (also written down, with examples every client must pass, in
//! `spec/merge-vectors.json` and `spec/README.md`):
//!
//! - **Per field, the greater write wins.** Writes are ordered by timestamp
//!   (compared as instants with nanosecond precision, not as text: old clients
//!   write `…00Z` or offsets), then, on equal instants, by the value's JSON
//!   text (bytewise), then by the actor's JSON text (no actor sorts first),
//!   then by the timestamp's text. This is a total order on distinct writes,
//!   so every device picks the same winner, and re-applying a write changes
//!   nothing. Merging is therefore commutative, associative and idempotent.
//! - **Inserts** write every key of `data`. A key that also appears in the
//!   insert's `fields` takes that timestamp (and value); otherwise it takes
//!   `data.updatedAt` when that is an RFC 3339 string, else
//!   [`LOWEST_TIMESTAMP`], so that an insert from an old client loses to any
//!   real edit.
//! - **Deletes are sticky tombstones.** Once a record is deleted on any
//!   device, it stays deleted everywhere: later edits are still merged into
//!   its fields (so all devices keep identical state) but never make it
//!   visible again. Of several deletes, the greater `deletedAt` is kept (same
//!   tie-breaks). Sticky tombstones are the simplest rule that converges
//!   without coordination: "delete wins" needs no clock comparison between a
//!   delete and an edit that raced it.
//! - **Actors.** Each field remembers the actor of its winning write
//!   (`__fieldActors` in [`RecordState::view`]); the record's `__lastActor` is
//!   the actor of its greatest write (field or tombstone). Both are derived
//!   from the state, so they converge too. A write without an actor has none
//!   (consumers read "user"). A field entry's own `actor` overrides the
//!   change's for that field (`null`: none); only folded changes carry one.
//! - **A delete may carry `fields`** (folded changes do): they are merged like
//!   an update's, under the tombstone.
//!
//! [`Fold`] turns a record's history into the one change that reproduces its
//! merged state: what the server's compaction stores.
//!
//! Everything here is pure: no clock, no I/O.

mod fold;

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::change::{Change, FieldChanges, Op, SyncChange, WireChange};
use crate::timestamp::Timestamp;

pub use fold::{Fold, Folded};

/// The timestamp of writes that carry none (inserts from old clients without
/// `data.updatedAt`): lower than any real write, so any real edit wins.
pub const LOWEST_TIMESTAMP: &str = "0000-01-01T00:00:00.000000000Z";

/// The lowest timestamp as a [`Timestamp`].
pub fn lowest_timestamp() -> Timestamp {
    Timestamp::trusted(LOWEST_TIMESTAMP.to_owned())
}

/// Whether `text` is in the canonical fixed-width form
/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (what the hybrid logical clocks of
/// mana-sync clients write). For two such strings, text order is time order.
pub fn is_canonical(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 30
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            29 => b == b'Z',
            _ => b.is_ascii_digit(),
        })
}

/// Compares two timestamps as instants, with nanosecond precision.
///
/// Canonical timestamps (see [`is_canonical`]) are compared as text, which is
/// the same order and much cheaper than parsing; anything else is parsed.
pub fn compare_timestamps(a: &Timestamp, b: &Timestamp) -> Ordering {
    if is_canonical(a.as_str()) && is_canonical(b.as_str()) {
        a.as_str().cmp(b.as_str())
    } else {
        a.instant().cmp(&b.instant())
    }
}

fn actor_text(actor: Option<&RawValue>) -> Option<&str> {
    actor.map(RawValue::get)
}

/// The winning write of one field.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FieldState {
    /// The value, as the exact JSON text it was written with.
    pub value: Box<RawValue>,
    /// When it was written.
    pub at: Timestamp,
    /// Who wrote it; absent means the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Box<RawValue>>,
}

impl PartialEq for FieldState {
    fn eq(&self, other: &Self) -> bool {
        self.value.get() == other.value.get()
            && self.at == other.at
            && actor_text(self.actor.as_deref()) == actor_text(other.actor.as_deref())
    }
}

impl FieldState {
    /// The order of writes to one field: timestamp, then value text, then
    /// actor text, then timestamp text. The greater write wins.
    pub fn compare(&self, other: &FieldState) -> Ordering {
        compare_timestamps(&self.at, &other.at)
            .then_with(|| self.value.get().cmp(other.value.get()))
            .then_with(|| {
                actor_text(self.actor.as_deref()).cmp(&actor_text(other.actor.as_deref()))
            })
            .then_with(|| self.at.as_str().cmp(other.at.as_str()))
    }
}

/// The record was deleted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tombstone {
    /// When (the greatest `deletedAt` seen).
    pub at: Timestamp,
    /// Who deleted it; absent means the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Box<RawValue>>,
}

impl PartialEq for Tombstone {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
            && actor_text(self.actor.as_deref()) == actor_text(other.actor.as_deref())
    }
}

impl Tombstone {
    /// The order of deletes: timestamp, then actor text, then timestamp text.
    pub fn compare(&self, other: &Tombstone) -> Ordering {
        compare_timestamps(&self.at, &other.at)
            .then_with(|| {
                actor_text(self.actor.as_deref()).cmp(&actor_text(other.actor.as_deref()))
            })
            .then_with(|| self.at.as_str().cmp(other.at.as_str()))
    }
}

/// Why a change could not be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// An insert whose `data` is missing or not a JSON object.
    #[error("an insert needs a `data` object")]
    DataNotObject,
}

/// One change, borrowed from whichever type carries it.
#[derive(Debug, Clone, Copy)]
pub struct ChangeRef<'a> {
    /// What the change does.
    pub op: Op,
    /// Insert: the whole record.
    pub data: Option<&'a RawValue>,
    /// Per-field values and timestamps (updates; optional on inserts).
    pub fields: Option<&'a FieldChanges>,
    /// Delete: when.
    pub deleted_at: Option<&'a Timestamp>,
    /// Who made the change.
    pub actor: Option<&'a RawValue>,
}

impl<'a> From<&'a SyncChange> for ChangeRef<'a> {
    fn from(change: &'a SyncChange) -> Self {
        ChangeRef {
            op: change.op,
            data: change.data.as_deref(),
            fields: change.fields.as_ref(),
            deleted_at: change.deleted_at.as_ref(),
            actor: change.actor.as_deref(),
        }
    }
}

impl<'a> From<&'a WireChange> for ChangeRef<'a> {
    fn from(change: &'a WireChange) -> Self {
        ChangeRef {
            op: change.op,
            data: change.data.as_deref(),
            fields: change.fields.as_ref(),
            deleted_at: change.deleted_at.as_ref(),
            actor: change.actor.as_deref(),
        }
    }
}

impl<'a> From<&'a Change> for ChangeRef<'a> {
    fn from(change: &'a Change) -> Self {
        ChangeRef {
            op: change.op,
            data: change.data.as_deref(),
            fields: change.fields.as_ref(),
            deleted_at: change.deleted_at.as_ref(),
            actor: change.actor.as_deref(),
        }
    }
}

/// The merge state of one record: the winning write of every field, and the
/// tombstone if it was deleted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordState {
    /// Every field's winning write, by field name.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldState>,
    /// Present once the record was deleted (sticky).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Tombstone>,
}

/// The timestamp an insert gives keys of `data` that `fields` does not
/// cover: `data.updatedAt` when it is an RFC 3339 string, else the lowest.
fn insert_fallback_timestamp(data: &BTreeMap<String, Box<RawValue>>) -> Timestamp {
    data.get("updatedAt")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        .and_then(|text| Timestamp::parse(text).ok())
        .unwrap_or_else(lowest_timestamp)
}

impl RecordState {
    /// Whether the record was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.is_some()
    }

    /// Merges one write of one field; returns whether it won.
    pub fn merge_field(&mut self, name: &str, candidate: FieldState) -> bool {
        match self.fields.get_mut(name) {
            Some(current) => {
                if candidate.compare(current) == Ordering::Greater {
                    *current = candidate;
                    true
                } else {
                    false
                }
            }
            None => {
                self.fields.insert(name.to_owned(), candidate);
                true
            }
        }
    }

    /// Merges a delete; returns whether the state changed.
    pub fn merge_delete(&mut self, candidate: Tombstone) -> bool {
        match &self.deleted {
            Some(current) if candidate.compare(current) != Ordering::Greater => false,
            _ => {
                self.deleted = Some(candidate);
                true
            }
        }
    }

    /// Merges one change into the record; returns whether the state changed.
    pub fn apply(&mut self, change: ChangeRef<'_>) -> Result<bool, MergeError> {
        let actor = change.actor.map(RawValue::to_owned);
        let mut changed = false;
        match change.op {
            Op::Insert => {
                let data: BTreeMap<String, Box<RawValue>> = change
                    .data
                    .and_then(|raw| serde_json::from_str(raw.get()).ok())
                    .ok_or(MergeError::DataNotObject)?;
                let fallback = insert_fallback_timestamp(&data);
                let fields = change.fields;
                for (name, value) in data {
                    if fields.is_some_and(|fields| fields.contains_key(&name)) {
                        continue;
                    }
                    changed |= self.merge_field(
                        &name,
                        FieldState {
                            value,
                            at: fallback.clone(),
                            actor: actor.clone(),
                        },
                    );
                }
                changed |= self.merge_fields(fields, change.actor);
            }
            Op::Update => changed |= self.merge_fields(change.fields, change.actor),
            Op::Delete => {
                let at = change.deleted_at.cloned().unwrap_or_else(lowest_timestamp);
                changed |= self.merge_delete(Tombstone { at, actor });
                changed |= self.merge_fields(change.fields, change.actor);
            }
        }
        Ok(changed)
    }

    fn merge_fields(&mut self, fields: Option<&FieldChanges>, actor: Option<&RawValue>) -> bool {
        let mut changed = false;
        for (name, field) in fields.into_iter().flatten() {
            let actor = match field.actor.as_deref() {
                Some(own) if own.get() == "null" => None,
                Some(own) => Some(own),
                None => actor,
            };
            changed |= self.merge_field(
                name,
                FieldState {
                    value: field.value.clone(),
                    at: field.at.clone(),
                    actor: actor.map(RawValue::to_owned),
                },
            );
        }
        changed
    }

    /// The record's fields as a JSON object text, `{"name": value, …}` with
    /// every value's original text (keys in sorted order).
    pub fn data_json(&self) -> String {
        let mut out = String::with_capacity(16 + self.fields.len() * 24);
        out.push('{');
        for (i, (name, field)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // A string always serialises.
            out.push_str(&serde_json::to_string(name).unwrap_or_else(|_| String::from("\"\"")));
            out.push(':');
            out.push_str(field.value.get());
        }
        out.push('}');
        out
    }

    /// The actor of the record's greatest write (a field or the tombstone),
    /// `None` when that write has no actor (the user) or there is no write.
    pub fn last_actor(&self) -> Option<&RawValue> {
        let mut best: Option<&FieldState> = None;
        for field in self.fields.values() {
            if best.is_none_or(|best| field.compare(best) == Ordering::Greater) {
                best = Some(field);
            }
        }
        match (&self.deleted, best) {
            // A delete wins a tie with a field write: it is what the user sees.
            (Some(tombstone), Some(field))
                if compare_timestamps(&tombstone.at, &field.at) == Ordering::Less =>
            {
                field.actor.as_deref()
            }
            (Some(tombstone), _) => tombstone.actor.as_deref(),
            (None, Some(field)) => field.actor.as_deref(),
            (None, None) => None,
        }
    }

    /// Each field's actor, for the fields whose winning write has one.
    pub fn field_actors(&self) -> BTreeMap<&str, &RawValue> {
        self.fields
            .iter()
            .filter_map(|(name, field)| Some((name.as_str(), field.actor.as_deref()?)))
            .collect()
    }

    /// The record as an app sees it: its fields, plus `__lastActor` and
    /// `__fieldActors` when there are actors to report; `None` once deleted.
    pub fn view(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        if self.is_deleted() {
            return None;
        }
        let mut view = serde_json::Map::new();
        for (name, field) in &self.fields {
            view.insert(name.clone(), parse_raw(field.value.get()));
        }
        if let Some(actor) = self.last_actor() {
            view.insert("__lastActor".to_owned(), parse_raw(actor.get()));
        }
        let actors = self.field_actors();
        if !actors.is_empty() {
            let actors = actors
                .into_iter()
                .map(|(name, actor)| (name.to_owned(), parse_raw(actor.get())))
                .collect();
            view.insert(
                "__fieldActors".to_owned(),
                serde_json::Value::Object(actors),
            );
        }
        Some(view)
    }
}

/// Parses JSON text that is known to be valid (it came from a `RawValue`).
fn parse_raw(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        Timestamp::parse(text).expect("valid timestamp")
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("valid JSON")
    }

    fn field(value: &str, at: &str) -> FieldState {
        FieldState {
            value: raw(value),
            at: ts(at),
            actor: None,
        }
    }

    fn update(fields: &str, actor: Option<&str>) -> WireChange {
        let actor = actor.map_or(String::new(), |a| format!(r#","actor":{a}"#));
        serde_json::from_str(&format!(
            r#"{{"table":"t","id":"1","op":"update","fields":{fields}{actor}}}"#
        ))
        .expect("valid change")
    }

    #[test]
    fn the_lowest_timestamp_is_valid_and_lowest() {
        assert!(Timestamp::parse(LOWEST_TIMESTAMP).is_ok());
        let lowest = lowest_timestamp();
        assert_eq!(lowest.as_str(), LOWEST_TIMESTAMP);
        assert!(is_canonical(LOWEST_TIMESTAMP));
        assert_eq!(
            compare_timestamps(&lowest, &ts("0001-01-01T00:00:00Z")),
            Ordering::Less
        );
    }

    #[test]
    fn timestamps_compare_as_instants_whatever_their_format() {
        let canonical = ts("2026-11-25T10:00:00.000000000Z");
        assert_eq!(
            compare_timestamps(&canonical, &ts("2026-11-25T10:00:00Z")),
            Ordering::Equal
        );
        assert_eq!(
            compare_timestamps(&canonical, &ts("2026-11-25T11:00:00.5+01:00")),
            Ordering::Less
        );
        assert_eq!(
            compare_timestamps(
                &ts("2026-11-25T10:00:00.123000001Z"),
                &ts("2026-11-25T10:00:00.123Z")
            ),
            Ordering::Greater
        );
    }

    #[test]
    fn a_newer_write_wins_and_an_older_one_is_ignored() {
        let mut state = RecordState::default();
        assert!(state.merge_field("t", field(r#""a""#, "2026-01-01T00:00:00.000000002Z")));
        assert!(!state.merge_field("t", field(r#""b""#, "2026-01-01T00:00:00.000000001Z")));
        assert_eq!(state.fields["t"].value.get(), r#""a""#);
        assert!(state.merge_field("t", field(r#""c""#, "2026-01-01T00:00:00.000000003Z")));
        assert_eq!(state.fields["t"].value.get(), r#""c""#);
        // Re-applying the winner changes nothing.
        assert!(!state.merge_field("t", field(r#""c""#, "2026-01-01T00:00:00.000000003Z")));
    }

    #[test]
    fn ties_are_broken_by_value_text_in_either_order() {
        let at = "2026-01-01T00:00:00.000000000Z";
        let mut one = RecordState::default();
        one.merge_field("t", field(r#""a""#, at));
        one.merge_field("t", field(r#""b""#, at));
        let mut two = RecordState::default();
        two.merge_field("t", field(r#""b""#, at));
        two.merge_field("t", field(r#""a""#, at));
        assert_eq!(one, two);
        assert_eq!(one.fields["t"].value.get(), r#""b""#);
    }

    #[test]
    fn deletes_are_sticky_and_edits_still_merge_underneath() {
        let mut state = RecordState::default();
        let delete: WireChange = serde_json::from_str(
            r#"{"table":"t","id":"1","op":"delete","deletedAt":"2026-01-01T00:00:00Z"}"#,
        )
        .expect("valid");
        assert!(state.apply((&delete).into()).expect("merges"));
        let later = update(
            r#"{"t":{"value":1,"at":"2027-01-01T00:00:00.000000000Z"}}"#,
            None,
        );
        assert!(state.apply((&later).into()).expect("merges"));
        assert!(state.is_deleted());
        assert_eq!(state.view(), None);
        assert_eq!(state.fields["t"].value.get(), "1");
    }

    #[test]
    fn inserts_without_fields_use_updated_at_or_lose_to_any_edit() {
        let insert: WireChange = serde_json::from_str(
            r#"{"table":"t","id":"1","op":"insert","data":{"id":"1","title":"old"}}"#,
        )
        .expect("valid");
        let mut state = RecordState::default();
        state.apply((&insert).into()).expect("merges");
        assert_eq!(state.fields["title"].at.as_str(), LOWEST_TIMESTAMP);
        let dated: WireChange = serde_json::from_str(
            r#"{"table":"t","id":"1","op":"insert","data":{"title":"new","updatedAt":"2026-01-01T00:00:00.000Z"}}"#,
        )
        .expect("valid");
        state.apply((&dated).into()).expect("merges");
        assert_eq!(state.fields["title"].value.get(), r#""new""#);
        assert_eq!(
            state.fields["title"].at.as_str(),
            "2026-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn actors_are_kept_per_field_and_for_the_last_write() {
        let mut state = RecordState::default();
        let ai = update(
            r#"{"a":{"value":1,"at":"2026-01-01T00:00:00.000000001Z"}}"#,
            Some(r#"{"kind":"ai"}"#),
        );
        let user = update(
            r#"{"b":{"value":2,"at":"2026-01-01T00:00:00.000000002Z"}}"#,
            None,
        );
        state.apply((&ai).into()).expect("merges");
        assert_eq!(
            state.last_actor().map(RawValue::get),
            Some(r#"{"kind":"ai"}"#)
        );
        state.apply((&user).into()).expect("merges");
        assert!(state.last_actor().is_none());
        let view = state.view().expect("visible");
        assert_eq!(
            view["__fieldActors"],
            serde_json::json!({"a": {"kind": "ai"}})
        );
        assert!(!view.contains_key("__lastActor"));
        assert_eq!(state.data_json(), r#"{"a":1,"b":2}"#);
    }
}
