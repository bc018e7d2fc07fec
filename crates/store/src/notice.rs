//! Notices of committed pushes, for live delivery.
//!
//! A store announces every committed push on a broadcast channel
//! ([`Store::events`](crate::Store::events)). On SQLite that happens in process
//! right after the commit. On Postgres, the push transaction itself runs
//! `pg_notify`, which Postgres delivers to every listening connection, on every
//! server instance, at commit and in commit order; each instance's listener
//! turns it back into a notice. A notice carries no change data, only what a
//! subscriber needs to decide whether to read: the log (a user's, or a
//! shared space's), the app, the collections, and the positions the push
//! took. A push that reaches several logs (the pusher's own and spaces) is
//! announced once per log.
//!
//! In the process that stored the push, the notice of a user's own log also
//! carries what was written ([`Written`]), exactly as a read of the log would
//! return it: live delivery on that instance then needs no read at all. It
//! never travels between instances; they read.

use std::sync::Arc;

use mana_sync_protocol::{Change, LogId, SpaceId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::spaces::{MemberChange, Role};
use crate::{NewChangeset, StoredChange};

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
    /// The log that grew: a user's, or a shared space's.
    pub log: LogId,
    /// The app the changes belong to.
    pub app_id: String,
    /// The collections that changed; `None` when the list was too long to send.
    pub tables: Option<Vec<String>>,
    /// The log's newest position before this push. Positions are clock
    /// readings, not a dense count, so this is what tells a subscriber whose
    /// cursor is at `after` (or later) that nothing came in between.
    pub after: u64,
    /// Last position of the push.
    pub last: u64,
    /// The device that pushed.
    pub client_id: String,
    /// Set when the log's members changed instead (a space's log; nothing
    /// was written to it): live connections of that user start or stop
    /// following the space at once.
    pub member: Option<MemberNotice>,
    /// What the push wrote at `after + 1..=last` (a user's own log, in the
    /// process that stored it); `None`: read the log.
    pub written: Option<Written>,
}

/// The changes a push wrote into a user's log, as a read of the log returns
/// them, and the log's last dropped position at that moment.
#[derive(Debug, Clone)]
pub struct Written {
    /// Every change of the push, in position order.
    pub changes: Arc<[StoredChange]>,
    /// The last position compaction had dropped (what a read reports).
    pub expired_through: u64,
}

impl Written {
    /// What a push of `app_id` from `client_id` wrote: `changes` with
    /// `event_ids`, at positions from `first` on, stored at `created_at`,
    /// rebuilt as a read returns them; `None` (subscribers then read) if a
    /// change cannot be.
    pub(crate) fn of(
        changes: &[Change],
        event_ids: &[Uuid],
        first: u64,
        app_id: &str,
        client_id: &str,
        created_at: OffsetDateTime,
        expired_through: u64,
    ) -> Option<Self> {
        let changes = changes
            .iter()
            .zip(event_ids)
            .zip(first..)
            .map(|((change, event_id), seq)| {
                StoredChange::as_written(change, seq, *event_id, app_id, client_id, created_at)
            })
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(Self {
            changes: changes.into(),
            expired_through,
        })
    }
}

/// Two writes are the same when they hold the same changes (event ids are
/// unique).
impl PartialEq for Written {
    fn eq(&self, other: &Self) -> bool {
        self.expired_through == other.expired_through
            && self
                .changes
                .iter()
                .map(|change| (change.seq, change.event_id))
                .eq(other
                    .changes
                    .iter()
                    .map(|change| (change.seq, change.event_id)))
    }
}

impl Eq for Written {}

/// A member of a space was added, given another role, or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberNotice {
    /// Whose membership changed.
    pub user: UserId,
    /// Their role now; `None`: no longer a member.
    pub role: Option<Role>,
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
    /// A membership change: the member and their role (`None`: removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<(String, Option<String>)>,
}

impl ChangeNotice {
    /// Whether `device` pushed this into its user's own log: the one case a
    /// device does not get the changes back. Device ids are chosen by each
    /// user's devices, so in a space's log the same id may be another
    /// member's device; a space's changes are never taken for a device's
    /// own (a read of a space's log returns them too).
    pub fn is_own_push_of(&self, device: Option<&str>) -> bool {
        !self.log.is_space() && device == Some(self.client_id.as_str())
    }

    /// The notice for a changeset stored at positions in `after + 1..=last`.
    pub(crate) fn for_changeset(
        log: &LogId,
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
            log: log.clone(),
            app_id: changeset.app_id.to_owned(),
            tables: Some(tables),
            after,
            last,
            client_id: changeset.client_id.to_owned(),
            member: None,
            written: None,
        }
    }

    /// The notice of a membership change of `space` (made by `change`).
    pub fn for_member(space: &SpaceId, change: &MemberChange) -> Self {
        let role = match change {
            MemberChange::Set { role, .. } => Some(*role),
            MemberChange::Remove { .. } => None,
        };
        Self {
            log: LogId::of_space(space),
            app_id: String::new(),
            tables: None,
            after: 0,
            last: 0,
            client_id: String::new(),
            member: Some(MemberNotice {
                user: change.user().clone(),
                role,
            }),
            written: None,
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
            u: self.log.as_str().to_owned(),
            a: self.app_id.clone(),
            t: self.tables.clone(),
            p: self.after,
            l: self.last,
            c: self.client_id.clone(),
            m: self.member.as_ref().map(|member| {
                (
                    member.user.as_str().to_owned(),
                    member.role.map(|role| role.as_str().to_owned()),
                )
            }),
        }
    }

    /// The notice a peer sent, if it names a valid log.
    pub(crate) fn from_wire(payload: Payload) -> Option<Self> {
        let member = match payload.m {
            None => None,
            Some((user, role)) => Some(MemberNotice {
                user: UserId::new(user).ok()?,
                role: match role {
                    None => None,
                    Some(name) => Some(Role::from_name(&name)?),
                },
            }),
        };
        Some(Self {
            log: LogId::parse(&payload.u).ok()?,
            app_id: payload.a,
            tables: payload.t,
            after: payload.p,
            last: payload.l,
            client_id: payload.c,
            member,
            written: None,
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
            log: LogId::parse("alice").expect("valid"),
            app_id: "todo".into(),
            tables,
            after: 3,
            last: 9,
            client_id: "phone".into(),
            member: None,
            written: None,
        }
    }

    #[test]
    fn membership_notices_round_trip() {
        let space = SpaceId::new("household").expect("valid");
        for change in [
            MemberChange::Set {
                user: UserId::new("bob").expect("valid"),
                role: Role::Viewer,
            },
            MemberChange::Remove {
                user: UserId::new("bob").expect("valid"),
            },
        ] {
            let notice = ChangeNotice::for_member(&space, &change);
            assert_eq!(
                ChangeNotice::from_payload(&notice.to_payload()),
                Some(notice)
            );
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
