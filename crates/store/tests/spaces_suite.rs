//! Shared spaces on both databases: spaces and members, who may change them,
//! and a space always keeping an owner.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use common::{Fixture, user};
use mana_sync_store::{MemberChange, MembershipError, Role, SpaceError};

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
    f.store
        .change_membership(
            &ann,
            &space.space_id,
            &MemberChange::Set {
                user: bob.clone(),
                role: Role::Viewer,
            },
        )
        .await
        .expect("the owner adds bob");
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
    let space = f
        .store
        .create_space(&ann, "Backlog")
        .await
        .expect("creates")
        .space_id;
    let set = |who: &str, role| MemberChange::Set {
        user: user(who),
        role,
    };
    f.store
        .change_membership(&ann, &space, &set("bob", Role::Editor))
        .await
        .expect("adds");
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
    f.store
        .change_membership(&ann, &space, &set("bob", Role::Owner))
        .await
        .expect("promotes");
    f.store
        .change_membership(&ann, &space, &ann_leaves)
        .await
        .expect("leaves");
    assert!(f.store.spaces_of(&ann).await.expect("lists").is_empty());
    f.store
        .change_membership(&bob, &space, &set("eve", Role::Editor))
        .await
        .expect("adds");
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

store_suite!(
    members_of_a_space_see_it_and_others_do_not,
    only_owners_manage_members_and_a_space_keeps_an_owner,
);
