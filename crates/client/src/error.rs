//! Errors of the client library.

/// What went wrong in a local-store or sync operation.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The local database failed.
    #[error("local database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The local store could not be created or opened at the given place.
    #[error("cannot open the local store at {path}: {reason}")]
    Open {
        /// The store's path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A value passed in by the app is not acceptable (bad collection name,
    /// id or field, a record that is not a JSON object, …).
    #[error("{0}")]
    InvalidInput(String),
    /// No such record (or it was deleted).
    #[error("no record `{id}` in `{collection}`")]
    NotFound {
        /// The collection.
        collection: String,
        /// The id.
        id: String,
    },
    /// An insert with the id of a record that exists or existed.
    #[error("a record `{id}` already exists (or existed) in `{collection}`")]
    AlreadyExists {
        /// The collection.
        collection: String,
        /// The id.
        id: String,
    },
    /// A write into a shared space where the user is a viewer (as of the
    /// last refresh of the spaces list): the server would refuse it.
    #[error(
        "`{name}` is shared with you as a viewer: its records cannot be changed (an owner can make you an editor)"
    )]
    ReadOnlySpace {
        /// The space's id.
        space: String,
        /// Its name.
        name: String,
    },
    /// The token is not a JWT with a `sub` claim.
    #[error("the token is not a JWT with a `sub` (user) claim: {0}")]
    InvalidToken(String),
    /// The store belongs to another account than the token's.
    #[error(
        "this local store belongs to user `{store_user}`, but the token is for `{token_user}`; use another data directory for another account"
    )]
    AccountMismatch {
        /// The store's account.
        store_user: String,
        /// The token's user.
        token_user: String,
    },
    /// A sync operation on a store that is not signed in.
    #[error("the store is local-only (guest); sign in first")]
    NotSignedIn,
    /// The server URL is not a valid http(s) URL.
    #[error("`{0}` is not a valid http(s) server URL")]
    InvalidServerUrl(String),
    /// The server could not be reached (network, DNS, TLS, timeout).
    #[error("cannot reach the sync server at {server}: {reason}")]
    Unreachable {
        /// The server's URL.
        server: String,
        /// What the network said.
        reason: String,
    },
    /// The server refused the token (401).
    #[error("the sync server refused the token: {0}")]
    Unauthorized(String),
    /// The server answered with an error.
    #[error("the sync server answered {status} ({code}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The error body's `code`, or `http_error`.
        code: String,
        /// The error body's `message`, or the body.
        message: String,
    },
    /// The server no longer keeps the history after this device's cursor
    /// (410 `cursor_expired`, or the stream's `cursor-expired` event). The
    /// sync client handles it by downloading everything again, keeping the
    /// outbox; it only surfaces when that keeps failing.
    #[error("the sync server no longer keeps the history after this device's cursor: {0}")]
    CursorExpired(String),
    /// The server's reply could not be understood.
    #[error("unexpected reply from the sync server: {0}")]
    Protocol(String),
    /// Stored data could not be decoded (a corrupt or foreign database).
    #[error("corrupt local data: {0}")]
    Corrupt(String),
}

impl ClientError {
    /// Whether retrying later may succeed without anyone changing anything:
    /// the network, or a server that is temporarily unavailable.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Server { status, .. } => matches!(status, 408 | 429 | 500..=599),
            _ => false,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
