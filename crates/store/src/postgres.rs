//! The production store: Postgres, shared by any number of server instances.
//!
//! Every transaction first declares its user with
//! `set_config('mana.user_id', $user, true)`; the row-level security policies
//! created by the migrations then hide and refuse every other user's rows, even
//! if a query forgot its `user_id` condition. The server must therefore connect
//! as a role that is neither superuser nor `BYPASSRLS`; it warns when it is.

use std::time::Duration;

use crate::spaces::{Member, MemberChange, Membership, SpaceError};
use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction,
};
use mana_sync_protocol::{Cursor, LogId, Since, SpaceId, UserId};
use tokio::sync::broadcast;
use tokio_postgres::IsolationLevel;

use crate::compaction::{CompactOptions, CompactOutcome};
use crate::migrations::{Migration, POSTGRES};
use crate::notice::{EVENT_CAPACITY, StoreEvent};
use crate::relay::{self, Announcer};
use crate::types::{ChangeBatches, ImportError, ImportOutcome, ImportSource, Reserved, encode};
use crate::{
    ChangePage, ChangeQuery, NewChangeset, PushOutcome, Store, StoreError, StoreKind, StoreOptions,
    StoreResult,
};
use push_group::PushGroups;

/// Declares the user a read acts for, for row-level security.
pub(crate) const DECLARE_READER: &str = "SELECT set_config('mana.user_id', $1, true)";

/// The settings of [`DECLARE_LOG_READER`] after its user.
macro_rules! log_read_settings {
    () => {
        "set_config('plan_cache_mode', 'force_generic_plan', true),
        set_config('enable_seqscan', 'off', true),
        set_config('enable_bitmapscan', 'off', true),
        set_config('enable_sort', 'off', true)"
    };
}

/// [`DECLARE_READER`] for a transaction that reads (or writes, then reads)
/// pages of a log: its statements keep one plan per connection instead of
/// being planned again with their parameters, which cost Postgres about a
/// fifth of its time under many small pushes (`mana-sync-bench load`).
///
/// A generic plan cannot see the cursor or the limit, and one made while the
/// table was small would scan and sort a user's whole log to answer "the
/// changes after C". Sequential scans, bitmap scans and sorts are therefore
/// ruled out for the rest of the transaction: what remains for
/// `user_id = $1 AND seq > $3 ORDER BY seq LIMIT $4` is the short range of
/// the primary key (or of the collection index) that a custom plan picks,
/// whatever the statistics were. Every statement of these transactions finds
/// its rows by a key (`postgres/plan_tests.rs`).
pub(crate) const DECLARE_LOG_READER: &str = concat!(
    "SELECT set_config('mana.user_id', $1, true), ",
    log_read_settings!()
);

/// [`DECLARE_LOG_READER`] for a transaction that stores the pushes of the
/// users `$1` (a `text[]`) together: the policies let it see and write the
/// rows of these users (migration 0007), and no other.
pub(crate) const DECLARE_USERS: &str = concat!(
    "SELECT set_config('mana.user_ids', $1::text[]::text, true), ",
    log_read_settings!()
);

/// The columns of a stored change, in the order `stored_change` reads them.
macro_rules! select_columns {
    () => {
        "SELECT seq, event_id, app_id, table_name, record_id, op, data, fields, deleted_at, actor,
                client_id, schema_version, created_at"
    };
}

mod backup;
mod compact;
mod error;
pub(crate) use error::{database_error, describe, pool_error};
pub mod connect;
mod migrate;
pub use migrate::{migrate_as_owner, role_of};
#[cfg(test)]
mod plan_tests;
pub(crate) mod push_group;
mod read;
pub(crate) use read::{page_of, stored_change};
pub(crate) mod space_push;
mod spaces;
mod tls;

pub use connect::PgConnector;

/// The change log in Postgres.
pub struct PostgresStore {
    pool: Pool,
    events: broadcast::Sender<StoreEvent>,
    announcer: Announcer,
    /// The queue of pushes waiting to be stored together.
    groups: PushGroups,
    /// The relay's listener and publisher.
    relay: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        for task in &self.relay {
            task.abort();
        }
    }
}

