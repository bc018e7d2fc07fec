//! The live hub: tells open streams and sockets that a log they follow grew:
//! their user's own, or a shared space's their user belongs to.
//!
//! The hub is fed by the store's events (in process on SQLite, from every
//! instance through the relay on Postgres). Membership changes arrive the
//! same way: a subscriber of a user who joins a space follows its log at
//! once, one of a user who leaves or is removed stops at once, and both are
//! told (see [`Pending::memberships`]). It never waits on a
//! subscriber: publishing marks the subscriber's pending set and wakes it, all
//! under the subscriber map's lock and without awaiting. A subscriber that
//! does not keep up collects at most [`MAX_PENDING`] notices; beyond that they
//! are replaced by one "re-read everything from your cursor" mark, so a slow or
//! stuck consumer costs bounded memory, delays nobody, and loses nothing.
//!
//! Fan-out reads the database at most once per notice, not once per
//! subscriber: each [`Published`] notice carries a lazily filled batch of the
//! app's new changes, fetched by whichever subscriber needs it first and
//! shared with the others. A notice of a user's own log from this instance
//! arrives with what the push wrote ([`ChangeNotice::written`]); its batch is
//! that, and nobody reads.
//! Only the hub holds batches strongly, and only for the [`RECENT_BATCHES`]
//! latest notices; subscribers hold weak references, so a stuck subscriber
//! pins no change data, and one that comes back late reads from its cursor.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use mana_sync_protocol::{Cursor, LogId, Since, SpaceId, UserId};
use mana_sync_store::{
    ChangeNotice, ChangeQuery, ExpiredCursor, MAX_PAGE, MemberNotice, Role, Store, StoreError,
    StoreEvent, StoredChange,
};
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{Notify, OnceCell, broadcast};
use tokio_util::sync::CancellationToken;

/// Notices a subscriber may have waiting before they collapse into a resync.
pub const MAX_PENDING: usize = 64;

/// Notices whose shared batches the hub keeps alive.
pub const RECENT_BATCHES: usize = 64;

/// A notice with its shared batch of changes.
pub struct Published {
    notice: Arc<ChangeNotice>,
    batch: OnceCell<Arc<Batch>>,
    /// Counts the reads of a batch.
    reads: IntCounter,
}

/// The changes a notice announced, read once for every subscriber.
pub struct Batch {
    /// Every change of the notice's app after `notice.after`, in commit
    /// order: what its push wrote (shared with the notice, not copied), or
    /// a page read from the log.
    pub changes: Arc<[StoredChange]>,
    /// Where a read continues after the batch.
    pub next: Cursor,
    /// More changes followed than a page holds.
    pub has_more: bool,
    /// The last position compaction had dropped when the batch was made.
    pub expired_through: u64,
    /// For a space's log: its members, read after the page. A subscriber
    /// whose user is not among them left before the batch was read and gets
    /// nothing of it. `None` for a user's own log.
    pub readers: Option<Vec<UserId>>,
}

impl Batch {
    /// Whether `user` may see this batch.
    pub fn readable_by(&self, user: &UserId) -> bool {
        self.readers
            .as_ref()
            .is_none_or(|readers| readers.contains(user))
    }
}

/// A notice as a subscriber receives it.
#[derive(Clone)]
pub struct PendingNotice {
    /// What was committed.
    pub notice: Arc<ChangeNotice>,
    shared: Weak<Published>,
}

impl PendingNotice {
    /// The notice's shared batch, or `None` when the hub no longer keeps it
    /// (the subscriber came too late and must read from its cursor).
    pub async fn batch(&self, store: &dyn Store) -> Option<Result<Arc<Batch>, StoreError>> {
        let published = self.shared.upgrade()?;
        Some(published.batch(store).await)
    }
}

impl Published {
    /// Every change of the notice's app after `notice.after` (all
    /// collections, all devices), read once for all subscribers, as the log
    /// itself.
    pub async fn batch(&self, store: &dyn Store) -> Result<Arc<Batch>, StoreError> {
        self.batch
            .get_or_try_init(|| async {
                self.reads.inc();
                let log = &self.notice.log;
                let page = store
                    .log_changes_after(
                        log,
                        &ChangeQuery {
                            space: None,
                            app_id: &self.notice.app_id,
                            collection: None,
                            since: Since::Cursor(Cursor::at(self.notice.after)),
                            exclude_client: None,
                            limit: MAX_PAGE,
                            // Never expired: the batch starts at a position
                            // the log just had.
                            expired: ExpiredCursor::Serve,
                        },
                    )
                    .await?;
                // Read after the page: someone removed before the push
                // committed is missing here too.
                let readers = match log.space() {
                    Some(_) => Some(store.log_readers(log).await?),
                    None => None,
                };
                Ok(Arc::new(Batch {
                    changes: page.changes.into(),
                    next: page.next,
                    has_more: page.has_more,
                    expired_through: page.expired_through,
                    readers,
                }))
            })
            .await
            .cloned()
    }
}

