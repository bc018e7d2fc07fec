//! Shared spaces: a log that several users follow, with members and roles.
//!
//! Every user has an implicit personal space: their own log. A shared space
//! has an id (made by the server), a name and members, each an `owner`, an
//! `editor` or a `viewer`. Its changes live in a log of their own (log id
//! `~<spaceId>`, [`LogId`](mana_sync_protocol::LogId), in the same table as
//! users' logs), with positions of their own, and every member's devices
//! follow it. Owners manage members; a space always keeps an owner.
//!
//! The rules of who may change a membership are here, pure; each store checks
//! them inside the transaction that makes the change, with the members'
//! rows locked, so two owners demoting each other at once cannot leave a
//! space without one.

use mana_sync_protocol::{Change, LogId, SpaceId, UserId};

/// What a member may do in a space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads and writes.
    Editor,
    /// Reads, writes, and manages members.
    Owner,
}

impl Role {
    /// The name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Owner => "owner",
        }
    }

    /// Parses a name written by [`Role::as_str`].
    pub fn from_name(name: &str) -> Option<Role> {
        match name {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }

    /// Whether this role may push changes into the space.
    pub fn can_write(self) -> bool {
        self >= Role::Editor
    }
}

/// The changes of one changeset (or backup batch) that go to one log.
#[derive(Debug, Clone)]
pub(crate) struct LogChanges<T> {
    /// The log.
    pub log: LogId,
    /// Its space; `None` for the writer's own log.
    pub space: Option<SpaceId>,
    /// Its changes, in their original order.
    pub changes: Vec<T>,
}

/// Splits changes `user` writes by the log each goes to (`space_of` says
/// which space a change names): the user's own log first, then each
/// space's, by space id (the order every store takes their locks in, so two
/// pushes into the same spaces cannot deadlock). Changes keep their order
/// within a log.
pub(crate) fn split_by_log<T: Clone>(
    user: &UserId,
    changes: &[T],
    space_of: impl Fn(&T) -> Option<&SpaceId>,
) -> Vec<LogChanges<T>> {
    let mut groups: Vec<LogChanges<T>> = Vec::new();
    for change in changes {
        let space = space_of(change);
        let index = match groups.iter().position(|g| g.space.as_ref() == space) {
            Some(index) => index,
            None => {
                groups.push(LogChanges {
                    log: match space {
                        Some(space) => LogId::of_space(space),
                        None => LogId::of_user(user),
                    },
                    space: space.cloned(),
                    changes: Vec::new(),
                });
                groups.len() - 1
            }
        };
        groups[index].changes.push(change.clone());
    }
    groups.sort_by(|a, b| a.space.cmp(&b.space));
    groups
}

/// Whether any change of a changeset goes to a shared space.
pub(crate) fn reaches_spaces(changes: &[Change]) -> bool {
    changes.iter().any(|change| change.space_id.is_some())
}

/// A space as one of its members sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The space.
    pub space_id: SpaceId,
    /// Its name.
    pub name: String,
    /// The member's role.
    pub role: Role,
}

/// One member of a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Who.
    pub user_id: UserId,
    /// As what.
    pub role: Role,
}

/// A change of membership asked for by `actor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// Add `user` with `role`, or change their role.
    Set {
        /// The member.
        user: UserId,
        /// The new role.
        role: Role,
    },
    /// Remove `user` (the actor itself: leave).
    Remove {
        /// The member.
        user: UserId,
    },
}

impl MemberChange {
    /// The member whose membership changes.
    pub fn user(&self) -> &UserId {
        match self {
            MemberChange::Set { user, .. } | MemberChange::Remove { user } => user,
        }
    }
}

/// Why a membership change was refused (nothing was changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The actor is not a member of the space (or it does not exist).
    #[error("no space `{0}` among yours")]
    NotFound(SpaceId),
    /// Only owners manage members (anyone may leave).
    #[error("only an owner of space `{0}` can manage its members")]
    NotOwner(SpaceId),
    /// The change would leave the space without an owner.
    #[error("space `{0}` needs an owner: make someone else owner first")]
    LastOwner(SpaceId),
    /// The member to change or remove is not in the space.
    #[error("`{user}` is not a member of space `{space}`")]
    NoSuchMember {
        /// The space.
        space: SpaceId,
        /// Who was named.
        user: UserId,
    },
}

/// Why a space operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// The change of membership was refused; nothing changed.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}

/// Checks `change` by `actor`, given the actor's role, the changed user's
/// current role and the number of owners; pure, so both stores apply the same
/// rules inside their transactions.
pub fn check(
    space: &SpaceId,
    actor: &UserId,
    actor_role: Option<Role>,
    change: &MemberChange,
    current: Option<Role>,
    owners: usize,
) -> Result<(), MembershipError> {
    let actor_role = actor_role.ok_or_else(|| MembershipError::NotFound(space.clone()))?;
    let leaving = matches!(change, MemberChange::Remove { user } if user == actor);
    if actor_role != Role::Owner && !leaving {
        return Err(MembershipError::NotOwner(space.clone()));
    }
    let demotes_an_owner = current == Some(Role::Owner)
        && match change {
            MemberChange::Set { role, .. } => *role != Role::Owner,
            MemberChange::Remove { .. } => true,
        };
    if demotes_an_owner && owners <= 1 {
        return Err(MembershipError::LastOwner(space.clone()));
    }
    if current.is_none() && matches!(change, MemberChange::Remove { .. }) {
        return Err(MembershipError::NoSuchMember {
            space: space.clone(),
            user: change.user().clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::new(name).expect("valid")
    }

    #[test]
    fn only_owners_manage_members_but_anyone_may_leave() {
        let space = SpaceId::new("s").expect("valid");
        let (ann, bob) = (user("ann"), user("bob"));
        let add_bob = MemberChange::Set {
            user: bob.clone(),
            role: Role::Editor,
        };
        assert_eq!(
            check(&space, &ann, Some(Role::Owner), &add_bob, None, 1),
            Ok(())
        );
        assert_eq!(
            check(&space, &ann, Some(Role::Editor), &add_bob, None, 1),
            Err(MembershipError::NotOwner(space.clone()))
        );
        assert_eq!(
            check(&space, &ann, None, &add_bob, None, 1),
            Err(MembershipError::NotFound(space.clone()))
        );
        let bob_leaves = MemberChange::Remove { user: bob.clone() };
        assert_eq!(
            check(
                &space,
                &bob,
                Some(Role::Viewer),
                &bob_leaves,
                Some(Role::Viewer),
                1
            ),
            Ok(())
        );
    }

    #[test]
    fn a_space_keeps_an_owner() {
        let space = SpaceId::new("s").expect("valid");
        let ann = user("ann");
        let leave = MemberChange::Remove { user: ann.clone() };
        let demote = MemberChange::Set {
            user: ann.clone(),
            role: Role::Editor,
        };
        for change in [&leave, &demote] {
            assert_eq!(
                check(
                    &space,
                    &ann,
                    Some(Role::Owner),
                    change,
                    Some(Role::Owner),
                    1
                ),
                Err(MembershipError::LastOwner(space.clone()))
            );
            assert_eq!(
                check(
                    &space,
                    &ann,
                    Some(Role::Owner),
                    change,
                    Some(Role::Owner),
                    2
                ),
                Ok(())
            );
        }
    }
}