pub(crate) fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(crate) fn seq_value(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

impl PostgresStore {
    /// Connects to `url` and migrates the database.
    pub async fn open(url: &str, options: &StoreOptions) -> StoreResult<Self> {
        Self::open_with(url, options, POSTGRES).await
    }

    pub(crate) async fn open_with(
        url: &str,
        options: &StoreOptions,
        migrations: &[Migration],
    ) -> StoreResult<Self> {
        let mut connector = PgConnector::from_url(url)?;
        let config = connector.config_mut();
        // Plan every statement with its actual parameters. A generic plan,
        // made while the log was small, reads a user's whole log to answer
        // "changes after cursor C" (a scan and a sort instead of a short
        // range of the primary key) and gets slower as the log grows.
        let session_options = match config.get_options() {
            Some(existing) => format!("{existing} -c plan_cache_mode=force_custom_plan"),
            None => "-c plan_cache_mode=force_custom_plan".to_owned(),
        };
        config.options(&session_options);
        let manager = Manager::from_config(
            connector.config().clone(),
            connector.tls(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (announcer, outbox) = relay::announcer(events.clone());
        let instance = relay::instance_id();
        let interval = options.catchup_interval.max(Duration::from_millis(10));
        let mut store = Self {
            groups: PushGroups::start(pool.clone(), announcer.clone()),
            pool,
            events: events.clone(),
            announcer,
            relay: Vec::new(),
        };
        // The database answers, and is up to date, before the relay starts:
        // a server that cannot connect fails with that one error, not with
        // the relay's retries besides.
        store.migrate(migrations).await?;
        store.warn_if_rls_is_bypassed().await?;
        store.relay = match &options.nats_url {
            None => {
                relay::pg::start(
                    connector,
                    events.clone(),
                    outbox,
                    store.announcer.shed(),
                    instance,
                    interval,
                )
                .await
            }
            Some(url) => relay::nats::start(
                url,
                relay::nats::subject(connector.config()),
                events.clone(),
                outbox,
                store.announcer.shed(),
                instance,
                interval,
            )
            .await
            .map_err(StoreError::Config)?,
        };
        Ok(store)
    }

    async fn migrate(&self, migrations: &[Migration]) -> StoreResult<()> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        migrate::migrate(&mut client, migrations, None)
            .await
            .map(drop)
    }

    async fn warn_if_rls_is_bypassed(&self) -> StoreResult<()> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_one(
                "SELECT current_user::text, rolsuper OR rolbypassrls,
                        EXISTS (SELECT 1 FROM pg_tables
                                 WHERE schemaname = current_schema()
                                   AND tablename = 'mana_changes'
                                   AND tableowner = current_user)
                   FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(database_error)?;
        let (role, bypasses, owns): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
        if bypasses {
            tracing::warn!(
                role,
                "connected as a superuser or BYPASSRLS role: row-level security is not \
                 enforced; connect as a dedicated role (see README, Running on Postgres)"
            );
        } else if owns {
            tracing::warn!(
                role,
                "the server's role owns its tables, so it could lift row-level security \
                 (ALTER TABLE ... NO FORCE ROW LEVEL SECURITY); run migrations as an owner \
                 role and the server as a role that only reads and writes rows (see README, \
                 Running on Postgres)"
            );
        }
        Ok(())
    }

    /// Starts a transaction acting for `user`: row-level security now lets it
    /// see and write that user's rows and the logs of the user's spaces.
    async fn begin_as<'a>(
        client: &'a mut deadpool_postgres::Client,
        user: &UserId,
        snapshot: bool,
    ) -> StoreResult<Transaction<'a>> {
        Self::begin_acting(client, user.as_str(), snapshot).await
    }

    /// Runs one read-only query acting for `actor`, pipelined with its
    /// transaction: `BEGIN`, the declaration, the query and `COMMIT` go in
    /// one round trip.
    pub(crate) async fn query_as(
        &self,
        actor: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let begin = client
            .prepare_cached("BEGIN READ ONLY")
            .await
            .map_err(database_error)?;
        let declare = client
            .prepare_cached(DECLARE_READER)
            .await
            .map_err(database_error)?;
        let query = client.prepare_cached(sql).await.map_err(database_error)?;
        let commit = client
            .prepare_cached("COMMIT")
            .await
            .map_err(database_error)?;
        let declare_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&actor];
        // Sent in this order in one go (see `read`).
        let (begun, declared, rows, committed) = futures::join!(
            client.execute(&begin, &[]),
            client.query_one(&declare, &declare_params),
            client.query(&query, params),
            client.execute(&commit, &[]),
        );
        begun.map_err(database_error)?;
        declared.map_err(database_error)?;
        let rows = rows.map_err(database_error)?;
        committed.map_err(database_error)?;
        Ok(rows)
    }

    /// Starts a transaction acting for `actor`, a user or a log itself
    /// (server work on a space's log, such as compaction and shared reads):
    /// row-level security lets it see and write that user's rows and the
    /// logs of its spaces, or that log only.
    pub(crate) async fn begin_acting<'a>(
        client: &'a mut deadpool_postgres::Client,
        actor: &str,
        snapshot: bool,
    ) -> StoreResult<Transaction<'a>> {
        let builder = client.build_transaction();
        let builder = if snapshot {
            builder
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
        } else {
            builder
        };
        let tx = builder.start().await.map_err(database_error)?;
        let set_user = tx
            .prepare_cached(DECLARE_READER)
            .await
            .map_err(database_error)?;
        tx.query_one(&set_user, &[&actor])
            .await
            .map_err(database_error)?;
        Ok(tx)
    }
}

