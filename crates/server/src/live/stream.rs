//! The change stream behind `GET /sync/{appId}/stream`.
//!
//! A stream keeps one cursor per collection and log: the user's own log, and
//! for clients that follow spaces each space's log. It subscribes to the hub
//! *before* reading its backlog, so a push committed while the backlog is
//! being read is still announced afterwards. Every notice either continues
//! where a cursor stands (then the notice's shared batch is used, one database
//! read for all streams) or it does not (then the stream pages from its own
//! cursor). Either way each change is sent exactly once, in order, and never
//! to the device that pushed it into its user's own log. A space's changes
//! go to every member's devices, the pusher's too, as a read of the space
//! returns them: device ids are chosen per user, so another member's device
//! may carry the same one.
//!
//! Spaces: a stream that follows spaces starts following a space the moment
//! its user joins it (`event: space-added`, then the space's changes from
//! its start) and stops the moment they leave or are removed
//! (`event: space-removed`). A shared batch of a space is only used if the
//! user is still among its readers, and a read of a space's log fails for a
//! user who left; either way the stream stops following the space and says
//! so, so a removed member receives nothing committed after the removal.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_stream::stream;
use futures::{Stream, StreamExt};
use mana_sync_protocol::messages::{ErrorDetail, SpaceEvent};
use mana_sync_protocol::{Cursor, LogId, Since, SpaceId, StreamChanges, UserId};
use mana_sync_store::{MAX_PAGE, Role, Store, StoreError, StoredChange};
use tokio::time::{Instant, MissedTickBehavior};

use super::{StreamItem, StreamRequest, sleep_until, token_expired};
use crate::follow::{CursorDialect, LogCursor, LogCursors, LogRef};
use crate::hub::{Hub, Pending, Subscription};
use crate::service::{FollowedPage, FollowedQuery, ServiceError, SyncService};

fn changes_event(
    service: &SyncService,
    table: &str,
    changes: Vec<StoredChange>,
    cursors: &LogCursors,
    dialect: CursorDialect,
    has_more: bool,
) -> StreamItem {
    service.count_sent(changes.len());
    StreamItem::Changes(StreamChanges {
        table: table.to_owned(),
        changes: changes
            .into_iter()
            .map(StoredChange::into_sync_change)
            .collect(),
        synced_until: cursors.format(dialect),
        has_more,
    })
}

fn failure(error: &ServiceError) -> StreamItem {
    if let ServiceError::Store(StoreError::CursorExpired { .. }) = error {
        return StreamItem::CursorExpired(ErrorDetail {
            code: "cursor_expired".into(),
            message: format!("{error}; download the current state from the start again"),
        });
    }
    tracing::warn!(%error, "ending a change stream");
    StreamItem::Failed(ErrorDetail {
        code: "unavailable".into(),
        message: "the stream ended; reconnect from your last syncedUntil".into(),
    })
}

fn space_event(space: &SpaceId, role: Option<Role>) -> SpaceEvent {
    SpaceEvent {
        space_id: space.as_str().to_owned(),
        role: role.map(|role| role.as_str().to_owned()),
    }
}

/// What one stream reads: whose, which app, and how it writes cursors.
#[derive(Clone)]
struct Reader {
    service: Arc<SyncService>,
    user: UserId,
    app_id: String,
    client_id: Option<String>,
    dialect: CursorDialect,
}

impl Reader {
    fn query<'a>(&'a self, table: &'a str) -> FollowedQuery<'a> {
        FollowedQuery {
            app_id: &self.app_id,
            collection: Some(table),
            exclude_client: self.client_id.as_deref(),
            limit: MAX_PAGE,
            dialect: self.dialect,
        }
    }

    /// Every page of one collection in every log the device follows, from
    /// `cursors` to the end.
    fn followed_pages(
        &self,
        table: String,
        cursors: LogCursors,
    ) -> impl Stream<Item = Result<FollowedPage, ServiceError>> + use<> {
        let reader = self.clone();
        stream! {
            let mut cursors = cursors;
            loop {
                let page = reader.service.read_followed(&reader.user, &reader.query(&table), cursors.clone()).await;
                let more = match &page {
                    Ok(page) => {
                        cursors = page.cursors.clone();
                        page.has_more
                    }
                    Err(_) => false,
                };
                yield page;
                if !more {
                    break;
                }
            }
        }
    }

    /// Every page of one collection of one log, from `cursor` to the end.
    fn log_pages(
        &self,
        table: String,
        space: Option<SpaceId>,
        cursor: LogCursor,
    ) -> impl Stream<Item = Result<mana_sync_store::ChangePage, ServiceError>> + use<> {
        let reader = self.clone();
        stream! {
            let mut cursor = cursor;
            loop {
                let page = reader
                    .service
                    .read_log(&reader.user, &reader.query(&table), space.as_ref(), cursor)
                    .await;
                let more = match &page {
                    Ok(page) => {
                        cursor = LogCursor::after(page);
                        page.has_more
                    }
                    Err(_) => false,
                };
                yield page;
                if !more {
                    break;
                }
            }
        }
    }
}

