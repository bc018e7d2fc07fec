//! Shared spaces on both databases: spaces and members, who may change them,
//! and a space always keeping an owner.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use common::{Fixture, change, insert, query, user};
use mana_sync_protocol::{LogId, Since, SpaceId, UserId};
use mana_sync_store::{
    ChangeQuery, MemberChange, MembershipError, NewChangeset, PushOutcome, Role, SpaceError,
    StoreError, StoreEvent,
};

fn refused(result: Result<(), SpaceError>) -> MembershipError {
    match result {
        Err(SpaceError::Membership(error)) => error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn members_of_a_space_see_it_and_others_do_not(f: Fixture) {
    let (ann, bob, eve) = (user("ann"), user("bob"), user("eve"));
    let space = f
        .store
        .create_space(&ann, "Groceries")
        .await
        .expect("creates");
    assert_eq!(
        (space.name.as_str(), space.role),
        ("Groceries", Role::Owner)
    );
    f.set_member(&ann, &space.space_id, "bob", Role::Viewer)
        .await;
    let bobs = f.store.spaces_of(&bob).await.expect("lists");
    assert_eq!(bobs.len(), 1);
    assert_eq!(
        (bobs[0].space_id.clone(), bobs[0].role),
        (space.space_id.clone(), Role::Viewer)
    );
    let members = f
        .store
        .members(&bob, &space.space_id)
        .await
        .expect("reads")
        .expect("bob is a member");
    let listed: Vec<(&str, Role)> = members
        .iter()
        .map(|m| (m.user_id.as_str(), m.role))
        .collect();
    assert_eq!(listed, [("ann", Role::Owner), ("bob", Role::Viewer)]);
    assert!(f.store.spaces_of(&eve).await.expect("lists").is_empty());
    assert_eq!(
        f.store.members(&eve, &space.space_id).await.expect("reads"),
        None
    );
}

async fn only_owners_manage_members_and_a_space_keeps_an_owner(f: Fixture) {
    let (ann, bob, eve) = (user("ann"), user("bob"), user("eve"));
    let space = f.create_space(&ann, "Backlog").await;
    let set = |who: &str, role| MemberChange::Set {
        user: user(who),
        role,
    };
    f.set_member(&ann, &space, "bob", Role::Editor).await;
    assert_eq!(
        refused(
            f.store
                .change_membership(&bob, &space, &set("eve", Role::Viewer))
                .await
        ),
        MembershipError::NotOwner(space.clone())
    );
    assert_eq!(
        refused(
            f.store
                .change_membership(&eve, &space, &set("eve", Role::Owner))
                .await
        ),
        MembershipError::NotFound(space.clone())
    );
    let ann_leaves = MemberChange::Remove { user: ann.clone() };
    assert_eq!(
        refused(f.store.change_membership(&ann, &space, &ann_leaves).await),
        MembershipError::LastOwner(space.clone())
    );
    assert_eq!(
        refused(
            f.store
                .change_membership(&ann, &space, &set("ann", Role::Viewer))
                .await
        ),
        MembershipError::LastOwner(space.clone())
    );
    // With a second owner, the first may leave; an editor may leave by itself.
    f.set_member(&ann, &space, "bob", Role::Owner).await;
    f.store
        .change_membership(&ann, &space, &ann_leaves)
        .await
        .expect("leaves");
    assert!(f.store.spaces_of(&ann).await.expect("lists").is_empty());
    f.set_member(&bob, &space, "eve", Role::Editor).await;
    f.store
        .change_membership(&eve, &space, &MemberChange::Remove { user: eve.clone() })
        .await
        .expect("leaves");
    assert_eq!(
        refused(
            f.store
                .change_membership(&bob, &space, &MemberChange::Remove { user: eve.clone() })
                .await
        ),
        MembershipError::NoSuchMember {
            space: space.clone(),
            user: eve.clone()
        }
    );
}

/// A space `Groceries` owned by ann, with bob as an editor and vic as a
/// viewer.
async fn shared_space(f: &Fixture) -> SpaceId {
    let ann = user("ann");
    let space = f.create_space(&ann, "Groceries").await;
    f.set_member(&ann, &space, "bob", Role::Editor).await;
    f.set_member(&ann, &space, "vic", Role::Viewer).await;
    space
}

fn into_space(space: &SpaceId, id: &str) -> mana_sync_protocol::Change {
    change(&format!(
        r#"{{"table":"items","id":"{id}","op":"insert","spaceId":"{space}","data":{{"title":"{id}"}}}}"#,
        space = space.as_str()
    ))
}

async fn space_ids(
    f: &Fixture,
    reader: &UserId,
    space: &SpaceId,
) -> Result<Vec<String>, StoreError> {
    let page = f
        .store
        .changes_after(
            reader,
            &ChangeQuery {
                space: Some(space),
                ..query("todo", None, Since::START)
            },
        )
        .await?;
    assert!(
        page.changes
            .iter()
            .all(|c| c.space_id.as_ref() == Some(space)),
        "every change read from a space's log names the space"
    );
    Ok(page.changes.into_iter().map(|c| c.record_id).collect())
}

async fn members_write_and_read_a_space_and_nobody_else_does(f: Fixture) {
    let space = shared_space(&f).await;
    let (ann, bob, vic, eve) = (user("ann"), user("bob"), user("vic"), user("eve"));
    // One changeset of bob's reaches his own log and the space's.
    f.push_todo(
        &bob,
        "bobs-phone",
        &[insert("tasks", "own"), into_space(&space, "milk")],
    )
    .await;
    f.push_todo(&ann, "anns-phone", &[into_space(&space, "eggs")])
        .await;
    for member in [&ann, &bob, &vic] {
        assert_eq!(
            space_ids(&f, member, &space).await.expect("a member reads"),
            ["milk", "eggs"],
            "{member:?}"
        );
    }
    let (own, _) = common::read_all(&*f.store, &bob, query("todo", None, Since::START)).await;
    assert_eq!(own, ["own"], "the space's changes are not in bob's own log");
    let (anns, _) = common::read_all(&*f.store, &ann, query("todo", None, Since::START)).await;
    assert!(anns.is_empty(), "nor in ann's");
    match space_ids(&f, &eve, &space).await {
        Err(StoreError::SpaceForbidden {
            space: named,
            write: false,
        }) => assert_eq!(named, space),
        other => panic!("a stranger must be refused, got {other:?}"),
    }
}

async fn a_push_into_a_space_the_pusher_may_not_write_stores_nothing(f: Fixture) {
    let space = shared_space(&f).await;
    let mut events = f.store.events();
    for (who, changeset) in [("vic", "from-a-viewer"), ("eve", "from-a-stranger")] {
        let pusher = user(who);
        let refused = f
            .store
            .push(
                &pusher,
                NewChangeset {
                    app_id: "todo",
                    client_id: "device",
                    changeset_id: Some(changeset),
                    changes: &[insert("tasks", "own"), into_space(&space, "sneaky")],
                },
            )
            .await;
        match refused {
            Err(StoreError::SpaceForbidden {
                space: named,
                write: true,
            }) => {
                assert_eq!(named, space);
            }
            other => panic!("{who}'s push must be refused, got {other:?}"),
        }
        let (own, _) =
            common::read_all(&*f.store, &pusher, query("todo", None, Since::START)).await;
        assert!(own.is_empty(), "nothing of {who}'s changeset is stored");
    }
    assert!(
        space_ids(&f, &user("ann"), &space)
            .await
            .expect("reads")
            .is_empty(),
        "the space's log is untouched"
    );
    // The refused changeset's id was not used up either.
    let again = f
        .store
        .push(
            &user("vic"),
            NewChangeset {
                app_id: "todo",
                client_id: "device",
                changeset_id: Some("from-a-viewer"),
                changes: &[insert("tasks", "own")],
            },
        )
        .await
        .expect("stores");
    assert!(
        matches!(again, PushOutcome::Stored { count: 1, .. }),
        "{again:?}"
    );
    while let Ok(event) = events.try_recv() {
        if let StoreEvent::Changed(notice) = event {
            assert!(
                notice.member.is_some() || notice.log == LogId::of_user(&user("vic")),
                "no notice for a refused push: {notice:?}"
            );
        }
    }
}

async fn pushes_and_membership_changes_are_announced_per_log(f: Fixture) {
    let mut events = f.store.events();
    let space = shared_space(&f).await;
    let bob = user("bob");
    f.push_todo(
        &bob,
        "bobs-phone",
        &[insert("tasks", "own"), into_space(&space, "milk")],
    )
    .await;
    f.store
        .change_membership(&bob, &space, &MemberChange::Remove { user: bob.clone() })
        .await
        .expect("bob leaves");
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.recv())
            .await
            .expect("announced within the deadline")
            .expect("open");
        if let StoreEvent::Changed(notice) = event {
            let what = match &notice.member {
                Some(member) => format!(
                    "{} {} {}",
                    notice.log.as_str(),
                    member.user.as_str(),
                    member.role.map_or("removed", Role::as_str)
                ),
                None => format!("{} {:?}", notice.log.as_str(), notice.tables),
            };
            seen.push(what);
        }
    }
    let log = LogId::of_space(&space);
    let log = log.as_str();
    assert_eq!(
        seen,
        [
            format!("{log} ann owner"),
            format!("{log} bob editor"),
            format!("{log} vic viewer"),
            r#"bob Some(["tasks"])"#.to_owned(),
            format!(r#"{log} Some(["items"])"#),
            format!("{log} bob removed"),
        ]
    );
    let mut readers = f
        .store
        .log_readers(&LogId::of_space(&space))
        .await
        .expect("reads");
    readers.sort();
    assert_eq!(readers, [user("ann"), user("vic")]);
    assert_eq!(
        f.store
            .log_readers(&LogId::of_user(&bob))
            .await
            .expect("reads"),
        std::slice::from_ref(&bob)
    );
    match space_ids(&f, &bob, &space).await {
        Err(StoreError::SpaceForbidden { .. }) => {}
        other => panic!("a member who left reads no more, got {other:?}"),
    }
}

/// The store refuses an import into a space the importer may not write by
/// itself (the server checks first; this is the second line of defence),
/// and stores nothing of it.
async fn an_import_into_a_space_the_importer_may_not_write_stores_nothing(f: Fixture) {
    let space = shared_space(&f).await;
    let restored = |n: u128, change: mana_sync_protocol::Change| {
        Ok(mana_sync_protocol::backup::ImportedChange {
            event_id: uuid::Uuid::from_u128(n),
            app_id: "todo".to_owned(),
            client_id: "restored".to_owned(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            change,
        })
    };
    for who in ["vic", "eve"] {
        let items = vec![
            restored(1, insert("tasks", "own")),
            restored(2, into_space(&space, "sneaky")),
        ];
        let result = f
            .store
            .import(&user(who), Box::pin(futures::stream::iter(items)))
            .await;
        match result {
            Err(mana_sync_store::ImportError::Store(StoreError::SpaceForbidden {
                space: named,
                write: true,
            })) => {
                assert_eq!(named, space);
            }
            other => panic!("{who}'s import must be refused, got {other:?}"),
        }
        let (own, _) =
            common::read_all(&*f.store, &user(who), query("todo", None, Since::START)).await;
        assert!(own.is_empty(), "nothing of {who}'s import is stored");
    }
    let items = vec![restored(3, into_space(&space, "bread"))];
    let outcome = f
        .store
        .import(&user("bob"), Box::pin(futures::stream::iter(items)))
        .await
        .expect("an editor restores into the space");
    assert_eq!(outcome.imported, 1);
    assert_eq!(
        space_ids(&f, &user("ann"), &space).await.expect("reads"),
        ["bread"]
    );
}

async fn a_repeated_changeset_into_a_space_is_acknowledged_and_stores_nothing(f: Fixture) {
    let space = shared_space(&f).await;
    let bob = user("bob");
    // Each changeset twice, more often than the pool has connections: a
    // repeated one must leave nothing behind, not even an open transaction
    // that the next push on its connection would commit.
    let mut expected = Vec::new();
    for n in 0..40 {
        let record = format!("item-{n}");
        let id = format!("cs-{n}");
        let changes = [
            insert("tasks", &format!("own-{record}")),
            into_space(&space, &record),
        ];
        for attempt in 0..2 {
            let outcome = f
                .store
                .push(
                    &bob,
                    NewChangeset {
                        app_id: "todo",
                        client_id: "bobs-phone",
                        changeset_id: Some(&id),
                        changes: &changes,
                    },
                )
                .await
                .expect("pushes");
            match (attempt, outcome) {
                (0, PushOutcome::Stored { count: 2, .. }) | (1, PushOutcome::Duplicate) => {}
                (_, other) => panic!("attempt {attempt} of {id}: {other:?}"),
            }
        }
        expected.push(record);
    }
    assert_eq!(
        space_ids(&f, &user("ann"), &space).await.expect("reads"),
        expected,
        "each change once in the space's log"
    );
    let (own, _) = common::read_all(&*f.store, &bob, query("todo", None, Since::START)).await;
    assert_eq!(own.len(), 40, "and once in bob's own log");
}

store_suite!(
    a_repeated_changeset_into_a_space_is_acknowledged_and_stores_nothing,
    an_import_into_a_space_the_importer_may_not_write_stores_nothing,
    members_of_a_space_see_it_and_others_do_not,
    only_owners_manage_members_and_a_space_keeps_an_owner,
    members_write_and_read_a_space_and_nobody_else_does,
    a_push_into_a_space_the_pusher_may_not_write_stores_nothing,
    pushes_and_membership_changes_are_announced_per_log,
);
