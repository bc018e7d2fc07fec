//! Live delivery: the change stream behind `GET /sync/{appId}/stream`
//! ([`stream`]) and the notification loop behind `GET /ws` and
//! `GET /ws/{appId}` ([`socket`]).

mod socket;
mod stream;

use std::time::{Duration, SystemTime};

use mana_sync_protocol::messages::{ErrorDetail, SpaceEvent};
use mana_sync_protocol::{StreamChanges, UserId};

pub use socket::{SocketApp, serve_socket};
pub use stream::change_stream;

use crate::follow::LogCursors;
use crate::service::CursorDialect;

/// Largest message a socket may send: the auth message with its token
/// needs a few KB (a token travels in headers elsewhere, and request heads
/// are capped at 8 KiB), every other message is tiny. Larger frames are
/// refused at their header, before anything is buffered, and the socket is
/// closed with 1009.
pub const MAX_SOCKET_MESSAGE: usize = 16 * 1024;

/// Most bytes queued for a socket that does not read (pongs and notices).
/// Beyond that, writes fail and the socket is closed.
pub const MAX_SOCKET_QUEUE: usize = 64 * 1024;

/// Read buffer per socket: messages are small, and the default (128 KiB)
/// was the largest part of an idle socket's memory.
pub const SOCKET_READ_BUFFER: usize = 4096;

/// How long one write to a socket may wait for the device to read; a device
/// that has not read [`MAX_SOCKET_QUEUE`] plus the kernel's buffers by then
/// is gone or hostile, and its socket is closed.
pub const SOCKET_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// A sleep until `deadline` (wall clock), for a token's expiry.
fn sleep_until(deadline: SystemTime) -> tokio::time::Sleep {
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(left)
}

fn token_expired() -> ErrorDetail {
    ErrorDetail {
        code: "token_expired".into(),
        message: "the token has expired; reconnect with a fresh one".into(),
    }
}

/// Timing of live connections.
#[derive(Debug, Clone, Copy)]
pub struct LiveConfig {
    /// Interval between stream heartbeats.
    pub heartbeat: Duration,
    /// How long a new socket may take to authenticate.
    pub socket_auth_timeout: Duration,
}

/// What a stream sends.
pub enum StreamItem {
    /// A page of one collection's changes (`event: changes`).
    Changes(StreamChanges),
    /// Still here (`event: heartbeat`).
    Heartbeat,
    /// The stream ends because of a server-side failure (`event: error`); the
    /// device reconnects from its cursor.
    Failed(ErrorDetail),
    /// The stream ends because a cursor is older than history compaction
    /// dropped (`event: cursor-expired`); the device downloads the current
    /// state again. Only sent to clients that asked for it.
    CursorExpired(ErrorDetail),
    /// The user joined a shared space or got another role in it
    /// (`event: space-added`); its changes follow. Only for clients that
    /// follow spaces.
    SpaceAdded(SpaceEvent),
    /// The user left or was removed from a shared space
    /// (`event: space-removed`): the device drops its records. Only for
    /// clients that follow spaces.
    SpaceRemoved(SpaceEvent),
}

/// A validated stream request.
pub struct StreamRequest {
    /// Whose changes.
    pub user: UserId,
    /// Of which app.
    pub app_id: String,
    /// Which collections, each with its own cursors.
    pub collections: Vec<String>,
    /// Where every collection starts.
    pub since: LogCursors,
    /// The device; its own changes are not sent to it.
    pub client_id: Option<String>,
    /// How the client reads and writes cursors, and whether it follows
    /// spaces.
    pub dialect: CursorDialect,
}