/// Where the stream stands: each collection's cursors, and the spaces it
/// follows.
struct Position {
    tables: Vec<(String, LogCursors)>,
    spaces: Vec<SpaceId>,
}

impl Position {
    /// Stops following `space`; whether it was followed.
    fn drop_space(&mut self, subscription: &Subscription, space: &SpaceId) -> bool {
        subscription.unfollow(space);
        for (_, cursors) in &mut self.tables {
            cursors.spaces.remove(space);
        }
        let followed = self.spaces.contains(space);
        self.spaces.retain(|known| known != space);
        followed
    }

    /// Follows the spaces a read listed, and drops those it found left;
    /// returns the spaces dropped.
    fn adopt(&mut self, subscription: &Subscription, page: &FollowedPage) -> Vec<SpaceId> {
        for space in &page.followed {
            if !self.spaces.contains(space) {
                subscription.follow(space);
                self.spaces.push(space.clone());
            }
        }
        page.removed
            .iter()
            .filter(|space| self.drop_space(subscription, space))
            .cloned()
            .collect()
    }

    /// The log a notice is about, if the stream follows it.
    fn followed_log<'a>(&'a self, user: &UserId, log: &LogId) -> Option<LogRef<'a>> {
        if *log == LogId::of_user(user) {
            return Some(LogRef::Own);
        }
        let space = log.space()?;
        self.spaces.iter().find(|s| **s == space).map(LogRef::Space)
    }
}