/// The batch of a notice that carries what its push wrote into a user's own
/// log: exactly the push's changes, ending at its last position. A shared
/// space's batch is always read, with the space's members after it.
fn written_batch(notice: &ChangeNotice) -> Option<Arc<Batch>> {
    let written = notice.written.as_ref()?;
    if notice.log.space().is_some() {
        return None;
    }
    Some(Arc::new(Batch {
        changes: written.changes.clone(),
        next: Cursor::at(notice.last),
        has_more: false,
        expired_through: written.expired_through,
        readers: None,
    }))
}

/// What woke a subscriber.
#[derive(Default)]
pub struct Pending {
    /// The user joined a space, got another role in it (`Some`), or left it
    /// (`None`), in order; the hub already follows or stopped following the
    /// space's log for this subscriber. Only for subscribers that follow
    /// spaces; handle these before `notices`.
    pub memberships: Vec<(SpaceId, Option<Role>)>,
    /// Notices in commit order.
    pub notices: Vec<PendingNotice>,
    /// Notices were lost or dropped: re-read everything from the cursors.
    pub resync: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.resync && self.notices.is_empty() && self.memberships.is_empty()
    }
}

struct Subscriber {
    id: u64,
    user: UserId,
    /// The device (`clientId`) it serves, if it said; its own pushes do not
    /// wake it.
    device: Option<String>,
    /// `None`: every app (a `/ws` socket).
    app: Option<String>,
    /// Whether it follows the spaces its user belongs to.
    follows_spaces: bool,
    /// The logs it is registered under (changed under the registry's lock).
    logs: Mutex<Vec<LogId>>,
    wake: Notify,
    pending: Mutex<Pending>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data
    // inconsistent (each update is a single push or flag), so carry on.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Subscriber {
    fn add(&self, published: &PendingNotice, overflows: &IntCounter) {
        let own = published.notice.is_own_push_of(self.device.as_deref());
        let mut pending = lock(&self.pending);
        let wake = if pending.resync {
            // Already going to re-read everything.
            true
        } else if pending.notices.len() >= MAX_PENDING {
            pending.notices.clear();
            pending.resync = true;
            overflows.inc();
            true
        } else {
            pending.notices.push(published.clone());
            // Its own push can wait for the next wake-up, unless the queue
            // is about full: draining it then costs no re-read.
            !own || pending.notices.len() >= MAX_PENDING / 2
        };
        drop(pending);
        if wake {
            self.wake.notify_one();
        }
    }

    fn resync(&self) {
        let mut pending = lock(&self.pending);
        pending.notices.clear();
        pending.resync = true;
        drop(pending);
        self.wake.notify_one();
    }

    fn membership(&self, space: &SpaceId, role: Option<Role>) {
        let mut pending = lock(&self.pending);
        pending.memberships.push((space.clone(), role));
        drop(pending);
        self.wake.notify_one();
    }
}

/// Who is subscribed: by user (for the limits and membership changes) and
/// by log (for notices).
#[derive(Default)]
struct Registry {
    by_user: HashMap<UserId, Vec<Arc<Subscriber>>>,
    by_log: HashMap<LogId, Vec<Arc<Subscriber>>>,
}

impl Registry {
    fn follow(&mut self, subscriber: &Arc<Subscriber>, log: LogId) {
        let mut logs = lock(&subscriber.logs);
        if logs.contains(&log) {
            return;
        }
        self.by_log
            .entry(log.clone())
            .or_default()
            .push(subscriber.clone());
        logs.push(log);
    }

    fn unfollow(&mut self, subscriber: &Subscriber, log: &LogId) {
        lock(&subscriber.logs).retain(|known| known != log);
        if let Some(list) = self.by_log.get_mut(log) {
            list.retain(|s| s.id != subscriber.id);
            if list.is_empty() {
                self.by_log.remove(log);
            }
        }
    }
}

/// Which kind of connection a subscription serves (for the open-connection gauges).
#[derive(Debug, Clone, Copy)]
pub enum SubscriberKind {
    /// An SSE stream.
    Stream,
    /// A WebSocket.
    Socket,
}