/// Reserves the next `count` positions of `user`.
///
/// Positions are the database's clock in nanoseconds, `max(now, last + 1)`,
/// so they are unique, increasing, and close to the wall clock. Taking them
/// locks the user's counter row until commit: a concurrent push of the same
/// user waits here, so its positions are larger and become visible after
/// ours. That is the cursor guarantee.
/// `superseding` of the changes may supersede earlier ones (see
/// [`compaction::superseding`](crate::compaction::superseding)).
async fn reserve_positions(
    tx: &Transaction<'_>,
    log: &str,
    count: i64,
    superseding: i64,
) -> StoreResult<Reserved> {
    let reserve = tx
        .prepare_cached(
            "INSERT INTO mana_user_seq (user_id, prev_seq, last_seq, superseded)
             VALUES ($1, 0, GREATEST((EXTRACT(EPOCH FROM clock_timestamp()) * 1000000000)::BIGINT, $3) + $2 - 1, $4)
             ON CONFLICT (user_id) DO UPDATE SET
                 prev_seq = mana_user_seq.last_seq,
                 last_seq = GREATEST(
                     (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000000)::BIGINT,
                     mana_user_seq.last_seq + 1,
                     $3
                 ) + $2 - 1,
                 superseded = mana_user_seq.superseded + $4
             RETURNING prev_seq, last_seq, expired_through",
        )
        .await
        .map_err(database_error)?;
    let first_possible = seq_param(Cursor::START.position() + 1);
    let row = tx
        .query_one(&reserve, &[&log, &count, &first_possible, &superseding])
        .await
        .map_err(database_error)?;
    Ok(Reserved {
        after: row.get(0),
        last: row.get(1),
        expired_through: row.get(2),
    })
}

#[async_trait]
impl Store for PostgresStore {
    fn push_transactions(&self) -> u64 {
        self.groups.committed()
    }

    fn kind(&self) -> StoreKind {
        StoreKind::Postgres
    }

    fn events(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    async fn ping(&self) -> StoreResult<()> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(database_error)?;
        Ok(())
    }

    async fn push(&self, user: &UserId, changeset: NewChangeset<'_>) -> StoreResult<PushOutcome> {
        let (outcome, _) = crate::pg_push::push(
            self.pool.clone(),
            self.announcer.clone(),
            &self.groups,
            user,
            changeset,
            None,
        )
        .await?;
        Ok(outcome)
    }

    async fn push_and_read(
        &self,
        user: &UserId,
        changeset: NewChangeset<'_>,
        reply: &ChangeQuery<'_>,
    ) -> StoreResult<(PushOutcome, ChangePage)> {
        // A `c1.<n>` cursor needs a lookup first; such devices are rare.
        if matches!(reply.since, Since::Legacy(_)) {
            let outcome = self.push(user, changeset).await?;
            return Ok((outcome, self.changes_after(user, reply).await?));
        }
        let (outcome, page) = crate::pg_push::push(
            self.pool.clone(),
            self.announcer.clone(),
            &self.groups,
            user,
            changeset,
            Some(reply),
        )
        .await?;
        match page {
            Some(page) => Ok((outcome, page)),
            None => Ok((outcome, self.changes_after(user, reply).await?)),
        }
    }

    async fn changes_after(
        &self,
        user: &UserId,
        query: &ChangeQuery<'_>,
    ) -> StoreResult<ChangePage> {
        self.read(user.as_str(), &query.log_of(user), query).await
    }

    async fn log_changes_after(
        &self,
        log: &LogId,
        query: &ChangeQuery<'_>,
    ) -> StoreResult<ChangePage> {
        self.read(log.as_str(), log, query).await
    }

