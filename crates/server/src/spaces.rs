//! Shared spaces: creating them and managing their members, as typed calls
//! for the `/spaces` routes. Who may do what is decided in the store's
//! transaction (`mana_sync_store::spaces`), so it holds under concurrency.

use std::sync::Arc;

use mana_sync_protocol::ident::{MAX_ID_LEN, MAX_NAME_LEN, check_identifier};
use mana_sync_protocol::messages::{MemberView, SpaceList, SpaceView};
use mana_sync_protocol::{SpaceId, UserId};
use mana_sync_store::{MemberChange, Membership, MembershipError, Role, SpaceError, Store};

use crate::service::ServiceError;

/// Why a space operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SpacesError {
    /// A parameter is invalid.
    #[error(transparent)]
    Invalid(#[from] ServiceError),
    /// The membership rules refused it; nothing changed.
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

impl From<SpaceError> for SpacesError {
    fn from(error: SpaceError) -> Self {
        match error {
            SpaceError::Membership(error) => SpacesError::Membership(error),
            SpaceError::Store(error) => SpacesError::Invalid(ServiceError::Store(error)),
        }
    }
}

impl From<mana_sync_store::StoreError> for SpacesError {
    fn from(error: mana_sync_store::StoreError) -> Self {
        SpacesError::Invalid(ServiceError::Store(error))
    }
}

fn invalid(message: String) -> SpacesError {
    SpacesError::Invalid(ServiceError::InvalidRequest(message))
}

/// A space id from a path.
pub fn space_id(text: &str) -> Result<SpaceId, SpacesError> {
    SpaceId::new(text).map_err(|error| invalid(format!("`spaceId` {error}")))
}

fn user_id(text: &str) -> Result<UserId, SpacesError> {
    check_identifier(text, MAX_ID_LEN).map_err(|error| invalid(format!("`userId` {error}")))?;
    UserId::new(text).map_err(|error| invalid(format!("`userId` {error}")))
}

fn role(text: &str) -> Result<Role, SpacesError> {
    Role::from_name(text).ok_or_else(|| {
        invalid(format!(
            "`role` must be owner, editor or viewer, not `{text}`"
        ))
    })
}

fn view(membership: Membership) -> SpaceView {
    SpaceView {
        id: membership.space_id.to_string(),
        name: membership.name,
        role: membership.role.as_str().to_owned(),
        members: None,
    }
}

/// Space management on a store.
pub struct Spaces {
    store: Arc<dyn Store>,
}

impl Spaces {
    /// Spaces on `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Creates a space owned by `owner`.
    pub async fn create(&self, owner: &UserId, name: &str) -> Result<SpaceView, SpacesError> {
        let name = name.trim();
        check_identifier(name, MAX_NAME_LEN).map_err(|error| invalid(format!("`name` {error}")))?;
        Ok(view(self.store.create_space(owner, name).await?))
    }

    /// The caller's spaces.
    pub async fn list(&self, user: &UserId) -> Result<SpaceList, SpacesError> {
        let spaces = self.store.spaces_of(user).await?;
        Ok(SpaceList {
            spaces: spaces.into_iter().map(view).collect(),
        })
    }

    /// One of the caller's spaces, with its members.
    pub async fn get(&self, user: &UserId, space: &SpaceId) -> Result<SpaceView, SpacesError> {
        let membership = self
            .store
            .spaces_of(user)
            .await?
            .into_iter()
            .find(|m| &m.space_id == space)
            .ok_or_else(|| MembershipError::NotFound(space.clone()))?;
        let members = self
            .store
            .members(user, space)
            .await?
            .ok_or_else(|| MembershipError::NotFound(space.clone()))?;
        Ok(SpaceView {
            members: Some(
                members
                    .into_iter()
                    .map(|member| MemberView {
                        user_id: member.user_id.to_string(),
                        role: member.role.as_str().to_owned(),
                    })
                    .collect(),
            ),
            ..view(membership)
        })
    }

    /// Adds `member` with `role`, or changes their role (owners only).
    pub async fn set_member(
        &self,
        actor: &UserId,
        space: &SpaceId,
        member: &str,
        role_name: &str,
    ) -> Result<MemberView, SpacesError> {
        let (user, role) = (user_id(member)?, role(role_name)?);
        self.store
            .change_membership(
                actor,
                space,
                &MemberChange::Set {
                    user: user.clone(),
                    role,
                },
            )
            .await?;
        Ok(MemberView {
            user_id: user.to_string(),
            role: role.as_str().to_owned(),
        })
    }

    /// Removes `member` (owners only), or the caller itself (leaving).
    pub async fn remove_member(
        &self,
        actor: &UserId,
        space: &SpaceId,
        member: &str,
    ) -> Result<(), SpacesError> {
        let user = user_id(member)?;
        Ok(self
            .store
            .change_membership(actor, space, &MemberChange::Remove { user })
            .await?)
    }
}
