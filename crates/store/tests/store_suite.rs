//! One suite of store behaviours, run against SQLite and against Postgres
//! (as a role that is not a superuser, so row-level security applies).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::{Backend, Fixture, change, end_of, insert, push, query, read_all, user};
use mana_sync_protocol::{Change, Cursor, LogId, Since, UserId};
use mana_sync_store::{ChangeNotice, NewChangeset, PushOutcome, Store, StoreEvent, StoreOptions};

async fn reads_back_in_commit_order_with_ids_and_versions(f: Fixture) {
    let alice = user("alice");
    push(
        &*f.store,
        &alice,
        "todo",
        "d1",
        &[insert("tasks", "1"), insert("tasks", "2")],
    )
    .await;
    push(
        &*f.store,
        &alice,
        "todo",
        "d1",
        &[change(
            r#"{"table":"tasks","id":"1","op":"update","schemaVersion":2,
            "fields":{"title":{"value":"new","updatedAt":"2026-11-25T10:00:00.000Z"}}}"#,
        )],
    )
    .await;
    let last = push(
        &*f.store,
        &alice,
        "todo",
        "d1",
        &[change(
            r#"{"table":"tasks","id":"2","op":"delete","deletedAt":"2026-11-25T10:00:01.000Z"}"#,
        )],
    )
    .await;
    let page = f
        .store
        .changes_after(
            &alice,
            &query("todo", Some("tasks"), Since::Cursor(Cursor::START)),
        )
        .await
        .expect("read");
    let summary: Vec<(String, &str, u32)> = page
        .changes
        .iter()
        .map(|c| (c.record_id.clone(), c.op.as_str(), c.schema_version))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("1".into(), "insert", 1),
            ("2".into(), "insert", 1),
            ("1".into(), "update", 2),
            ("2".into(), "delete", 1)
        ]
    );
    let event_ids: HashSet<_> = page.changes.iter().map(|c| c.event_id).collect();
    assert_eq!(event_ids.len(), 4, "every change has its own event id");
    let update = &page.changes[2];
    let fields = update.fields.as_ref().expect("update has fields");
    assert_eq!(fields["title"].value.get(), r#""new""#);
    assert_eq!(fields["title"].at.as_str(), "2026-11-25T10:00:00.000Z");
    assert_eq!(
        page.changes[0].data.as_ref().map(|d| d.get()),
        Some(r#"{"id":"1","title":"t 1"}"#)
    );
    assert_eq!(
        page.changes[3].deleted_at.as_ref().map(|t| t.as_str()),
        Some("2026-11-25T10:00:01.000Z")
    );
    assert!(!page.has_more);
    assert_eq!(page.next, end_of(last));
    let positions: Vec<u64> = page.changes.iter().map(|c| c.seq).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase: {positions:?}"
    );
}

async fn a_device_never_reads_its_own_changes_but_moves_past_them(f: Fixture) {
    let alice = user("alice");
    push(
        &*f.store,
        &alice,
        "todo",
        "phone",
        &[insert("tasks", "from-phone")],
    )
    .await;
    push(
        &*f.store,
        &alice,
        "todo",
        "laptop",
        &[insert("tasks", "from-laptop")],
    )
    .await;
    let last = push(
        &*f.store,
        &alice,
        "todo",
        "phone",
        &[insert("tasks", "from-phone-2")],
    )
    .await;
    let mut q = query("todo", Some("tasks"), Since::Cursor(Cursor::START));
    q.exclude_client = Some("phone");
    let page = f.store.changes_after(&alice, &q).await.expect("read");
    let ids: Vec<_> = page.changes.iter().map(|c| c.record_id.as_str()).collect();
    assert_eq!(ids, ["from-laptop"]);
    assert_eq!(
        page.next,
        end_of(last),
        "cursor moves past the device's own changes"
    );
}

