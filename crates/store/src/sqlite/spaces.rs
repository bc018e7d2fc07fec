//! Shared spaces on SQLite (the rules are in [`crate::spaces`]); writes run
//! on the writer, so membership changes of one space take turns.

use std::sync::Arc;

use mana_sync_protocol::{SpaceId, UserId};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::{SqliteStore, database_error, micros};
use crate::notice::{ChangeNotice, StoreEvent};
use crate::spaces::{self, Member, MemberChange, Membership, Role, SpaceError};
use crate::{StoreError, StoreResult};

fn role(name: &str) -> rusqlite::Result<Role> {
    Role::from_name(name).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("role `{name}`").into(),
        )
    })
}

fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(error.to_string())
}

pub(super) async fn create_space(
    store: &SqliteStore,
    owner: &UserId,
    name: &str,
) -> StoreResult<Membership> {
    let id = SpaceId::new(uuid::Uuid::now_v7().to_string()).map_err(corrupt)?;
    let (space, owner_id, name) = (id.clone(), owner.as_str().to_owned(), name.to_owned());
    let created = name.clone();
    let events = store.events.clone();
    let joined = ChangeNotice::for_member(
        &id,
        &MemberChange::Set {
            user: owner.clone(),
            role: Role::Owner,
        },
    );
    store
        .writer
        .run(move |conn| -> StoreResult<()> {
            let now = micros(OffsetDateTime::now_utc());
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(database_error)?;
            tx.execute(
                "INSERT INTO mana_spaces (space_id, name, created_by, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![space.as_str(), name, owner_id, now],
            )
            .map_err(database_error)?;
            tx.execute(
                "INSERT INTO mana_space_members (space_id, user_id, role, added_at)
                 VALUES (?1, ?2, 'owner', ?3)",
                params![space.as_str(), owner_id, now],
            )
            .map_err(database_error)?;
            tx.commit().map_err(database_error)?;
            // Announced on the writer, so in order with the pushes.
            let _ = events.send(StoreEvent::Changed(Arc::new(joined)));
            Ok(())
        })
        .await??;
    Ok(Membership {
        space_id: id,
        name: created,
        role: Role::Owner,
    })
}

pub(super) async fn spaces_of(store: &SqliteStore, user: &UserId) -> StoreResult<Vec<Membership>> {
    let user = user.as_str().to_owned();
    let rows: Vec<(String, String, Role)> =
        SqliteStore::with_connection(&store.readers, move |conn| {
            let mut statement = conn
                .prepare_cached(
                    "SELECT s.space_id, s.name, m.role FROM mana_space_members m
                     JOIN mana_spaces s USING (space_id)
                     WHERE m.user_id = ?1 ORDER BY s.name, s.space_id",
                )
                .map_err(database_error)?;
            let rows = statement
                .query_map([&user], |row| {
                    Ok((row.get(0)?, row.get(1)?, role(&row.get::<_, String>(2)?)?))
                })
                .map_err(database_error)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(database_error)
        })
        .await?;
    rows.into_iter()
        .map(|(id, name, role)| {
            Ok(Membership {
                space_id: SpaceId::new(id).map_err(corrupt)?,
                name,
                role,
            })
        })
        .collect()
}

pub(super) async fn members(
    store: &SqliteStore,
    user: &UserId,
    space: &SpaceId,
) -> StoreResult<Option<Vec<Member>>> {
    let space = space.as_str().to_owned();
    let rows: Vec<(String, Role)> = SqliteStore::with_connection(&store.readers, move |conn| {
        let mut statement = conn
            .prepare_cached(
                "SELECT user_id, role FROM mana_space_members WHERE space_id = ?1
                 ORDER BY user_id",
            )
            .map_err(database_error)?;
        let rows = statement
            .query_map([&space], |row| {
                Ok((row.get(0)?, role(&row.get::<_, String>(1)?)?))
            })
            .map_err(database_error)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(database_error)
    })
    .await?;
    let members = rows
        .into_iter()
        .map(|(id, role)| {
            Ok(Member {
                user_id: UserId::new(id).map_err(corrupt)?,
                role,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(members
        .iter()
        .any(|member| &member.user_id == user)
        .then_some(members))
}

pub(super) async fn change_membership(
    store: &SqliteStore,
    actor: &UserId,
    space: &SpaceId,
    change: &MemberChange,
) -> Result<(), SpaceError> {
    let (actor, space, change) = (actor.clone(), space.clone(), change.clone());
    let events = store.events.clone();
    store
        .writer
        .run(move |conn| -> Result<(), SpaceError> {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(database_error)?;
            let rows: Vec<(String, Role)> = {
                let mut statement = tx
                    .prepare_cached(
                        "SELECT user_id, role FROM mana_space_members WHERE space_id = ?1",
                    )
                    .map_err(database_error)?;
                let rows = statement
                    .query_map([space.as_str()], |row| {
                        Ok((row.get(0)?, role(&row.get::<_, String>(1)?)?))
                    })
                    .map_err(database_error)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(database_error)?
            };
            let role_of = |user: &UserId| {
                rows.iter()
                    .find(|(id, _)| id == user.as_str())
                    .map(|(_, role)| *role)
            };
            let owners = rows.iter().filter(|(_, role)| *role == Role::Owner).count();
            spaces::check(
                &space,
                &actor,
                role_of(&actor),
                &change,
                role_of(change.user()),
                owners,
            )?;
            match &change {
                MemberChange::Set { user, role } => tx.execute(
                    "INSERT INTO mana_space_members (space_id, user_id, role, added_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (space_id, user_id) DO UPDATE SET role = excluded.role",
                    params![
                        space.as_str(),
                        user.as_str(),
                        role.as_str(),
                        micros(OffsetDateTime::now_utc())
                    ],
                ),
                MemberChange::Remove { user } => tx.execute(
                    "DELETE FROM mana_space_members WHERE space_id = ?1 AND user_id = ?2",
                    params![space.as_str(), user.as_str()],
                ),
            }
            .map_err(database_error)?;
            tx.commit().map_err(database_error)?;
            // Announced on the writer, so in order with the pushes: a push
            // stored after a removal is announced after it.
            let notice = ChangeNotice::for_member(&space, &change);
            let _ = events.send(StoreEvent::Changed(Arc::new(notice)));
            Ok(())
        })
        .await
        .map_err(SpaceError::Store)?
}

/// `user`'s role in `space` (`None`: not a member), read on `conn`.
pub(crate) fn role_of(
    conn: &rusqlite::Connection,
    space: &SpaceId,
    user: &UserId,
) -> StoreResult<Option<Role>> {
    conn.query_row(
        "SELECT role FROM mana_space_members WHERE space_id = ?1 AND user_id = ?2",
        params![space.as_str(), user.as_str()],
        |row| role(&row.get::<_, String>(0)?),
    )
    .optional()
    .map_err(database_error)
}

/// Every member of `space`, read on `conn`.
pub(super) fn members_of(conn: &rusqlite::Connection, space: &SpaceId) -> StoreResult<Vec<UserId>> {
    let mut statement = conn
        .prepare_cached("SELECT user_id FROM mana_space_members WHERE space_id = ?1")
        .map_err(database_error)?;
    let ids = statement
        .query_map([space.as_str()], |row| row.get::<_, String>(0))
        .map_err(database_error)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(database_error)?;
    ids.into_iter()
        .map(|id| UserId::new(id).map_err(corrupt))
        .collect()
}
