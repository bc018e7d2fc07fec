//! Request and reply bodies of the sync endpoints.

use serde::{Deserialize, Serialize};

use crate::change::{SyncChange, WireChange};

/// `POST /sync/{appId}`: a device's changes, and where it wants to resume from.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PushRequest {
    /// The pushing device (the `X-Client-Id` header takes precedence).
    #[serde(default)]
    pub client_id: Option<String>,
    /// The device's cursor; the reply carries other devices' changes after it.
    #[serde(default)]
    pub since: Option<String>,
    /// The changes, stored all together or not at all.
    pub changes: Vec<WireChange>,
    /// Schema version of changes that carry none; absent means 1.
    #[serde(default)]
    pub schema_version: Option<u32>,
    /// Idempotency key: a changeset with a known id is acknowledged, not stored again.
    #[serde(default)]
    pub changeset_id: Option<String>,
}

/// The reply to a push, and to a pull.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PushResponse {
    /// Other devices' changes after `since`, in commit order.
    pub server_changes: Vec<SyncChange>,
    /// Always empty: concurrent edits are merged per field on the devices.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub conflicts: Vec<serde_json::Value>,
    /// The cursor to send as `since` next time.
    pub synced_until: String,
    /// More changes are waiting after `synced_until`.
    pub has_more: bool,
    /// Spaces the device followed (its cursor names them) that the user no
    /// longer belongs to: the device drops their records. Only for clients
    /// that follow spaces; absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_spaces: Vec<String>,
}

/// The reply to `GET /sync/{appId}/pull` (the same shape as a push reply).
pub type PullResponse = PushResponse;

/// The data of one `event: changes` on the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StreamChanges {
    /// The collection these changes belong to.
    pub table: String,
    /// The changes, in commit order.
    pub changes: Vec<SyncChange>,
    /// The cursor after these changes.
    pub synced_until: String,
    /// More backlog follows.
    pub has_more: bool,
}

/// The data of `event: space-added` and `event: space-removed` on the
/// stream of a client that follows spaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SpaceEvent {
    /// The space.
    pub space_id: String,
    /// The user's role in it (`space-added` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// The body of every error reply: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`) and for people (`message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// A stable, machine-readable code such as `invalid_change`.
    pub code: String,
    /// A sentence saying what was wrong and, where possible, how to fix it.
    pub message: String,
}

/// What a device sends on a WebSocket (`/ws`, `/ws/{appId}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SocketRequest {
    /// The first message: the bearer token, and optionally the device id (so
    /// the device is not told about its own pushes).
    Auth {
        /// The JWT.
        token: String,
        /// The device.
        #[serde(default, rename = "clientId", skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    /// Liveness check; answered with [`SocketMessage::Pong`].
    Ping,
}

/// What the server sends on a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SocketMessage {
    /// The token was accepted.
    AuthOk,
    /// Answer to [`SocketRequest::Ping`].
    Pong,
    /// Another device of the user pushed to `app_id`; sync those collections.
    /// An empty `tables` means "any collection"; `appId` `*` means "any app".
    SyncAvailable {
        /// The app that changed.
        #[serde(rename = "appId")]
        app_id: String,
        /// The collections that changed.
        tables: Vec<String>,
    },
    /// The user joined a shared space (or was given another role in it);
    /// sync to download it. Only on sockets that follow spaces.
    SpaceAdded {
        /// The space.
        #[serde(rename = "spaceId")]
        space_id: String,
        /// The user's role in it.
        role: String,
    },
    /// The user left or was removed from a shared space: drop its records.
    /// Only on sockets that follow spaces.
    SpaceRemoved {
        /// The space.
        #[serde(rename = "spaceId")]
        space_id: String,
    },
    /// Something was wrong; after an auth error the socket is closed.
    Error {
        /// Machine-readable code.
        code: String,
        /// What was wrong.
        message: String,
    },
}

/// `POST /spaces`: a new shared space.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSpace {
    /// Its name, as its members see it.
    pub name: String,
}

/// `PUT /spaces/{spaceId}/members/{userId}`: add a member, or change a role.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetMember {
    /// `owner`, `editor` or `viewer`.
    pub role: String,
}

/// A shared space as one of its members sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SpaceView {
    /// The space (send it as `spaceId` on changes).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The caller's role: `owner`, `editor` or `viewer`.
    pub role: String,
    /// Every member, with the `GET /spaces/{spaceId}` of a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<MemberView>>,
}

/// One member of a space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    /// The member's user id (a token's `sub`).
    pub user_id: String,
    /// `owner`, `editor` or `viewer`.
    pub role: String,
}

/// `GET /spaces`: the caller's shared spaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpaceList {
    /// By name.
    pub spaces: Vec<SpaceView>,
}
