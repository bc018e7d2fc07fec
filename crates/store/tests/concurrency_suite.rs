//! Store behaviours under concurrent pushes and reads, run against SQLite
//! and against Postgres.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{
    Backend, Fixture, hold_counter_row, insert, push, query, read_all, until_waiting_on_locks, user,
};
use mana_sync_protocol::{Change, Cursor, Since, UserId};
use mana_sync_store::{NewChangeset, PushOutcome, Store, StoreOptions};

async fn concurrent_duplicates_are_stored_once(f: Fixture) {
    let alice = user("alice");
    let changes: Vec<Change> = (0..200).map(|i| insert("tasks", &i.to_string())).collect();
    let changes = Arc::new(changes);
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let store = f.store.clone();
            let changes = changes.clone();
            let alice = alice.clone();
            tokio::spawn(async move {
                store
                    .push(
                        &alice,
                        NewChangeset {
                            app_id: "todo",
                            client_id: "d1",
                            changeset_id: Some("same"),
                            changes: &changes,
                        },
                    )
                    .await
                    .expect("push")
            })
        })
        .collect();
    let mut stored = 0;
    for task in tasks {
        if let PushOutcome::Stored { .. } = task.await.expect("joins") {
            stored += 1;
        }
    }
    assert_eq!(stored, 1);
    let (ids, _) = f.read_todo(&alice, Since::Cursor(Cursor::START)).await;
    assert_eq!(ids.len(), 200);
}

/// Six devices of one user push concurrently while a seventh follows the
/// cursor: it must see every change exactly once. A timestamp cursor fails
/// this when a transaction commits after a later-started one.
async fn a_reader_following_the_cursor_sees_every_concurrent_change_once(f: Fixture) {
    const WRITERS: usize = 6;
    const BATCHES: usize = 40;
    const PER_BATCH: usize = 25;
    let alice = user("alice");
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = f.store.clone();
            let alice = alice.clone();
            tokio::spawn(async move {
                for b in 0..BATCHES {
                    let changes: Vec<Change> = (0..PER_BATCH)
                        .map(|i| insert("tasks", &format!("w{w}-b{b}-i{i}")))
                        .collect();
                    push(&*store, &alice, "todo", &format!("writer-{w}"), &changes).await;
                }
            })
        })
        .collect();
    let writers_done = tokio::spawn(async move {
        for writer in writers {
            writer.await.expect("writer finished");
        }
    });
    let total = WRITERS * BATCHES * PER_BATCH;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut since = Since::Cursor(Cursor::START);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reader saw {} of {total}",
            seen.len()
        );
        // Decide before reading: if the writers were done before this read
        // and it finds nothing, the reader has caught up for good.
        let finished = writers_done.is_finished();
        let mut q = query("todo", Some("tasks"), since);
        q.exclude_client = Some("reader");
        let page = f.store.changes_after(&alice, &q).await.expect("read");
        for change in &page.changes {
            *seen.entry(change.record_id.clone()).or_default() += 1;
        }
        since = Since::Cursor(page.next);
        if page.changes.is_empty() {
            if finished {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "changes seen twice: {repeated:?}");
    assert_eq!(seen.len(), total, "changes the reader never saw");
}

