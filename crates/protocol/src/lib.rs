//! The mana-sync wire protocol: the JSON that devices and the server exchange,
//! how it is validated, the opaque cursor codec, the schema versions, and the
//! field-level last-writer-wins merge every device applies.
//!
//! Everything here is pure (no I/O), so the server, the Rust client and the
//! tests share one definition of what a valid change is. The shapes are those of
//! the system mana-sync replaces (see `DESIGN.md`); additions are backwards
//! compatible: older clients ignore keys they do not know.

pub mod backup;
pub mod change;
pub mod cursor;
pub mod ident;
pub mod json;
pub mod merge;
pub mod messages;
#[cfg(feature = "openapi")]
mod openapi;
pub mod schema;
pub mod space_cursor;
pub mod timestamp;

pub use change::{Change, FieldChange, FieldChanges, Op, SyncChange, WireChange};
pub use cursor::{Cursor, Resume, Since};
pub use ident::{LogId, SpaceId, UserId};
pub use messages::{
    ErrorBody, PullResponse, PushRequest, PushResponse, SocketMessage, SocketRequest, StreamChanges,
};
pub use space_cursor::SpacesCursor;
pub use timestamp::Timestamp;