async fn pages_are_bounded_and_lose_nothing_at_their_edges(f: Fixture) {
    let alice = user("alice");
    let batch: Vec<Change> = (0..2500)
        .map(|i| insert("tasks", &format!("{i:05}")))
        .collect();
    let mut last = None;
    for chunk in batch.chunks(700) {
        last = Some(push(&*f.store, &alice, "todo", "d1", chunk).await);
    }
    let q = query("todo", Some("tasks"), Since::Cursor(Cursor::START));
    let first = f.store.changes_after(&alice, &q).await.expect("read");
    assert_eq!(first.changes.len(), 1000);
    assert!(first.has_more);
    let mut small = q;
    small.limit = 7;
    assert_eq!(
        f.store
            .changes_after(&alice, &small)
            .await
            .expect("read")
            .changes
            .len(),
        7
    );
    small.limit = 50_000;
    assert_eq!(
        f.store
            .changes_after(&alice, &small)
            .await
            .expect("read")
            .changes
            .len(),
        1000
    );
    let (ids, end) = read_all(&*f.store, &alice, q).await;
    let expected: Vec<String> = (0..2500).map(|i| format!("{i:05}")).collect();
    assert_eq!(ids, expected);
    assert_eq!(Some(end), last.map(end_of));
}

async fn a_repeated_changeset_is_stored_once(f: Fixture) {
    let alice = user("alice");
    let changes = [insert("tasks", "1"), insert("tasks", "2")];
    let set = NewChangeset {
        app_id: "todo",
        client_id: "d1",
        changeset_id: Some("cs-1"),
        changes: &changes,
    };
    assert!(matches!(
        f.store.push(&alice, set).await.expect("push"),
        PushOutcome::Stored { count: 2, .. }
    ));
    assert_eq!(
        f.store.push(&alice, set).await.expect("push"),
        PushOutcome::Duplicate
    );
    // The same id from another user is that user's own changeset.
    assert!(matches!(
        f.store.push(&user("bob"), set).await.expect("push"),
        PushOutcome::Stored { count: 2, .. }
    ));
    let (ids, _) = read_all(
        &*f.store,
        &alice,
        query("todo", None, Since::Cursor(Cursor::START)),
    )
    .await;
    assert_eq!(ids, ["1", "2"]);
}

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
    let (ids, _) = read_all(
        &*f.store,
        &alice,
        query("todo", None, Since::Cursor(Cursor::START)),
    )
    .await;
    assert_eq!(ids.len(), 200);
}

async fn users_apps_and_collections_are_kept_apart(f: Fixture) {
    let (alice, bob) = (user("alice"), user("bob"));
    push(
        &*f.store,
        &alice,
        "todo",
        "d1",
        &[insert("tasks", "a-task"), insert("lists", "a-list")],
    )
    .await;
    push(
        &*f.store,
        &alice,
        "notes",
        "d1",
        &[insert("notes", "a-note")],
    )
    .await;
    let bobs = push(&*f.store, &bob, "todo", "d2", &[insert("tasks", "b-task")]).await;
    let start = Since::Cursor(Cursor::START);
    let (ids, _) = read_all(&*f.store, &alice, query("todo", Some("tasks"), start)).await;
    assert_eq!(ids, ["a-task"]);
    let (ids, _) = read_all(&*f.store, &alice, query("todo", None, start)).await;
    assert_eq!(ids, ["a-task", "a-list"]);
    let (ids, _) = read_all(&*f.store, &alice, query("notes", None, start)).await;
    assert_eq!(ids, ["a-note"]);
    let (ids, end) = read_all(&*f.store, &bob, query("todo", None, start)).await;
    assert_eq!(ids, ["b-task"]);
    assert_eq!(end, end_of(bobs), "bob's log is his own");
    let (ids, _) = read_all(&*f.store, &user("carol"), query("todo", None, start)).await;
    assert!(ids.is_empty());
}