/// How many streams and sockets may be open.
#[derive(Debug, Clone, Copy)]
pub struct LiveLimits {
    /// Per user (`MAX_LIVE_PER_USER`).
    pub per_user: usize,
    /// For all users together: `MAX_CONNECTIONS` less a reserve for health
    /// checks, pushes, pulls and new users ([`LiveLimits::for_connections`]).
    pub total: usize,
}

impl LiveLimits {
    /// Limits for a server of `max_connections` connections: streams and
    /// sockets may hold nine tenths of them; the rest stays free for
    /// everything else.
    pub fn for_connections(max_connections: usize, per_user: usize) -> Self {
        Self {
            per_user: per_user.max(1),
            total: max_connections.saturating_sub(max_connections / 10).max(1),
        }
    }
}

/// Why a stream or socket was not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveRefusal {
    /// The user has as many open as [`LiveLimits::per_user`].
    #[error(
        "this user already has {max} streams and sockets open (the server's MAX_LIVE_PER_USER); close one or retry later"
    )]
    PerUser {
        /// The limit.
        max: usize,
    },
    /// The server holds as many as [`LiveLimits::total`].
    #[error(
        "the server holds as many streams and sockets as it may ({max}); retry later, or sync without a live connection meanwhile"
    )]
    Full {
        /// The limit.
        max: usize,
    },
}

/// The hub.
pub struct Hub {
    subscribers: Mutex<Registry>,
    /// Open subscriptions of every user (changed under `subscribers`' lock).
    open: AtomicUsize,
    limits: LiveLimits,
    recent: Mutex<VecDeque<Arc<Published>>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    streams: IntGauge,
    sockets: IntGauge,
    overflows: IntCounter,
    notices: IntCounter,
    resyncs: IntCounter,
    live_reads: IntCounter,
}

impl Hub {
    /// A hub counting its connections in the given gauges, and subscribers
    /// that fell too far behind in `overflows`.
    pub fn new(
        streams: IntGauge,
        sockets: IntGauge,
        overflows: IntCounter,
        limits: LiveLimits,
    ) -> Self {
        Self::with_counters(
            streams,
            sockets,
            overflows,
            IntCounter::new("notices", "notices").unwrap_or_else(|_| unreachable!()),
            IntCounter::new("resyncs", "resyncs").unwrap_or_else(|_| unreachable!()),
            IntCounter::new("live_reads", "live reads").unwrap_or_else(|_| unreachable!()),
            limits,
        )
    }