/// The stream of events for one `GET /sync/{appId}/stream`, subscribed
/// with `subscription` (taken before the response starts, so a refusal is
/// still an HTTP status). It ends with `event: error` `token_expired` at
/// `token_deadline`.
pub fn change_stream(
    service: Arc<SyncService>,
    hub: Arc<Hub>,
    subscription: Subscription,
    request: StreamRequest,
    heartbeat: Duration,
    token_deadline: SystemTime,
) -> impl Stream<Item = StreamItem> + Send + 'static {
    stream! {
        let StreamRequest { user, app_id, collections, since, client_id, dialect } = request;
        let store: Arc<dyn Store> = service.store().clone();
        let reader = Reader { service: service.clone(), user: user.clone(), app_id, client_id, dialect };
        let client_id = reader.client_id.clone();
        let mut expiry = std::pin::pin!(sleep_until(token_deadline));
        let mut at = Position { tables: Vec::with_capacity(collections.len()), spaces: Vec::new() };

        // Backlog: every collection to its end, one event per page (even an
        // empty one, so the device learns its cursor).
        for table in collections {
            let mut cursors = since.clone();
            let mut backlog = std::pin::pin!(reader.followed_pages(table.clone(), since.clone()));
            while let Some(page) = backlog.next().await {
                match page {
                    Ok(page) => {
                        for space in at.adopt(&subscription, &page) {
                            yield StreamItem::SpaceRemoved(space_event(&space, None));
                        }
                        cursors = page.cursors;
                        yield changes_event(&service, &table, page.changes, &cursors, dialect, page.has_more);
                    }
                    Err(error) => {
                        yield failure(&error);
                        return;
                    }
                }
            }
            at.tables.push((table, cursors));
        }

        let mut ticks = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let pending: Pending = tokio::select! {
                () = hub.shutdown().cancelled() => return,
                () = &mut expiry => {
                    yield StreamItem::Failed(token_expired());
                    return;
                }
                _ = ticks.tick() => {
                    yield StreamItem::Heartbeat;
                    continue;
                }
                pending = subscription.changed() => pending,
            };

            // Joined and left spaces first: a notice of a space taken
            // together with its leaving is not delivered.
            for (space, role) in pending.memberships {
                if role.is_none() {
                    if at.drop_space(&subscription, &space) {
                        yield StreamItem::SpaceRemoved(space_event(&space, None));
                    }
                    continue;
                }
                yield StreamItem::SpaceAdded(space_event(&space, role));
                if at.spaces.contains(&space) {
                    continue; // another role in a space it follows
                }
                at.spaces.push(space.clone());
                for i in 0..at.tables.len() {
                    let table = at.tables[i].0.clone();
                    let mut download = std::pin::pin!(reader.log_pages(table.clone(), Some(space.clone()), LogCursor::START));
                    while let Some(page) = download.next().await {
                        match page {
                            Ok(page) => {
                                let cursors = &mut at.tables[i].1;
                                cursors.set(&LogRef::Space(&space), LogCursor::after(&page));
                                yield changes_event(&service, &table, page.changes, cursors, dialect, page.has_more);
                            }
                            Err(ServiceError::Store(StoreError::SpaceForbidden { .. })) => {
                                // Left again already; the removal is pending.
                                break;
                            }
                            Err(error) => {
                                yield failure(&error);
                                return;
                            }
                        }
                    }
                }
            }

            // Which (collection, log) pairs to read from their own cursor,
            // and which are served from a notice's shared batch.
            let mut reread: Vec<(usize, Option<SpaceId>)> = Vec::new();
            if pending.resync {
                for i in 0..at.tables.len() {
                    let (table, cursors) = at.tables[i].clone();
                    let mut catch_up = std::pin::pin!(reader.followed_pages(table.clone(), cursors));
                    while let Some(page) = catch_up.next().await {
                        service.count_catch_up_read();
                        match page {
                            Ok(page) => {
                                for space in at.adopt(&subscription, &page) {
                                    yield StreamItem::SpaceRemoved(space_event(&space, None));
                                }
                                at.tables[i].1 = page.cursors;
                                if !page.changes.is_empty() {
                                    yield changes_event(&service, &table, page.changes, &at.tables[i].1, dialect, page.has_more);
                                }
                            }
                            Err(error) => {
                                yield failure(&error);
                                return;
                            }
                        }
                    }
                }
                continue;
            }
            for published in &pending.notices {
                let notice = &published.notice;
                let space: Option<SpaceId> = match at.followed_log(&user, &notice.log) {
                    None => continue,
                    Some(log) => log.space().cloned(),
                };
                let log = match &space {
                    Some(space) => LogRef::Space(space),
                    None => LogRef::Own,
                };
                let position = |cursors: &LogCursors| cursors.get(&log).map_or(Cursor::START.position(), LogCursor::position);
                let affected: Vec<usize> = (0..at.tables.len())
                    .filter(|&i| notice.touches(&at.tables[i].0) && position(&at.tables[i].1) < notice.last)
                    .filter(|&i| !reread.contains(&(i, space.clone())))
                    .collect();
                if affected.is_empty() {
                    continue;
                }
                let continues = affected.iter().all(|&i| position(&at.tables[i].1) >= notice.after);
                if continues && notice.is_own_push_of(client_id.as_deref()) {
                    // The device's own push: nothing to send, the cursors
                    // only move past it. No batch is needed, so it does not
                    // matter that the hub may have let it go while this
                    // notice waited (the hub does not wake us for our own).
                    for i in affected {
                        let cursors = &mut at.tables[i].1;
                        let cursor = cursors.get(&log).unwrap_or(LogCursor::START);
                        cursors.set(&log, LogCursor {
                            since: Since::Cursor(Cursor::at(notice.last)),
                            ..cursor
                        });
                    }
                    continue;
                }
                let batch = if continues {
                    published.batch(&*store).await.and_then(Result::ok)
                } else {
                    None
                };
                match batch {
                    Some(batch) if !batch.readable_by(&user) => {
                        if let Some(space) = &space
                            && at.drop_space(&subscription, space)
                        {
                            yield StreamItem::SpaceRemoved(space_event(space, None));
                        }
                    }
                    Some(batch) if !batch.has_more => {
                        for i in affected {
                            let (table, cursors) = &mut at.tables[i];
                            let from = position(cursors);
                            let changes: Vec<_> = batch
                                .changes
                                .iter()
                                .filter(|c| c.table == *table && c.seq > from)
                                // As a read: a space's changes are sent
                                // whichever device pushed them.
                                .filter(|c| space.is_some() || client_id.as_deref() != Some(c.client_id.as_str()))
                                .cloned()
                                .collect();
                            cursors.set(&log, LogCursor {
                                since: Since::Cursor(Cursor::at(from.max(batch.next.position()))),
                                known_expiry: batch.expired_through,
                            });
                            if !changes.is_empty() {
                                yield changes_event(&service, table, changes, cursors, dialect, false);
                            }
                        }
                    }
                    _ => reread.extend(affected.into_iter().map(|i| (i, space.clone()))),
                }
            }
            for (i, space) in reread {
                if space.as_ref().is_some_and(|space| !at.spaces.contains(space)) {
                    continue; // left meanwhile
                }
                let log = match &space {
                    Some(space) => LogRef::Space(space),
                    None => LogRef::Own,
                };
                let (table, cursors) = at.tables[i].clone();
                let cursor = cursors.get(&log).unwrap_or(LogCursor::START);
                let mut catch_up = std::pin::pin!(reader.log_pages(table.clone(), space.clone(), cursor));
                while let Some(page) = catch_up.next().await {
                    service.count_catch_up_read();
                    match page {
                        Ok(page) => {
                            let cursors = &mut at.tables[i].1;
                            cursors.set(&log, LogCursor::after(&page));
                            if !page.changes.is_empty() {
                                yield changes_event(&service, &table, page.changes, cursors, dialect, page.has_more);
                            }
                        }
                        Err(ServiceError::Store(StoreError::SpaceForbidden { space: left, .. })) => {
                            if at.drop_space(&subscription, &left) {
                                yield StreamItem::SpaceRemoved(space_event(&left, None));
                            }
                            break;
                        }
                        Err(error) => {
                            yield failure(&error);
                            return;
                        }
                    }
                }
            }
        }
    }
}