async fn legacy_timestamps_resume_after_that_instant(f: Fixture) {
    let alice = user("alice");
    push(&*f.store, &alice, "todo", "d1", &[insert("tasks", "old")]).await;
    let page = f
        .store
        .changes_after(&alice, &query("todo", None, Since::Cursor(Cursor::START)))
        .await
        .expect("read");
    let stored_at = page.changes[0].created_at;
    let newest = push(&*f.store, &alice, "todo", "d1", &[insert("tasks", "new")]).await;
    let (ids, _) = read_all(
        &*f.store,
        &alice,
        query(
            "todo",
            None,
            Since::parse("1970-01-01T00:00:00.000Z").expect("ok"),
        ),
    )
    .await;
    assert_eq!(ids, ["old", "new"]);
    let (ids, _) = read_all(
        &*f.store,
        &alice,
        query(
            "todo",
            None,
            Since::Cursor(Cursor::from_instant(
                stored_at - time::Duration::milliseconds(1),
            )),
        ),
    )
    .await;
    assert_eq!(ids, ["old", "new"]);
    let (ids, end) = read_all(
        &*f.store,
        &alice,
        query(
            "todo",
            None,
            Since::Cursor(Cursor::from_instant(
                time::OffsetDateTime::now_utc() + time::Duration::hours(1),
            )),
        ),
    )
    .await;
    assert!(ids.is_empty());
    assert_eq!(
        end,
        end_of(newest),
        "a future timestamp resumes at the newest change"
    );
}

async fn positions_are_the_server_clock_in_commit_order(f: Fixture) {
    let alice = user("alice");
    let before = Cursor::from_instant(time::OffsetDateTime::now_utc() - time::Duration::seconds(5));
    let mut cursors = Vec::new();
    for i in 0..20 {
        let outcome = push(
            &*f.store,
            &alice,
            "todo",
            "d1",
            &[
                insert("tasks", &format!("{i}")),
                insert("tasks", &format!("{i}b")),
            ],
        )
        .await;
        cursors.push(end_of(outcome));
    }
    let after = Cursor::from_instant(time::OffsetDateTime::now_utc() + time::Duration::seconds(5));
    for pair in cursors.windows(2) {
        assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        assert!(
            pair[0].to_string() < pair[1].to_string(),
            "string order is commit order"
        );
    }
    assert!(
        cursors.iter().all(|c| before < *c && *c < after),
        "positions are close to the clock: {before} < {cursors:?} < {after}"
    );
    // Every change sits at its own position, inside its push's range.
    let (_, end) = read_all(&*f.store, &alice, query("todo", None, Since::START)).await;
    assert_eq!(Some(&end), cursors.last());
    let page = f
        .store
        .changes_after(&alice, &query("todo", None, Since::START))
        .await
        .expect("read");
    let positions: HashSet<u64> = page.changes.iter().map(|c| c.seq).collect();
    assert_eq!(positions.len(), 40);
}

async fn actor_is_kept_verbatim_and_absent_stays_absent(f: Fixture) {
    let alice = user("alice");
    let actor = r#"{"kind":"ai","model":"x-1","nested":{"b":2,"a":[1,2.50,"\u0000"]}}"#;
    push(
        &*f.store,
        &alice,
        "todo",
        "d1",
        &[
            change(&format!(
                r#"{{"table":"t","id":"1","op":"insert","data":{{}},"actor":{actor}}}"#
            )),
            insert("t", "2"),
        ],
    )
    .await;
    let page = f
        .store
        .changes_after(&alice, &query("todo", None, Since::Cursor(Cursor::START)))
        .await
        .expect("read");
    assert_eq!(page.changes[0].actor.as_ref().map(|a| a.get()), Some(actor));
    assert!(page.changes[1].actor.is_none());
}

async fn a_cursor_beyond_the_log_comes_back_to_its_end(f: Fixture) {
    let alice = user("alice");
    let stored = push(&*f.store, &alice, "todo", "d1", &[insert("tasks", "1")]).await;
    let page = f
        .store
        .changes_after(&alice, &query("todo", None, Since::Cursor(Cursor::MAX)))
        .await
        .expect("read");
    assert!(page.changes.is_empty());
    assert_eq!(page.next, end_of(stored));
}

