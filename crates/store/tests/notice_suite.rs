//! Notices of committed pushes, within one store and across instances.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::sync::Arc;

use common::{Fixture, end_of, insert, push, user};
use mana_sync_protocol::{Cursor, LogId};
use mana_sync_store::{ChangeNotice, NewChangeset, PushOutcome, StoreEvent, StoreOptions};

/// The next `Changed` event (skipping the `Resync` a Postgres listener
/// announces when it starts listening).
async fn next_notice(
    events: &mut tokio::sync::broadcast::Receiver<StoreEvent>,
) -> Arc<ChangeNotice> {
    loop {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.recv())
            .await
            .expect("a notice in time")
            .expect("channel open");
        if let StoreEvent::Changed(notice) = event {
            return notice;
        }
    }
}

async fn committed_pushes_are_announced_and_nothing_else(f: Fixture) {
    let alice = user("alice");
    let mut events = f.store.events();
    let first = push(
        &*f.store,
        &alice,
        "todo",
        "phone",
        &[
            insert("tasks", "1"),
            insert("lists", "2"),
            insert("tasks", "3"),
        ],
    )
    .await;
    let notice = next_notice(&mut events).await;
    assert_eq!(notice.log, LogId::of_user(&alice));
    assert_eq!(notice.app_id, "todo");
    assert_eq!(
        notice.tables.as_deref(),
        Some(&["tasks".to_owned(), "lists".to_owned()][..])
    );
    assert_eq!(
        (notice.after, notice.last),
        (0, end_of(first).position()),
        "the user's first push continues from nothing"
    );
    assert_eq!(notice.client_id, "phone");
    // A refused changeset and a duplicate announce nothing; the next real
    // push is the next notice.
    f.refuse_records_like("poison").await;
    let poisoned = [insert("tasks", "poison")];
    let set = NewChangeset {
        app_id: "todo",
        client_id: "phone",
        changeset_id: None,
        changes: &poisoned,
    };
    assert!(f.store.push(&alice, set).await.is_err());
    let once = [insert("tasks", "4")];
    let set = NewChangeset {
        app_id: "todo",
        client_id: "phone",
        changeset_id: Some("cs"),
        changes: &once,
    };
    let once = f.store.push(&alice, set).await.expect("push");
    assert_eq!(
        f.store.push(&alice, set).await.expect("push"),
        PushOutcome::Duplicate
    );
    let laptop = push(&*f.store, &alice, "todo", "laptop", &[insert("tasks", "5")]).await;
    let notice = next_notice(&mut events).await;
    assert_eq!(
        (notice.after, notice.last, notice.client_id.as_str()),
        (end_of(first).position(), end_of(once).position(), "phone")
    );
    let notice = next_notice(&mut events).await;
    assert_eq!(
        (notice.after, notice.last, notice.client_id.as_str()),
        (end_of(once).position(), end_of(laptop).position(), "laptop")
    );
}

/// On Postgres, notices cross instances: a push through one store is
/// announced by every other store on the same database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notices_reach_every_instance() {
    let Some(first) = Fixture::postgres().await else {
        return;
    };
    let second = mana_sync_store::open(&first.url(), &StoreOptions::default())
        .await
        .expect("opens");
    let mut events = second.events();
    // The second store may not be listening yet when the first push commits
    // (its listener connects in the background); push until one is announced.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut pushed = 0;
    let notice = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notice crossed instances"
        );
        push(
            &*first.store,
            &user("alice"),
            "todo",
            "phone",
            &[insert("tasks", "1")],
        )
        .await;
        pushed += 1;
        let wait = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            next_notice(&mut events),
        )
        .await;
        if let Ok(notice) = wait {
            break notice;
        }
    };
    assert_eq!(
        (notice.log.as_str(), notice.app_id.as_str()),
        ("alice", "todo")
    );
    assert!(pushed >= 1 && notice.last > Cursor::START.position());
}

store_suite!(committed_pushes_are_announced_and_nothing_else,);
