//! Notices of committed pushes, for live delivery.
//!
//! A store announces every committed push on a broadcast channel
//! ([`Store::events`](crate::Store::events)). On SQLite that happens in process
//! right after the commit. On Postgres, the push transaction itself runs
//! `pg_notify`, which Postgres delivers to every listening connection, on every
//! server instance, at commit and in commit order; each instance's listener
//! turns it back into a notice. A notice carries no change data, only what a
//! subscriber needs to decide whether to read: the user, the app, the
//! collections, and the positions the push took.

use std::sync::Arc;

use mana_sync_protocol::UserId;
use serde::{Deserialize, Serialize};

use crate::NewChangeset;

/// Postgres channel that carries notices between instances.
pub const NOTIFY_CHANNEL: &str = "mana_sync_changes";

/// Capacity of the in-process event channel. A receiver that falls further
/// behind gets a `Lagged` error and must treat it as [`StoreEvent::Resync`].
pub(crate) const EVENT_CAPACITY: usize = 4096;

/// Postgres refuses notification payloads of 8000 bytes or more; beyond this
/// budget the collection list is left out ("any collection may have changed").
pub(crate) const PAYLOAD_BUDGET: usize = 7000;

/// A push was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeNotice {
    /// Whose log grew.
    pub user: UserId,
    /// The app the changes belong to.
    pub app_id: String,
    /// The collections that changed; `None` when the list was too long to send.
    pub tables: Option<Vec<String>>,
    /// The user's newest position before this push. Positions are clock
    /// readings, not a dense count, so this is what tells a subscriber whose
    /// cursor is at `after` (or later) that nothing came in between.
    pub after: u64,
    /// Last position of the push.
    pub last: u64,
    /// The device that pushed.
    pub client_id: String,
}

/// What a store announces.
#[derive(Debug, Clone)]
pub enum StoreEvent {
    /// A push was committed.
    Changed(Arc<ChangeNotice>),
    /// Notices may have been lost (the listener lost its connection, or a
    /// receiver lagged): every subscriber should re-read from its cursor.
    Resync,
}

/// A notice as it travels between instances (short keys: Postgres limits a
/// notification to 8000 bytes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Payload {
    u: String,
    a: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<Vec<String>>,
    p: u64,
    l: u64,
    c: String,
}

impl ChangeNotice {
    /// The notice for a changeset stored at positions in `after + 1..=last`.
    pub(crate) fn for_changeset(
        user: &UserId,
        changeset: &NewChangeset<'_>,
        after: u64,
        last: u64,
    ) -> Self {
        let mut tables: Vec<String> = Vec::new();
        for change in changeset.changes {
            if !tables.contains(&change.table) {
                tables.push(change.table.clone());
            }
        }
        Self {
            user: user.clone(),
            app_id: changeset.app_id.to_owned(),
            tables: Some(tables),
            after,
            last,
            client_id: changeset.client_id.to_owned(),
        }
    }

    /// Whether `table` may have changed.
    pub fn touches(&self, table: &str) -> bool {
        self.tables
            .as_ref()
            .is_none_or(|tables| tables.iter().any(|t| t == table))
    }

    /// The notice as it travels between instances.
    pub(crate) fn to_wire(&self) -> Payload {
        Payload {
            u: self.user.as_str().to_owned(),
            a: self.app_id.clone(),
            t: self.tables.clone(),
            p: self.after,
            l: self.last,
            c: self.client_id.clone(),
        }
    }

    /// The notice a peer sent, if it names a valid user.
    pub(crate) fn from_wire(payload: Payload) -> Option<Self> {
        Some(Self {
            user: UserId::new(payload.u).ok()?,
            app_id: payload.a,
            tables: payload.t,
            after: payload.p,
            last: payload.l,
            client_id: payload.c,
        })
    }

    /// The notice as JSON of at most [`PAYLOAD_BUDGET`] bytes.
    pub(crate) fn to_payload(&self) -> String {
        let mut payload = self.to_wire();
        let text = serde_json::to_string(&payload).unwrap_or_default();
        if text.len() <= PAYLOAD_BUDGET {
            return text;
        }
        payload.t = None;
        serde_json::to_string(&payload).unwrap_or_default()
    }

    /// Parses a payload written by [`ChangeNotice::to_payload`].
    pub(crate) fn from_payload(text: &str) -> Option<Self> {
        Self::from_wire(serde_json::from_str(text).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(tables: Option<Vec<String>>) -> ChangeNotice {
        ChangeNotice {
            user: UserId::new("alice").expect("valid"),
            app_id: "todo".into(),
            tables,
            after: 3,
            last: 9,
            client_id: "phone".into(),
        }
    }

    #[test]
    fn payloads_round_trip() {
        let original = notice(Some(vec!["tasks".into(), "lists".into()]));
        assert_eq!(
            ChangeNotice::from_payload(&original.to_payload()),
            Some(original)
        );
    }

    #[test]
    fn oversized_table_lists_become_any_table() {
        let many: Vec<String> = (0..2000).map(|i| format!("collection-{i}")).collect();
        let payload = notice(Some(many)).to_payload();
        assert!(payload.len() < 8000);
        let parsed = ChangeNotice::from_payload(&payload).expect("parses");
        assert_eq!(parsed.tables, None);
        assert!(parsed.touches("anything"));
    }
}