async fn a_failing_changeset_stores_nothing(f: Fixture) {
    let alice = user("alice");
    // Make the database itself refuse one row, after others of the same
    // changeset were written: the transaction must take them all back.
    f.admin_sql(
        "CREATE TRIGGER poison BEFORE INSERT ON mana_changes WHEN NEW.record_id = 'poison'
         BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'poisoned'; END $$;
         CREATE TRIGGER poison BEFORE INSERT ON mana_changes FOR EACH ROW
           WHEN (NEW.record_id = 'poison') EXECUTE FUNCTION poison();",
    )
    .await;
    let changes = [
        insert("tasks", "1"),
        insert("tasks", "2"),
        insert("tasks", "poison"),
    ];
    let result = f
        .store
        .push(
            &alice,
            NewChangeset {
                app_id: "todo",
                client_id: "d1",
                changeset_id: Some("cs"),
                changes: &changes,
            },
        )
        .await;
    assert!(result.is_err());
    let (ids, end) = read_all(
        &*f.store,
        &alice,
        query("todo", None, Since::Cursor(Cursor::START)),
    )
    .await;
    assert!(
        ids.is_empty(),
        "nothing of the failed changeset is visible: {ids:?}"
    );
    assert_eq!(end, Cursor::START, "the counter did not move");
    // The changeset id was not consumed either: a retry stores it.
    let retry = [insert("tasks", "1")];
    let outcome = f
        .store
        .push(
            &alice,
            NewChangeset {
                app_id: "todo",
                client_id: "d1",
                changeset_id: Some("cs"),
                changes: &retry,
            },
        )
        .await
        .expect("push");
    assert!(
        matches!(outcome, PushOutcome::Stored { count: 1, last } if last > Cursor::START),
        "{outcome:?}"
    );
}

async fn reopening_keeps_every_change_and_migrations_are_idempotent(f: Fixture) {
    let alice = user("alice");
    push(
        &*f.store,
        &alice,
        "todo",
        "d1",
        &[insert("tasks", "1"), insert("tasks", "2")],
    )
    .await;
    let url = f.url();
    for _ in 0..2 {
        let reopened = mana_sync_store::open(&url, &StoreOptions::default())
            .await
            .expect("reopens");
        let (ids, _) = read_all(
            &*reopened,
            &alice,
            query("todo", None, Since::Cursor(Cursor::START)),
        )
        .await;
        assert_eq!(ids, ["1", "2"]);
    }
}

