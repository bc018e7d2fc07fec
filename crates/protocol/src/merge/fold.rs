//! Folding one record's history into the one change that reproduces its
//! merged state: what the server's compaction stores in place of the history.
//!
//! Because the merge is a join (commutative, associative, idempotent), a
//! device that already applied some of the history and then applies the
//! folded change ends in the same state as one that applied all of it. The
//! folded change is an ordinary change, so every client generation reads it:
//!
//! - a deleted record is a `delete` (its tombstone's time and actor) that
//!   also carries every field, merged under the tombstone;
//! - a record whose history has an insert is an `insert` whose `data` is the
//!   merged view and whose `fields` give every key its own timestamp;
//! - any other is an `update` of every field.
//!
//! The change's `actor` is the record's last actor (the tombstone's for a
//! delete), which is what older clients show. A field whose winning write had
//! another actor says so in its own `actor` (`null` for none).
//!
//! The folded change is attributed to a device only when every change it
//! replaces came from that device. A device never receives its own changes,
//! so attributing a mix to one of its authors would hide the others' writes
//! from that author; attributed to no device, everyone receives it.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::{ChangeRef, MergeError, RecordState};
use crate::change::{Change, FieldChange, FieldChanges, Op};

/// A record's history, merged so far.
#[derive(Debug, Clone, Default)]
pub struct Fold {
    state: RecordState,
    inserted: bool,
    schema_version: u32,
    /// `None` before the first change; then the one device of every change,
    /// or `Some(None)` once two devices took part.
    device: Option<Option<String>>,
}

/// A folded history: the change to store, and the device it is attributed to
/// (empty: no device, so every device receives it).
#[derive(Debug, Clone)]
pub struct Folded {
    /// The change that reproduces the merged state.
    pub change: Change,
    /// The device every replaced change came from, or empty.
    pub client_id: String,
}

impl Fold {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges one more change of the record's history (in any order),
    /// written under `schema_version` by device `client_id`.
    pub fn add(
        &mut self,
        change: ChangeRef<'_>,
        schema_version: u32,
        client_id: &str,
    ) -> Result<(), MergeError> {
        self.state.apply(change)?;
        self.inserted |= change.op == Op::Insert;
        self.schema_version = self.schema_version.max(schema_version);
        self.device = match self.device.take() {
            None => Some(Some(client_id.to_owned())),
            Some(Some(device)) if device == client_id => Some(Some(device)),
            Some(_) => Some(None),
        };
        Ok(())
    }

    /// The merged state.
    pub fn state(&self) -> &RecordState {
        &self.state
    }

    /// The one change that reproduces the merged state, and its device.
    pub fn finish(self, table: String, id: String) -> Folded {
        let Fold {
            state,
            inserted,
            schema_version,
            device,
        } = self;
        let (op, actor) = match (&state.deleted, inserted) {
            (Some(tombstone), _) => (Op::Delete, tombstone.actor.clone()),
            (None, true) => (Op::Insert, state.last_actor().map(RawValue::to_owned)),
            (None, false) => (Op::Update, state.last_actor().map(RawValue::to_owned)),
        };
        let change_actor = actor.as_deref().map(RawValue::get);
        let fields: FieldChanges = state
            .fields
            .iter()
            .map(|(name, field)| {
                let own = field.actor.as_deref().map(RawValue::get);
                let actor =
                    (own != change_actor).then(|| field.actor.clone().unwrap_or_else(null_actor));
                let change = FieldChange {
                    value: field.value.clone(),
                    at: field.at.clone(),
                    actor,
                };
                (name.clone(), change)
            })
            .collect::<BTreeMap<_, _>>();
        let data = (op == Op::Insert)
            .then(|| RawValue::from_string(state.data_json()).ok())
            .flatten();
        let change = Change {
            table,
            id,
            op,
            data,
            fields: (!fields.is_empty()).then_some(fields),
            deleted_at: state.deleted.as_ref().map(|tombstone| tombstone.at.clone()),
            actor,
            schema_version: schema_version.max(1),
            space_id: None,
        };
        Folded {
            change,
            client_id: device.flatten().unwrap_or_default(),
        }
    }
}

/// A field's explicit "no actor" (the user), when the change has one.
fn null_actor() -> Box<RawValue> {
    // serde_json's default raw value is `null`.
    Box::<RawValue>::default()
}
