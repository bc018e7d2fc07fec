//! The spaces API of the server (`/spaces`), typed: create a shared space,
//! list the user's, read one with its members, add a member or change a
//! role, remove a member, leave. The device's list of spaces
//! ([`LocalStore::spaces`](crate::LocalStore::spaces)) follows what these
//! calls learn; leaving drops the space's records at once.

use mana_sync_protocol::messages::{MemberView, SpaceList, SpaceView};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::error::{ClientError, Result};
use crate::store::LocalSpace;
use crate::sync::SyncClient;

/// A member's role in a shared space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Manages members; reads and writes.
    Owner,
    /// Reads and writes.
    Editor,
    /// Reads only.
    Viewer,
}

impl Role {
    /// The role as the server names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = ClientError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "owner" => Ok(Role::Owner),
            "editor" => Ok(Role::Editor),
            "viewer" => Ok(Role::Viewer),
            other => Err(ClientError::InvalidInput(format!(
                "`{other}` is not a role: expected owner, editor or viewer"
            ))),
        }
    }
}

fn local(view: &SpaceView) -> LocalSpace {
    LocalSpace {
        id: view.id.clone(),
        name: view.name.clone(),
        role: view.role.clone(),
    }
}

impl SyncClient {
    async fn spaces_call(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Response> {
        let mut path = vec!["spaces"];
        path.extend_from_slice(segments);
        let mut request = self
            .inner
            .http
            .request(method, self.endpoint(&path)?)
            .bearer_auth(&self.inner.token)
            .timeout(self.inner.options.request_timeout);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))
    }

    /// The user's shared spaces, by name, from the server; the device's
    /// list ([`LocalStore::spaces`](crate::LocalStore::spaces)) becomes
    /// this. A server without shared spaces (404) has none, and the list is
    /// left as it was.
    pub async fn refresh_spaces(&self) -> Result<Vec<LocalSpace>> {
        let response = self.spaces_call(Method::GET, &[], None).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let list: SpaceList = self.read_reply(response).await?;
        let spaces: Vec<LocalSpace> = list.spaces.iter().map(local).collect();
        let saved = spaces.clone();
        self.blocking(move |store| store.replace_spaces(&saved))
            .await?;
        Ok(spaces)
    }

    /// Creates a shared space named `name`, owned by the user. Its id is
    /// what [`LocalStore::insert_in`](crate::LocalStore::insert_in) takes.
    pub async fn create_space(&self, name: &str) -> Result<SpaceView> {
        let response = self
            .spaces_call(Method::POST, &[], Some(json!({ "name": name })))
            .await?;
        let view: SpaceView = self.read_reply(response).await?;
        let known = local(&view);
        self.blocking(move |store| store.remember_space(&known))
            .await?;
        Ok(view)
    }

    /// One of the user's spaces, with every member and their role.
    pub async fn space(&self, id: &str) -> Result<SpaceView> {
        let response = self.spaces_call(Method::GET, &[id], None).await?;
        let view: SpaceView = self.read_reply(response).await?;
        let known = local(&view);
        self.blocking(move |store| store.remember_space(&known))
            .await?;
        Ok(view)
    }

    /// Adds `user` to the space with `role`, or gives a member another role
    /// (owners only).
    pub async fn set_member(&self, space: &str, user: &str, role: Role) -> Result<MemberView> {
        let response = self
            .spaces_call(
                Method::PUT,
                &[space, "members", user],
                Some(json!({ "role": role.as_str() })),
            )
            .await?;
        let member: MemberView = self.read_reply(response).await?;
        if user == self.inner.account.user {
            self.refresh_spaces().await?;
        }
        Ok(member)
    }

    /// Removes `user` from the space (owners only; the last owner cannot
    /// go). Removing oneself is leaving: the space's records are dropped
    /// from this device at once.
    pub async fn remove_member(&self, space: &str, user: &str) -> Result<()> {
        let response = self
            .spaces_call(Method::DELETE, &[space, "members", user], None)
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body = response
                .bytes()
                .await
                .map_err(|error| self.unreachable(&error))?;
            return Err(crate::sync::error_from(status, &body));
        }
        if user == self.inner.account.user {
            let gone = vec![space.to_owned()];
            self.blocking(move |store| store.drop_spaces(&gone)).await?;
        }
        Ok(())
    }

    /// Leaves the space (see [`SyncClient::remove_member`]).
    pub async fn leave(&self, space: &str) -> Result<()> {
        let user = self.inner.account.user.clone();
        self.remove_member(space, &user).await
    }
}