async fn settings_are_created_once(f: Fixture) {
    let first = f
        .store
        .setting_or_insert("k", &|| "one".into())
        .await
        .expect("setting");
    let second = f
        .store
        .setting_or_insert("k", &|| "two".into())
        .await
        .expect("setting");
    assert_eq!((first.as_str(), second.as_str()), ("one", "one"));
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
    f.admin_sql(
        "CREATE TRIGGER poison BEFORE INSERT ON mana_changes WHEN NEW.record_id = 'poison'
         BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'poisoned'; END $$;
         CREATE TRIGGER poison BEFORE INSERT ON mana_changes FOR EACH ROW
           WHEN (NEW.record_id = 'poison') EXECUTE FUNCTION poison();",
    )
    .await;
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

fn imported(n: usize, app: &str) -> mana_sync_protocol::backup::ImportedChange {
    mana_sync_protocol::backup::ImportedChange {
        event_id: uuid::Uuid::from_u128(n as u128 + 1),
        app_id: app.to_owned(),
        client_id: "restored-device".to_owned(),
        created_at: time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(n as i64),
        change: insert("tasks", &format!("r{n:05}")),
    }
}

fn source(
    items: Vec<Result<mana_sync_protocol::backup::ImportedChange, mana_sync_store::SourceError>>,
) -> mana_sync_store::ImportSource {
    Box::pin(futures::stream::iter(items))
}

async fn exported_ids(store: &dyn Store, user: &UserId) -> Vec<(String, String)> {
    use futures::StreamExt as _;
    let mut batches = store.export(user).await.expect("export starts");
    let mut ids = Vec::new();
    while let Some(batch) = batches.next().await {
        for change in batch.expect("batch") {
            ids.push((change.app_id, change.record_id));
        }
    }
    ids
}

async fn export_streams_every_change_of_the_user_oldest_first(f: Fixture) {
    let alice = user("alice");
    for chunk in 0..3 {
        let changes: Vec<Change> = (0..700)
            .map(|i| insert("tasks", &format!("{:04}", chunk * 700 + i)))
            .collect();
        push(
            &*f.store,
            &alice,
            if chunk == 1 { "notes" } else { "todo" },
            "d1",
            &changes,
        )
        .await;
    }
    push(
        &*f.store,
        &user("bob"),
        "todo",
        "d1",
        &[insert("tasks", "bobs")],
    )
    .await;
    let ids = exported_ids(&*f.store, &alice).await;
    assert_eq!(ids.len(), 2100);
    let expected: Vec<String> = (0..2100).map(|i| format!("{i:04}")).collect();
    assert_eq!(
        ids.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(ids[700].0, "notes");
    assert!(exported_ids(&*f.store, &user("carol")).await.is_empty());
}

async fn import_is_all_or_nothing_and_skips_known_event_ids(f: Fixture) {
    let alice = user("alice");
    // A source that fails after more than two batches were written.
    let mut failing: Vec<_> = (0..2500).map(|n| Ok(imported(n, "todo"))).collect();
    failing.push(Err("line 2501: broken".into()));
    let error = f
        .store
        .import(&alice, source(failing))
        .await
        .expect_err("refused");
    assert!(error.to_string().contains("line 2501"), "{error}");
    assert!(
        exported_ids(&*f.store, &alice).await.is_empty(),
        "nothing of it is stored"
    );
    let (_, end) = read_all(
        &*f.store,
        &alice,
        query("todo", None, Since::Cursor(Cursor::START)),
    )
    .await;
    assert_eq!(end, Cursor::START, "the counter did not move");

    let outcome = f
        .store
        .import(
            &alice,
            source((0..2500).map(|n| Ok(imported(n, "todo"))).collect()),
        )
        .await
        .expect("imports");
    assert_eq!((outcome.imported, outcome.skipped), (2500, 0));
    let mut again: Vec<_> = (2000..3000).map(|n| Ok(imported(n, "todo"))).collect();
    again.push(Ok(imported(2999, "todo")));
    let outcome = f
        .store
        .import(&alice, source(again))
        .await
        .expect("imports");
    assert_eq!(
        (outcome.imported, outcome.skipped),
        (500, 501),
        "known and repeated event ids are skipped"
    );
    let (ids, _) = read_all(
        &*f.store,
        &alice,
        query("todo", Some("tasks"), Since::Cursor(Cursor::START)),
    )
    .await;
    assert_eq!(
        ids,
        (0..3000).map(|n| format!("r{n:05}")).collect::<Vec<_>>()
    );
    // Another user importing the same events gets their own copies.
    let outcome = f
        .store
        .import(
            &user("bob"),
            source((0..10).map(|n| Ok(imported(n, "todo"))).collect()),
        )
        .await
        .expect("imports");
    assert_eq!(outcome.imported, 10);
}

/// Many pushes at once (on SQLite they are committed in groups): a push the
/// database refuses fails alone, its neighbours are stored, and a changeset
/// sent twice at once is stored once.
async fn concurrent_pushes_fail_alone_and_repeat_once(f: Fixture) {
    f.admin_sql(
        "CREATE TRIGGER poison BEFORE INSERT ON mana_changes WHEN NEW.record_id LIKE 'poison%'
         BEGIN SELECT RAISE(ABORT, 'poisoned'); END;",
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'poisoned'; END $$;
         CREATE TRIGGER poison BEFORE INSERT ON mana_changes FOR EACH ROW
           WHEN (NEW.record_id LIKE 'poison%') EXECUTE FUNCTION poison();",
    )
    .await;
    let alice = user("alice");
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
        let (store, alice, changes, changeset_id) = (&f.store, &alice, &changes[n], &ids[n]);
        async move {
            let result = store
                .push(
                    alice,
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
    let (ids, _) = read_all(
        &*f.store,
        &alice,
        query("todo", None, Since::Cursor(Cursor::START)),
    )
    .await;
    let mut expected: Vec<String> = stored.iter().map(|n| format!("ok-{n}")).collect();
    let mut got = ids.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "exactly the accepted pushes are stored");
    assert!(ids.iter().all(|id| !id.starts_with("poison")));
    // Each changeset id was stored by exactly one of its two pushes: a
    // refused one leaves the id free for the other.
    assert_eq!(by_changeset.len(), 30);
    assert_eq!(stored.len(), 30);
    assert!(stored.iter().all(|n| n % 10 != 4), "{stored:?}");
}

macro_rules! store_suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(super::Fixture::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let Some(fixture) = super::Fixture::postgres().await else { return };
                    super::$test(fixture).await;
                }
            )*
        }
    };
}

