//! Notices of committed pushes, within one store and across instances.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::sync::Arc;

use common::{Fixture, end_of, insert, push, user};
use mana_sync_protocol::LogId;
use mana_sync_store::{ChangeNotice, NewChangeset, PushOutcome, StoreEvent, StoreOptions};

/// The next `Changed` event (skipping any `Resync`, which a relay announces
/// whenever it may have missed something).
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
    let first = f
        .push_todo(
            &alice,
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
    let laptop = f.push_todo(&alice, "laptop", &[insert("tasks", "5")]).await;
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
/// announced by every other store on the same database, from the moment
/// `open` returns (a server serves only once it hears the other
/// instances, so its first streams are not told to resync for nothing and
/// miss nothing).
async fn notices_reach_every_instance_from_the_start(options: StoreOptions) {
    let Some(database) = Fixture::postgres().await else {
        return;
    };
    let first = mana_sync_store::open(&database.url(), &options)
        .await
        .expect("opens");
    let second = mana_sync_store::open(&database.url(), &options)
        .await
        .expect("opens");
    let mut events = second.events();
    let pushed = push(
        &*first,
        &user("alice"),
        "todo",
        "phone",
        &[insert("tasks", "1")],
    )
    .await;
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.recv())
        .await
        .expect("an event in time")
        .expect("channel open");
    let StoreEvent::Changed(notice) = event else {
        panic!("the second store was already listening: its first event is the push, not a resync");
    };
    assert_eq!(
        (notice.log.as_str(), notice.app_id.as_str(), notice.last),
        ("alice", "todo", end_of(pushed).position())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_reach_every_instance_from_the_start_through_postgres() {
    notices_reach_every_instance_from_the_start(StoreOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_reach_every_instance_from_the_start_through_nats() {
    let Some(nats_url) = mana_sync_testkit::nats::shared().await else {
        return;
    };
    notices_reach_every_instance_from_the_start(StoreOptions {
        nats_url: Some(nats_url),
        ..StoreOptions::default()
    })
    .await;
}

store_suite!(committed_pushes_are_announced_and_nothing_else,);