    /// A hub that also counts the notices it hears, the resyncs it orders
    /// and the batches it reads.
    pub fn with_counters(
        streams: IntGauge,
        sockets: IntGauge,
        overflows: IntCounter,
        notices: IntCounter,
        resyncs: IntCounter,
        live_reads: IntCounter,
        limits: LiveLimits,
    ) -> Self {
        Self {
            subscribers: Mutex::new(Registry::default()),
            open: AtomicUsize::new(0),
            limits,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_BATCHES)),
            next_id: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            streams,
            sockets,
            overflows,
            notices,
            resyncs,
            live_reads,
        }
    }

    /// Cancelled when the server shuts down: streams end and sockets close.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Starts receiving notices for `user`'s own log (of `app`, or of every
    /// app), and with `spaces` for the logs of those spaces and of every
    /// space the user joins from now on, if the user and the server are below
    /// their [`LiveLimits`]. Pushes of `device` are queued without waking
    /// the subscription. Subscribe *before* reading a backlog, so nothing
    /// committed meanwhile is missed.
    pub fn subscribe(
        self: &Arc<Self>,
        user: &UserId,
        device: Option<&str>,
        app: Option<&str>,
        kind: SubscriberKind,
        spaces: Option<&[SpaceId]>,
    ) -> Result<Subscription, LiveRefusal> {
        let subscriber = Arc::new(Subscriber {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user: user.clone(),
            device: device.map(str::to_owned),
            app: app.map(str::to_owned),
            follows_spaces: spaces.is_some(),
            logs: Mutex::new(Vec::new()),
            wake: Notify::new(),
            pending: Mutex::new(Pending::default()),
        });
        {
            let mut registry = lock(&self.subscribers);
            if self.open.load(Ordering::Relaxed) >= self.limits.total {
                return Err(LiveRefusal::Full {
                    max: self.limits.total,
                });
            }
            let list = registry.by_user.entry(user.clone()).or_default();
            if list.len() >= self.limits.per_user {
                return Err(LiveRefusal::PerUser {
                    max: self.limits.per_user,
                });
            }
            list.push(subscriber.clone());
            registry.follow(&subscriber, LogId::of_user(user));
            for space in spaces.unwrap_or_default() {
                registry.follow(&subscriber, LogId::of_space(space));
            }
            self.open.fetch_add(1, Ordering::Relaxed);
        }
        self.gauge(kind).inc();
        Ok(Subscription {
            hub: self.clone(),
            subscriber,
            kind,
        })
    }

    fn gauge(&self, kind: SubscriberKind) -> &IntGauge {
        match kind {
            SubscriberKind::Stream => &self.streams,
            SubscriberKind::Socket => &self.sockets,
        }
    }

    /// Hands a notice to every subscriber of its log and app; a membership
    /// change to the member's subscribers that follow spaces.
    pub fn publish(&self, notice: Arc<ChangeNotice>) {
        if let Some(member) = &notice.member {
            self.membership(&notice.log, member);
            return;
        }
        let published = Arc::new(Published {
            batch: OnceCell::new_with(written_batch(&notice)),
            notice: notice.clone(),
            reads: self.live_reads.clone(),
        });
        let pending = PendingNotice {
            notice,
            shared: Arc::downgrade(&published),
        };
        {
            let mut recent = lock(&self.recent);
            if recent.len() == RECENT_BATCHES {
                recent.pop_front();
            }
            recent.push_back(published);
        }
        let registry = lock(&self.subscribers);
        if let Some(list) = registry.by_log.get(&pending.notice.log) {
            for subscriber in list {
                if subscriber
                    .app
                    .as_deref()
                    .is_none_or(|app| app == pending.notice.app_id)
                {
                    subscriber.add(&pending, &self.overflows);
                }
            }
        }
    }

    /// A member of the space whose log is `log` joined, got another role, or
    /// left: their subscribers that follow spaces start or stop following
    /// it now, and are told.
    fn membership(&self, log: &LogId, member: &MemberNotice) {
        let Some(space) = log.space() else { return };
        let mut registry = lock(&self.subscribers);
        let subscribers: Vec<Arc<Subscriber>> = registry
            .by_user
            .get(&member.user)
            .map(|list| list.iter().filter(|s| s.follows_spaces).cloned().collect())
            .unwrap_or_default();
        for subscriber in subscribers {
            match member.role {
                Some(_) => registry.follow(&subscriber, log.clone()),
                None => registry.unfollow(&subscriber, log),
            }
            subscriber.membership(&space, member.role);
        }
    }

    /// Tells every subscriber to re-read from its cursor.
    pub fn resync_all(&self) {
        for subscriber in lock(&self.subscribers).by_user.values().flatten() {
            subscriber.resync();
        }
    }

    /// Feeds the hub from the store's events until shutdown.
    pub async fn run(self: Arc<Self>, mut events: broadcast::Receiver<StoreEvent>) {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                event = events.recv() => match event {
                    Ok(StoreEvent::Changed(notice)) => {
                        self.notices.inc();
                        self.publish(notice);
                    }
                    Ok(StoreEvent::Resync) => {
                        self.resyncs.inc();
                        self.resync_all();
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "the hub fell behind the store's notices; resyncing everyone");
                        self.resyncs.inc();
                        self.resync_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    fn remove(&self, subscriber: &Subscriber) {
        let mut registry = lock(&self.subscribers);
        let logs = std::mem::take(&mut *lock(&subscriber.logs));
        for log in &logs {
            registry.unfollow(subscriber, log);
        }
        if let Some(list) = registry.by_user.get_mut(&subscriber.user) {
            let before = list.len();
            list.retain(|s| s.id != subscriber.id);
            self.open.fetch_sub(before - list.len(), Ordering::Relaxed);
            if list.is_empty() {
                registry.by_user.remove(&subscriber.user);
            }
        }
    }
}

/// One open stream's or socket's registration; dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    subscriber: Arc<Subscriber>,
    kind: SubscriberKind,
}

impl Subscription {
    /// Waits until something is pending, and takes it.
    pub async fn changed(&self) -> Pending {
        loop {
            self.subscriber.wake.notified().await;
            let pending = std::mem::take(&mut *lock(&self.subscriber.pending));
            if !pending.is_empty() {
                return pending;
            }
        }
    }

    /// Also receives the notices of `space`'s log (a space the user was
    /// found to belong to after subscribing).
    pub fn follow(&self, space: &SpaceId) {
        lock(&self.hub.subscribers).follow(&self.subscriber, LogId::of_space(space));
    }

    /// No longer receives the notices of `space`'s log (the user left it).
    pub fn unfollow(&self, space: &SpaceId) {
        lock(&self.hub.subscribers).unfollow(&self.subscriber, &LogId::of_space(space));
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.subscriber);
        self.hub.gauge(self.kind).dec();
    }
}

#[cfg(test)]
mod tests;
