//! Shared spaces on Postgres (the rules are in [`crate::spaces`]). Every
//! statement runs as the acting user (`mana.user_id`), under the policies of
//! `0006_spaces.sql`: a user sees only the spaces and members of spaces they
//! belong to, and only owners change members.

use mana_sync_protocol::{LogId, SpaceId, UserId};

use super::{PostgresStore, database_error, pool_error};
use crate::notice::ChangeNotice;
use crate::spaces::{self, Member, MemberChange, Membership, Role, SpaceError};
use crate::{StoreError, StoreResult};

/// A stored role's name as a [`Role`].
pub(crate) fn role(name: &str) -> StoreResult<Role> {
    Role::from_name(name).ok_or_else(|| StoreError::Corrupt(format!("role `{name}`")))
}

fn space_id(text: String) -> StoreResult<SpaceId> {
    SpaceId::new(text).map_err(|e| StoreError::Corrupt(format!("space id: {e}")))
}

pub(super) async fn create_space(
    store: &PostgresStore,
    owner: &UserId,
    name: &str,
) -> StoreResult<Membership> {
    let id = space_id(uuid::Uuid::now_v7().to_string())?;
    let mut client = store.pool.get().await.map_err(pool_error)?;
    let tx = PostgresStore::begin_as(&mut client, owner, false).await?;
    tx.execute(
        "INSERT INTO mana_spaces (space_id, name, created_by) VALUES ($1, $2, $3)",
        &[&id.as_str(), &name, &owner.as_str()],
    )
    .await
    .map_err(database_error)?;
    tx.execute(
        "INSERT INTO mana_space_members (space_id, user_id, role) VALUES ($1, $2, 'owner')",
        &[&id.as_str(), &owner.as_str()],
    )
    .await
    .map_err(database_error)?;
    tx.commit().await.map_err(database_error)?;
    store.announcer.announce(ChangeNotice::for_member(
        &id,
        &MemberChange::Set {
            user: owner.clone(),
            role: Role::Owner,
        },
    ));
    Ok(Membership {
        space_id: id,
        name: name.to_owned(),
        role: Role::Owner,
    })
}

pub(super) async fn spaces_of(
    store: &PostgresStore,
    user: &UserId,
) -> StoreResult<Vec<Membership>> {
    let rows = store
        .query_as(
            user.as_str(),
            "SELECT s.space_id, s.name, m.role FROM mana_space_members m
             JOIN mana_spaces s USING (space_id)
             WHERE m.user_id = $1 ORDER BY s.name, s.space_id",
            &[&user.as_str()],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Membership {
                space_id: space_id(row.get(0))?,
                name: row.get(1),
                role: role(row.get(2))?,
            })
        })
        .collect()
}

pub(super) async fn members(
    store: &PostgresStore,
    user: &UserId,
    space: &SpaceId,
) -> StoreResult<Option<Vec<Member>>> {
    let mut client = store.pool.get().await.map_err(pool_error)?;
    let tx = PostgresStore::begin_as(&mut client, user, true).await?;
    let rows = tx
        .query(
            "SELECT user_id, role FROM mana_space_members WHERE space_id = $1
             ORDER BY user_id",
            &[&space.as_str()],
        )
        .await
        .map_err(database_error)?;
    tx.commit().await.map_err(database_error)?;
    let members = rows
        .iter()
        .map(|row| {
            Ok(Member {
                user_id: UserId::new(row.get::<_, String>(0))
                    .map_err(|e| StoreError::Corrupt(format!("member: {e}")))?,
                role: role(row.get(1))?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(members
        .iter()
        .any(|member| &member.user_id == user)
        .then_some(members))
}

pub(super) async fn change_membership(
    store: &PostgresStore,
    actor: &UserId,
    space: &SpaceId,
    change: &MemberChange,
) -> Result<(), SpaceError> {
    let mut client = store.pool.get().await.map_err(pool_error)?;
    let tx = PostgresStore::begin_as(&mut client, actor, false).await?;
    // Every member's row, locked: concurrent changes of one space take turns,
    // so the owner count below stays true until commit.
    let rows = tx
        .query(
            "SELECT user_id, role FROM mana_space_members WHERE space_id = $1 FOR UPDATE",
            &[&space.as_str()],
        )
        .await
        .map_err(database_error)?;
    let mut actor_role = None;
    let mut current = None;
    let mut owners = 0;
    for row in &rows {
        let (user, member_role): (&str, Role) = (row.get(0), role(row.get(1))?);
        owners += usize::from(member_role == Role::Owner);
        if user == actor.as_str() {
            actor_role = Some(member_role);
        }
        if user == change.user().as_str() {
            current = Some(member_role);
        }
    }
    spaces::check(space, actor, actor_role, change, current, owners)?;
    match change {
        MemberChange::Set { user, role } => tx
            .execute(
                "INSERT INTO mana_space_members (space_id, user_id, role) VALUES ($1, $2, $3)
                 ON CONFLICT (space_id, user_id) DO UPDATE SET role = EXCLUDED.role",
                &[&space.as_str(), &user.as_str(), &role.as_str()],
            )
            .await
            .map_err(database_error)?,
        MemberChange::Remove { user } => tx
            .execute(
                "DELETE FROM mana_space_members WHERE space_id = $1 AND user_id = $2",
                &[&space.as_str(), &user.as_str()],
            )
            .await
            .map_err(database_error)?,
    };
    tx.commit().await.map_err(database_error)?;
    store
        .announcer
        .announce(ChangeNotice::for_member(space, change));
    Ok(())
}

/// A user's role in a space (`$1` space, `$2` user), if a member.
pub(crate) const ROLE_IN: &str =
    "SELECT role FROM mana_space_members WHERE space_id = $1 AND user_id = $2";

/// `user`'s role in `space` (`None`: not a member), in `tx`.
pub(crate) async fn role_in(
    tx: &impl deadpool_postgres::GenericClient,
    space: &SpaceId,
    user: &str,
) -> StoreResult<Option<Role>> {
    let statement = tx.prepare_cached(ROLE_IN).await.map_err(database_error)?;
    let row = tx
        .query_opt(&statement, &[&space.as_str(), &user])
        .await
        .map_err(database_error)?;
    row.map(|row| role(row.get(0))).transpose()
}

/// The members of `space`, read acting as its log (`log`).
pub(super) async fn readers(
    store: &PostgresStore,
    log: &LogId,
    space: &SpaceId,
) -> StoreResult<Vec<UserId>> {
    let rows = store
        .query_as(
            log.as_str(),
            "SELECT user_id FROM mana_space_members WHERE space_id = $1",
            &[&space.as_str()],
        )
        .await?;
    rows.iter()
        .map(|row| {
            UserId::new(row.get::<_, String>(0))
                .map_err(|e| StoreError::Corrupt(format!("member id: {e}")))
        })
        .collect()
}