    async fn log_readers(&self, log: &LogId) -> StoreResult<Vec<UserId>> {
        match log.space() {
            None => Ok(log.user().into_iter().collect()),
            Some(space) => spaces::readers(self, log, &space).await,
        }
    }

    async fn export(&self, user: &UserId) -> StoreResult<ChangeBatches> {
        backup::export(self, user).await
    }

    async fn import(
        &self,
        user: &UserId,
        changes: ImportSource,
    ) -> Result<ImportOutcome, ImportError> {
        backup::import(self, user, changes).await
    }

    async fn compaction_candidates(
        &self,
        threshold: u64,
        limit: usize,
    ) -> StoreResult<Vec<(LogId, u64)>> {
        compact::candidates(self, threshold, limit).await
    }

    async fn compact(
        &self,
        log: &LogId,
        options: &CompactOptions,
        progress: &(dyn for<'o> Fn(&'o CompactOutcome) + Sync),
    ) -> StoreResult<CompactOutcome> {
        compact::compact(self, log, options, progress).await
    }

    async fn close(&self) {
        self.announcer.close(Duration::from_secs(5)).await;
    }

    async fn create_space(&self, owner: &UserId, name: &str) -> StoreResult<Membership> {
        spaces::create_space(self, owner, name).await
    }

    async fn spaces_of(&self, user: &UserId) -> StoreResult<Vec<Membership>> {
        spaces::spaces_of(self, user).await
    }

    async fn members(&self, user: &UserId, space: &SpaceId) -> StoreResult<Option<Vec<Member>>> {
        spaces::members(self, user, space).await
    }

    async fn change_membership(
        &self,
        actor: &UserId,
        space: &SpaceId,
        change: &MemberChange,
    ) -> Result<(), SpaceError> {
        spaces::change_membership(self, actor, space, change).await
    }

    async fn setting_or_insert(
        &self,
        name: &str,
        make: &(dyn Fn() -> String + Sync),
    ) -> StoreResult<String> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .execute(
                "INSERT INTO mana_server_settings (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&name, &make()],
            )
            .await
            .map_err(database_error)?;
        let row = client
            .query_one(
                "SELECT value FROM mana_server_settings WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(database_error)?;
        Ok(row.get(0))
    }
}

/// Changes turned into one array per column, for a single `UNNEST` insert
/// (without event ids: a push makes new ones, an import keeps the backup's).
pub(crate) struct ChangeColumns<'a> {
    pub(crate) tables: Vec<&'a str>,
    pub(crate) record_ids: Vec<&'a str>,
    pub(crate) ops: Vec<&'static str>,
    pub(crate) data: Vec<Option<&'a str>>,
    pub(crate) fields: Vec<Option<String>>,
    pub(crate) deleted_at: Vec<Option<&'a str>>,
    pub(crate) actors: Vec<Option<&'a str>>,
    pub(crate) schema_versions: Vec<i32>,
}

impl<'a> ChangeColumns<'a> {
    /// The columns as statement parameters: tables, record ids, ops, data,
    /// fields, deletion times, actors, schema versions.
    pub(crate) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 8] {
        [
            &self.tables,
            &self.record_ids,
            &self.ops,
            &self.data,
            &self.fields,
            &self.deleted_at,
            &self.actors,
            &self.schema_versions,
        ]
    }

    pub(crate) fn new(
        changes: impl ExactSizeIterator<Item = &'a mana_sync_protocol::Change>,
    ) -> Self {
        let capacity = changes.len();
        let mut columns = Self {
            tables: Vec::with_capacity(capacity),
            record_ids: Vec::with_capacity(capacity),
            ops: Vec::with_capacity(capacity),
            data: Vec::with_capacity(capacity),
            fields: Vec::with_capacity(capacity),
            deleted_at: Vec::with_capacity(capacity),
            actors: Vec::with_capacity(capacity),
            schema_versions: Vec::with_capacity(capacity),
        };
        for change in changes {
            let encoded = encode(change);
            columns.tables.push(&change.table);
            columns.record_ids.push(&change.id);
            columns.ops.push(change.op.as_str());
            columns.data.push(encoded.data);
            columns.fields.push(encoded.fields);
            columns.deleted_at.push(encoded.deleted_at);
            columns.actors.push(encoded.actor);
            columns
                .schema_versions
                .push(i32::try_from(change.schema_version).unwrap_or(i32::MAX));
        }
        columns
    }
}