/// Many pushes of several users at once (committed in groups): a push the
/// database refuses fails alone, its neighbours are stored, and a changeset
/// sent twice at once is stored once.
async fn concurrent_pushes_fail_alone_and_repeat_once(f: Fixture) {
    f.refuse_records_like("poison%").await;
    // Both copies of a changeset come from the same user.
    let users: Vec<UserId> = (0..6).map(|u| user(&format!("user-{u}"))).collect();
    let user_of = |n: usize| &users[(n / 2) % users.len()];
    let changes: Vec<Vec<Change>> = (0..60)
        .map(|n| {
            // Every tenth push is refused by the database half-way; every
            // changeset id is sent twice.
            if n % 10 == 4 {
                vec![
                    insert("tasks", &format!("ok-{n}")),
                    insert("tasks", &format!("poison-{n}")),
                ]
            } else {
                vec![insert("tasks", &format!("ok-{n}"))]
            }
        })
        .collect();
    let ids: Vec<String> = (0..60).map(|n| format!("cs-{}", n / 2)).collect();
    let pushes = futures::future::join_all((0..60).map(|n| {
        let (store, pusher, changes, changeset_id) = (&f.store, user_of(n), &changes[n], &ids[n]);
        async move {
            let result = store
                .push(
                    pusher,
                    NewChangeset {
                        app_id: "todo",
                        client_id: "d1",
                        changeset_id: Some(changeset_id),
                        changes,
                    },
                )
                .await;
            (n, result)
        }
    }));
    // On SQLite, another connection holds the write lock until every push
    // has been handed to the writer (join_all polls each once first): they
    // all wait for it together and are committed as one group or two.
    let blocker = match &f.backend {
        Backend::Sqlite { path, .. } => {
            let conn = rusqlite::Connection::open(path).expect("opens");
            conn.execute_batch("BEGIN IMMEDIATE").expect("locks");
            Some(conn)
        }
        Backend::Postgres(_) => None,
    };
    let (results, ()) = futures::join!(pushes, async move {
        if let Some(conn) = blocker {
            conn.execute_batch("COMMIT").expect("unlocks");
        }
    });
    let mut stored = Vec::new();
    let mut by_changeset: HashMap<usize, Vec<bool>> = HashMap::new();
    for (n, result) in results {
        match result {
            Ok(PushOutcome::Stored { .. }) => {
                stored.push(n);
                by_changeset.entry(n / 2).or_default().push(true);
            }
            Ok(PushOutcome::Duplicate) => by_changeset.entry(n / 2).or_default().push(false),
            Err(error) => {
                assert_eq!(n % 10, 4, "push {n} failed: {error}");
                assert!(error.to_string().contains("poison"), "{error}");
            }
        }
    }
    for (changeset, outcomes) in &by_changeset {
        assert_eq!(
            outcomes.iter().filter(|stored| **stored).count(),
            1,
            "changeset {changeset}: {outcomes:?}"
        );
    }
    for pusher in &users {
        let (ids, _) = f.read_todo(pusher, Since::Cursor(Cursor::START)).await;
        let mut expected: Vec<String> = stored
            .iter()
            .filter(|n| user_of(**n) == pusher)
            .map(|n| format!("ok-{n}"))
            .collect();
        let mut got = ids.clone();
        expected.sort();
        got.sort();
        assert_eq!(
            got, expected,
            "exactly {pusher}'s accepted pushes are stored"
        );
        assert!(ids.iter().all(|id| !id.starts_with("poison")));
    }
    // Each changeset id was stored by exactly one of its two pushes: a
    // refused one leaves the id free for the other.
    assert_eq!(by_changeset.len(), 30);
    assert_eq!(stored.len(), 30);
    assert!(stored.iter().all(|n| n % 10 != 4), "{stored:?}");
}

