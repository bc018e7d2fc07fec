//! The parameters of a group's statements: arrays with one element per
//! push, or per change.

use mana_sync_protocol::{Change, Cursor};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::pg_push::Job;
use crate::postgres::ChangeColumns;

/// The parameters of [`REPLIES`] (or [`REPLIES_IN_COLLECTION`]), one
/// element per push that wants a reply.
pub(super) struct GroupReplies<'a> {
    users: Vec<&'a str>,
    apps: Vec<&'a str>,
    afters: Vec<i64>,
    fetches: Vec<i64>,
    excludes: Vec<Option<&'a str>>,
    pushes: Vec<i64>,
    collections: Vec<Option<&'a str>>,
}

impl<'a> GroupReplies<'a> {
    /// The replies `jobs` want that name a collection (`by_collection`) or
    /// those that do not; `None` when there are none.
    pub(super) fn of(jobs: &'a [Job], by_collection: bool) -> Option<Self> {
        let mut replies = Self {
            users: Vec::new(),
            apps: Vec::new(),
            afters: Vec::new(),
            fetches: Vec::new(),
            excludes: Vec::new(),
            pushes: Vec::new(),
            collections: Vec::new(),
        };
        for (index, job) in jobs.iter().enumerate() {
            let Some(reply) = &job.reply else { continue };
            if reply.collection.is_some() != by_collection {
                continue;
            }
            replies.users.push(job.user.as_str());
            replies.apps.push(&reply.app_id);
            replies.afters.push(crate::postgres::seq_param(reply.after));
            // One row more than the page, to tell whether more wait.
            replies.fetches.push(count(reply.limit + 1));
            replies.excludes.push(reply.exclude_client.as_deref());
            replies.pushes.push(count(index + 1));
            replies.collections.push(reply.collection.as_deref());
        }
        (!replies.users.is_empty()).then_some(replies)
    }

    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.users,
            &self.apps,
            &self.afters,
            &self.fetches,
            &self.excludes,
            &self.pushes,
            &self.collections,
        ]
    }
}

/// The parameters of [`WRITE_GROUP`] for a group of pushes, each change
/// with a new event id.
pub(super) struct GroupWrite<'a> {
    /// The pushers, in the group's order: what the group declares.
    pub(super) users: Vec<&'a str>,
    apps: Vec<&'a str>,
    clients: Vec<&'a str>,
    changeset_ids: Vec<Option<&'a str>>,
    counts: Vec<i64>,
    superseding: Vec<i64>,
    first_possible: i64,
    change_push: Vec<i64>,
    change_place: Vec<i64>,
    event_ids: Vec<Uuid>,
    /// Where each push's changes start in the per-change columns.
    starts: Vec<usize>,
    columns: ChangeColumns<'a>,
}

impl<'a> GroupWrite<'a> {
    pub(super) fn new(jobs: &'a [Job]) -> Self {
        let changes: Vec<&'a Change> = jobs.iter().flat_map(|job| &job.changes).collect();
        let mut write = Self {
            users: jobs.iter().map(|job| job.user.as_str()).collect(),
            apps: jobs.iter().map(|job| job.app_id.as_str()).collect(),
            clients: jobs.iter().map(|job| job.client_id.as_str()).collect(),
            changeset_ids: jobs.iter().map(|job| job.changeset_id.as_deref()).collect(),
            counts: jobs.iter().map(|job| count(job.changes.len())).collect(),
            superseding: jobs
                .iter()
                .map(|job| crate::compaction::superseding(&job.changes))
                .collect(),
            first_possible: crate::postgres::seq_param(Cursor::START.position() + 1),
            change_push: Vec::with_capacity(changes.len()),
            change_place: Vec::with_capacity(changes.len()),
            event_ids: changes.iter().map(|_| Uuid::now_v7()).collect(),
            starts: Vec::with_capacity(jobs.len()),
            columns: ChangeColumns::new(changes.iter().copied()),
        };
        for (push, job) in jobs.iter().enumerate() {
            write.starts.push(write.change_push.len());
            for place in 1..=job.changes.len() {
                write.change_push.push(count(push + 1));
                write.change_place.push(count(place));
            }
        }
        write
    }

    /// The event ids of the changes of push `index`.
    pub(super) fn event_ids_of(&self, index: usize) -> &[Uuid] {
        let start = self
            .starts
            .get(index)
            .copied()
            .unwrap_or(self.event_ids.len());
        let end = self
            .starts
            .get(index + 1)
            .copied()
            .unwrap_or(self.event_ids.len());
        self.event_ids.get(start..end).unwrap_or_default()
    }

    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &self.users,
            &self.apps,
            &self.clients,
            &self.changeset_ids,
            &self.counts,
            &self.superseding,
            &self.first_possible,
            &self.change_push,
            &self.change_place,
            &self.event_ids,
        ];
        params.extend(self.columns.params());
        params
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
