//! The sync status an app shows (the seed's `SyncIndicator`).

/// Where the store stands with the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStatus {
    /// No account: a guest store. Everything works; nothing leaves the device.
    LocalOnly,
    /// Pushing or pulling right now.
    Syncing,
    /// The last sync reached the server and brought everything in both
    /// directions (and, when live, the stream is connected).
    Synced,
    /// The server cannot be reached now; local writes are kept and will be
    /// pushed later. The reason says what the network said.
    Offline {
        /// Why, for people.
        reason: String,
    },
    /// The server refused something (a rejected token, refused changes, an
    /// unexpected reply). Needs attention; local data is kept.
    Error {
        /// Why, for people.
        reason: String,
    },
}

impl SyncStatus {
    /// A short name: `local-only`, `syncing`, `synced`, `offline`, `error`.
    pub fn name(&self) -> &'static str {
        match self {
            SyncStatus::LocalOnly => "local-only",
            SyncStatus::Syncing => "syncing",
            SyncStatus::Synced => "synced",
            SyncStatus::Offline { .. } => "offline",
            SyncStatus::Error { .. } => "error",
        }
    }

    /// The reason, for `Offline` and `Error`.
    pub fn reason(&self) -> Option<&str> {
        match self {
            SyncStatus::Offline { reason } | SyncStatus::Error { reason } => Some(reason),
            _ => None,
        }
    }
}

impl std::fmt::Display for SyncStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason() {
            Some(reason) => write!(f, "{}: {reason}", self.name()),
            None => f.write_str(self.name()),
        }
    }
}