/// Each database commits the pushes waiting together: many concurrent
/// pushes of several users take fewer transactions than pushes, and each is
/// stored once in its user's log and answered with the other devices'
/// changes.
async fn waiting_pushes_commit_together(store: Arc<dyn Store>) {
    let before = store.push_transactions();
    let pushes: Vec<_> = (0..200)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let changes = [insert("tasks", &format!("t{n}"))];
                let user = user(&format!("user-{}", n % 7));
                let device = format!("d{n}");
                let mut reply = query("todo", None, Since::Cursor(Cursor::START));
                reply.exclude_client = Some(&device);
                let (outcome, page) = store
                    .push_and_read(
                        &user,
                        NewChangeset {
                            app_id: "todo",
                            client_id: &device,
                            changeset_id: Some(&format!("cs-{n}")),
                            changes: &changes,
                        },
                        &reply,
                    )
                    .await
                    .expect("stored");
                let own = format!("t{n}");
                assert!(page.changes.iter().all(|c| c.record_id != own));
                assert!(
                    page.changes
                        .iter()
                        .all(|c| c.record_id[1..].parse::<usize>().map(|m| m % 7) == Ok(n % 7)),
                    "a reply holds its user's changes only"
                );
                outcome
            })
        })
        .collect();
    for push in pushes {
        assert!(matches!(
            push.await.expect("joins"),
            PushOutcome::Stored { count: 1, .. }
        ));
    }
    let transactions = store.push_transactions() - before;
    assert!(
        (1..200).contains(&transactions),
        "200 concurrent pushes took {transactions} group transactions"
    );
    for u in 0..7 {
        let (ids, _) = read_all(
            &*store,
            &user(&format!("user-{u}")),
            query("todo", None, Since::Cursor(Cursor::START)),
        )
        .await;
        let mut expected: Vec<String> = (0..200)
            .filter(|n| n % 7 == u)
            .map(|n| format!("t{n}"))
            .collect();
        let mut got = ids;
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "user-{u}'s pushes, each once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_commits_waiting_pushes_together() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = mana_sync_store::sqlite::SqliteStore::open(
        &dir.path().join("sync.db").display().to_string(),
        &StoreOptions::default(),
    )
    .await
    .expect("opens");
    waiting_pushes_commit_together(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_commits_waiting_pushes_together() {
    let Some(db) = mana_sync_testkit::pg::TestDatabase::create().await else {
        return;
    };
    let store = mana_sync_store::postgres::PostgresStore::open(&db.url(), &StoreOptions::default())
        .await
        .expect("opens");
    waiting_pushes_commit_together(Arc::new(store)).await;
}

/// A push that waits on a lock (here another transaction holds its user's
/// counter row) holds up no other user's push for long: Postgres stores one
/// group at a time while it keeps up, and starts a second when the first
/// has been in flight too long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_push_waiting_on_a_lock_does_not_hold_up_other_users() {
    let Some(db) = mana_sync_testkit::pg::TestDatabase::create().await else {
        return;
    };
    let store = Arc::new(
        mana_sync_store::postgres::PostgresStore::open(&db.url(), &StoreOptions::default())
            .await
            .expect("opens"),
    );
    let push_for = |name: &'static str| {
        let store = store.clone();
        tokio::spawn(async move {
            push(&*store, &user(name), "todo", "d1", &[insert("tasks", name)]).await
        })
    };
    push_for("alice").await.expect("joins");
    let admin = hold_counter_row(&db, "alice").await;
    let alice = push_for("alice");
    until_waiting_on_locks(&db, &db.admin().await, 1).await;

    tokio::time::timeout(Duration::from_secs(10), push_for("bob"))
        .await
        .expect("bob's push is answered while alice's counter is locked")
        .expect("joins");
    assert!(!alice.is_finished(), "alice's push waits for the lock");
    admin.batch_execute("COMMIT").await.expect("unlocks");
    alice.await.expect("joins");
}

