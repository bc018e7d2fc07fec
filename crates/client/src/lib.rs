//! The device side of mana-sync: a local-first store for native apps.
//!
//! Its one job: keep an app's data on the device, readable and writable
//! instantly with no network, and bring it in line with the user's other
//! devices through a mana-sync server whenever one can be reached.
//!
//! - [`LocalStore`]: collections of JSON records in one SQLite file. Each
//!   write stamps its fields with a hybrid logical clock ([`clock`]) and
//!   appends the change to a durable outbox in the same transaction.
//!   Queries can be subscribed to ([`LocalStore::subscribe`]) and yield a new
//!   result whenever local writes or sync change it.
//! - [`SyncClient`]: pushes the outbox (idempotently, with a `changesetId`),
//!   pulls every collection to the end, and follows the live stream
//!   ([`SyncClient::run_live`]), merging field by field
//!   ([`mana_sync_protocol::merge`]). Its progress is the store's
//!   [`SyncStatus`].
//! - Shared spaces: a record may live in a space several users share
//!   ([`LocalStore::insert_in`]); its changes carry the space, the client
//!   follows every space of the user (one composite cursor per collection),
//!   drops a space's records when the user leaves it, and sets aside the
//!   changes the server refuses to let the user write ([`spaces`] is the
//!   typed API: create, list, members, roles, leave).
//! - Guest mode: a store starts local-only; [`LocalStore::sign_in`] (or
//!   [`SyncClient::new`]) makes its data the account's, pushed at the next
//!   sync.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mana_sync_client::ClientError> {
//! use mana_sync_client::{LocalStore, StoreOptions, SyncClient};
//! use serde_json::json;
//!
//! let store = LocalStore::open("todo.db", StoreOptions::new("todo", &["tasks"]))?;
//! let id = store.insert("tasks", json!({ "title": "Buy oat milk", "done": false }))?;
//! let sync = SyncClient::new(store.clone(), "http://localhost:3050", "JWT")?;
//! sync.sync().await?;
//! # let _ = id; Ok(()) }
//! ```

pub mod clock;
pub mod error;
mod live;
pub mod query;
pub mod spaces;
pub mod status;
pub mod store;
pub mod sync;
mod token;

pub use error::{ClientError, Result};
pub use mana_sync_protocol::messages::{MemberView, SpaceView};
pub use query::{Query, Subscription};
pub use spaces::Role;
pub use status::SyncStatus;
pub use store::{
    Account, LocalSpace, LocalStore, Record, RejectedChange, SeedRecord, StoreOptions,
};
pub use sync::{SyncClient, SyncOptions, SyncReport};
