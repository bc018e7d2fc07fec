//! One suite of store behaviours, run against SQLite and against Postgres
//! (as a role that is not a superuser, so row-level security applies).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::collections::HashSet;

use common::{Fixture, change, end_of, insert, push, query, read_all, user};
use mana_sync_protocol::{Change, Cursor, Since};
use mana_sync_store::{NewChangeset, PushOutcome, StoreOptions};

async fn reads_back_in_commit_order_with_ids_and_versions(f: Fixture) {
    let alice = user("alice");
    f.push_todo(&alice, "d1", &[insert("tasks", "1"), insert("tasks", "2")])
        .await;
    f.push_todo(
        &alice,
        "d1",
        &[change(
            r#"{"table":"tasks","id":"1","op":"update","schemaVersion":2,
            "fields":{"title":{"value":"new","updatedAt":"2026-11-25T10:00:00.000Z"}}}"#,
        )],
    )
    .await;
    let last = f.push_todo(&alice, "d1", &[change(
            r#"{"table":"tasks","id":"2","op":"delete","deletedAt":"2026-11-25T10:00:01.000Z"}"#,
        )])
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
    f.push_todo(&alice, "phone", &[insert("tasks", "from-phone")])
        .await;
    f.push_todo(&alice, "laptop", &[insert("tasks", "from-laptop")])
        .await;
    let last = f
        .push_todo(&alice, "phone", &[insert("tasks", "from-phone-2")])
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
        last = Some(f.push_todo(&alice, "d1", chunk).await);
    }
    let q = query("todo", Some("tasks"), Since::Cursor(Cursor::START));
    let first = f.store.changes_after(&alice, &q).await.expect("read");
    assert_eq!(first.changes.len(), 1000);
    assert!(first.has_more);
    // A smaller limit is kept; a larger one is capped at 1000.
    for (limit, served) in [(7, 7), (50_000, 1000)] {
        let mut asked = q;
        asked.limit = limit;
        let page = f.store.changes_after(&alice, &asked).await.expect("read");
        assert_eq!(page.changes.len(), served, "limit {limit}");
    }
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
    let (ids, _) = f.read_todo(&alice, Since::Cursor(Cursor::START)).await;
    assert_eq!(ids, ["1", "2"]);
}

async fn users_apps_and_collections_are_kept_apart(f: Fixture) {
    let (alice, bob) = (user("alice"), user("bob"));
    f.push_todo(
        &alice,
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
    let bobs = f.push_todo(&bob, "d2", &[insert("tasks", "b-task")]).await;
    let start = Since::Cursor(Cursor::START);
    let (ids, _) = read_all(&*f.store, &alice, query("todo", Some("tasks"), start)).await;
    assert_eq!(ids, ["a-task"]);
    let (ids, _) = f.read_todo(&alice, start).await;
    assert_eq!(ids, ["a-task", "a-list"]);
    let (ids, _) = read_all(&*f.store, &alice, query("notes", None, start)).await;
    assert_eq!(ids, ["a-note"]);
    let (ids, end) = f.read_todo(&bob, start).await;
    assert_eq!(ids, ["b-task"]);
    assert_eq!(end, end_of(bobs), "bob's log is his own");
    let (ids, _) = f.read_todo(&user("carol"), start).await;
    assert!(ids.is_empty());
}

async fn legacy_timestamps_resume_after_that_instant(f: Fixture) {
    let alice = user("alice");
    f.push_todo(&alice, "d1", &[insert("tasks", "old")]).await;
    let page = f
        .store
        .changes_after(&alice, &query("todo", None, Since::Cursor(Cursor::START)))
        .await
        .expect("read");
    let stored_at = page.changes[0].created_at;
    let newest = f.push_todo(&alice, "d1", &[insert("tasks", "new")]).await;
    let (ids, _) = f
        .read_todo(
            &alice,
            Since::parse("1970-01-01T00:00:00.000Z").expect("ok"),
        )
        .await;
    assert_eq!(ids, ["old", "new"]);
    let (ids, _) = f
        .read_todo(
            &alice,
            Since::Cursor(Cursor::from_instant(
                stored_at - time::Duration::milliseconds(1),
            )),
        )
        .await;
    assert_eq!(ids, ["old", "new"]);
    let (ids, end) = f
        .read_todo(
            &alice,
            Since::Cursor(Cursor::from_instant(
                time::OffsetDateTime::now_utc() + time::Duration::hours(1),
            )),
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
        let outcome = f
            .push_todo(
                &alice,
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
    let (_, end) = f.read_todo(&alice, Since::START).await;
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
    f.push_todo(
        &alice,
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
    let stored = f.push_todo(&alice, "d1", &[insert("tasks", "1")]).await;
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
    f.refuse_records_like("poison").await;
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
    let (ids, end) = f.read_todo(&alice, Since::Cursor(Cursor::START)).await;
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
    f.push_todo(&alice, "d1", &[insert("tasks", "1"), insert("tasks", "2")])
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

store_suite!(
    reads_back_in_commit_order_with_ids_and_versions,
    a_device_never_reads_its_own_changes_but_moves_past_them,
    pages_are_bounded_and_lose_nothing_at_their_edges,
    a_repeated_changeset_is_stored_once,
    users_apps_and_collections_are_kept_apart,
    legacy_timestamps_resume_after_that_instant,
    positions_are_the_server_clock_in_commit_order,
    actor_is_kept_verbatim_and_absent_stays_absent,
    a_cursor_beyond_the_log_comes_back_to_its_end,
    a_failing_changeset_stores_nothing,
    reopening_keeps_every_change_and_migrations_are_idempotent,
    settings_are_created_once,
);