/// The reply to a push: the other devices' changes after the device's
/// cursor, all of them (up to a page) whether few or many wait, none of its
/// own, ending where the device's next read resumes.
async fn a_push_reply_holds_every_other_change_after_the_cursor(f: Fixture) {
    let alice = user("alice");
    let laptop_changes: Vec<Change> = (0..150)
        .map(|i| insert("tasks", &format!("l{i}")))
        .collect();
    push(&*f.store, &alice, "todo", "laptop", &laptop_changes[..75]).await;
    push(&*f.store, &alice, "todo", "laptop", &laptop_changes[75..]).await;
    let reply_to_phone = |since| {
        let mut q = query("todo", None, since);
        q.exclude_client = Some("phone");
        q
    };
    let ids = |page: &mana_sync_store::ChangePage| -> Vec<String> {
        page.changes.iter().map(|c| c.record_id.clone()).collect()
    };
    let set = |changes| NewChangeset {
        app_id: "todo",
        client_id: "phone",
        changeset_id: None,
        changes,
    };
    let mine = [insert("tasks", "p1")];
    let (_, page) = f
        .store
        .push_and_read(
            &alice,
            set(&mine),
            &reply_to_phone(Since::Cursor(Cursor::START)),
        )
        .await
        .expect("push");
    let expected: Vec<String> = (0..150).map(|i| format!("l{i}")).collect();
    assert_eq!(
        ids(&page),
        expected,
        "a long reply is complete and in order"
    );
    assert!(!page.has_more);
    push(
        &*f.store,
        &alice,
        "todo",
        "laptop",
        &[insert("tasks", "l150"), insert("tasks", "l151")],
    )
    .await;
    let mine = [insert("tasks", "p2")];
    let (outcome, short) = f
        .store
        .push_and_read(
            &alice,
            set(&mine),
            &reply_to_phone(Since::Cursor(page.next)),
        )
        .await
        .expect("push");
    assert_eq!(
        ids(&short),
        ["l150", "l151"],
        "a short reply holds what came after the cursor"
    );
    assert!(!short.has_more);
    let PushOutcome::Stored { last, .. } = outcome else {
        panic!("stored")
    };
    assert_eq!(short.next, last, "the reply ends at the device's own push");
}

/// Devices pushing at once (committed together on SQLite), each following
/// only its push replies and then one last read: each sees every other
/// device's change exactly once.
async fn devices_following_their_push_replies_see_every_other_change_once(f: Fixture) {
    const DEVICES: usize = 4;
    const PUSHES: usize = 40;
    let alice = user("alice");
    let devices: Vec<_> = (0..DEVICES)
        .map(|d| {
            let store = f.store.clone();
            let alice = alice.clone();
            tokio::spawn(async move {
                let client = format!("d{d}");
                let mut seen: Vec<String> = Vec::new();
                let mut since = Since::Cursor(Cursor::START);
                for p in 0..PUSHES {
                    let changes = [
                        insert("tasks", &format!("d{d}-p{p}-a")),
                        insert("tasks", &format!("d{d}-p{p}-b")),
                    ];
                    let set = NewChangeset {
                        app_id: "todo",
                        client_id: &client,
                        changeset_id: None,
                        changes: &changes,
                    };
                    let mut q = query("todo", None, since);
                    q.exclude_client = Some(&client);
                    let (_, mut page) = store.push_and_read(&alice, set, &q).await.expect("push");
                    loop {
                        seen.extend(page.changes.iter().map(|c| c.record_id.clone()));
                        since = Since::Cursor(page.next);
                        if !page.has_more {
                            break;
                        }
                        q.since = since;
                        page = store.changes_after(&alice, &q).await.expect("read");
                    }
                }
                (client, seen, since)
            })
        })
        .collect();
    let mut followed = Vec::new();
    for device in devices {
        followed.push(device.await.expect("device finished"));
    }
    for (client, mut seen, since) in followed {
        let mut q = query("todo", None, since);
        q.exclude_client = Some(&client);
        let (rest, _) = read_all(&*f.store, &alice, q).await;
        seen.extend(rest);
        let mut expected: Vec<String> = (0..DEVICES)
            .filter(|d| format!("d{d}") != client)
            .flat_map(|d| {
                (0..PUSHES).flat_map(move |p| [format!("d{d}-p{p}-a"), format!("d{d}-p{p}-b")])
            })
            .collect();
        expected.sort();
        seen.sort();
        assert_eq!(seen, expected, "{client} saw every other change once");
    }
}

store_suite!(
    a_push_reply_holds_every_other_change_after_the_cursor,
    devices_following_their_push_replies_see_every_other_change_once,
    concurrent_duplicates_are_stored_once,
    a_reader_following_the_cursor_sees_every_concurrent_change_once,
    concurrent_pushes_fail_alone_and_repeat_once,
);