store_suite!(
    reads_back_in_commit_order_with_ids_and_versions,
    a_device_never_reads_its_own_changes_but_moves_past_them,
    pages_are_bounded_and_lose_nothing_at_their_edges,
    a_repeated_changeset_is_stored_once,
    concurrent_duplicates_are_stored_once,
    users_apps_and_collections_are_kept_apart,
    legacy_timestamps_resume_after_that_instant,
    positions_are_the_server_clock_in_commit_order,
    actor_is_kept_verbatim_and_absent_stays_absent,
    a_cursor_beyond_the_log_comes_back_to_its_end,
    a_failing_changeset_stores_nothing,
    reopening_keeps_every_change_and_migrations_are_idempotent,
    settings_are_created_once,
    a_reader_following_the_cursor_sees_every_concurrent_change_once,
    committed_pushes_are_announced_and_nothing_else,
    export_streams_every_change_of_the_user_oldest_first,
    import_is_all_or_nothing_and_skips_known_event_ids,
    concurrent_pushes_fail_alone_and_repeat_once,
);

/// SQLite commits the pushes waiting for its writer together: many
/// concurrent pushes take fewer transactions than pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_commits_waiting_pushes_together() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(
        mana_sync_store::sqlite::SqliteStore::open(
            &dir.path().join("sync.db").display().to_string(),
            &StoreOptions::default(),
        )
        .await
        .expect("opens"),
    );
    let before = store.push_commits();
    let pushes: Vec<_> = (0..200)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let changes = [insert("tasks", &format!("t{n}"))];
                let user = user(&format!("user-{}", n % 7));
                store
                    .push(
                        &user,
                        NewChangeset {
                            app_id: "todo",
                            client_id: "d1",
                            changeset_id: Some(&format!("cs-{n}")),
                            changes: &changes,
                        },
                    )
                    .await
                    .expect("stored")
            })
        })
        .collect();
    for push in pushes {
        assert!(matches!(
            push.await.expect("joins"),
            PushOutcome::Stored { count: 1, .. }
        ));
    }
    let commits = store.push_commits() - before;
    assert!(
        commits < 200,
        "200 concurrent pushes took {commits} transactions"
    );
    let mut total = 0;
    for u in 0..7 {
        let (ids, _) = read_all(
            &*store,
            &user(&format!("user-{u}")),
            query("todo", None, Since::Cursor(Cursor::START)),
        )
        .await;
        total += ids.len();
    }
    assert_eq!(total, 200);
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
