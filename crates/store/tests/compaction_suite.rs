//! Compaction on both databases: folding, old cursors, readers in the middle
//! of a page, one compactor per user, shared spaces' logs, short
//! transactions. Tombstones past their retention (and the cursors that
//! expire with them) are in `retention_suite.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use common::{Backend, Fixture, T, compact, delete, end_of, insert_at, query, rows, update, user};
use mana_sync_protocol::merge::RecordState;
use mana_sync_protocol::{Change, Cursor, LogId, Since, UserId};
use mana_sync_store::{
    ChangeQuery, CompactOptions, CompactOutcome, Store, StoreOptions, StoredChange,
};

/// A device's copy of the records: what it received, merged.
#[derive(Debug, Default, PartialEq)]
struct Replica(BTreeMap<String, RecordState>);

impl Replica {
    fn apply(&mut self, change: &Change) {
        self.0
            .entry(change.id.clone())
            .or_default()
            .apply(change.into())
            .expect("merges");
    }

    fn apply_stored(&mut self, change: &StoredChange) {
        self.0
            .entry(change.record_id.clone())
            .or_default()
            .apply(mana_sync_protocol::merge::ChangeRef {
                op: change.op,
                data: change.data.as_deref(),
                fields: change.fields.as_ref(),
                deleted_at: change.deleted_at.as_ref(),
                actor: change.actor.as_deref(),
            })
            .expect("merges");
    }
}

/// Reads from `since` to the end as `device` would (its own changes left
/// out), applying pages of `limit`; returns the final cursor.
async fn follow(
    store: &dyn Store,
    who: &UserId,
    device: Option<&str>,
    since: Cursor,
    limit: usize,
    replica: &mut Replica,
) -> Cursor {
    let mut since = since;
    loop {
        let mut q = query("todo", None, Since::Cursor(since));
        q.exclude_client = device;
        q.limit = limit;
        let page = store.changes_after(who, &q).await.expect("read");
        for change in &page.changes {
            replica.apply_stored(change);
        }
        since = page.next;
        if !page.has_more {
            return since;
        }
    }
}

async fn each_records_history_is_folded_at_its_latest_position(f: Fixture) {
    let alice = user("alice");
    let mut full = Replica::default();
    let mut pushes = Vec::new();
    for (device, change) in [
        ("phone", insert_at("a", T[0])),
        ("phone", update("a", "title", "\"one\"", T[1])),
        ("laptop", update("a", "done", "true", T[2])),
        ("phone", insert_at("b", T[0])),
        ("phone", update("b", "title", "\"b1\"", T[3])),
        ("laptop", insert_at("c", T[0])),
        ("phone", update("a", "title", "\"two\"", T[4])),
    ] {
        full.apply(&change);
        pushes.push((device, end_of(f.push_todo(&alice, device, &[change]).await)));
    }
    let before = rows(&*f.store, &alice).await;
    assert_eq!(before.len(), 7);

    let outcome = compact(&*f.store, &alice, &CompactOptions::default()).await;
    assert_eq!(
        (
            outcome.records_folded,
            outcome.changes_folded,
            outcome.records_dropped
        ),
        (2, 4, 0)
    );
    let after = rows(&*f.store, &alice).await;
    let positions: Vec<(String, u64, String)> = after
        .iter()
        .map(|c| (c.record_id.clone(), c.seq, c.client_id.clone()))
        .collect();
    assert_eq!(
        positions,
        [
            ("b".to_owned(), pushes[4].1.position(), "phone".to_owned()),
            ("c".to_owned(), pushes[5].1.position(), "laptop".to_owned()),
            // Written by two devices: attributed to none, so both receive it.
            ("a".to_owned(), pushes[6].1.position(), String::new()),
        ],
        "one change per record, at its latest position"
    );
    let mut fresh = Replica::default();
    for change in &after {
        fresh.apply_stored(change);
    }
    assert_eq!(fresh, full, "the compacted log is the merged state");
    // The newest position, and so every cursor, is unchanged.
    let (_, end) = common::read_all(&*f.store, &alice, query("todo", None, Since::START)).await;
    assert_eq!(end, pushes[6].1);
    // Compacting again finds nothing to do.
    assert_eq!(
        compact(&*f.store, &alice, &CompactOptions::default()).await,
        CompactOutcome::default()
    );
}

/// Devices that synced at different moments, a reader in the middle of its
/// pages, compactions in between: every one ends with the full history.
async fn every_cursor_handed_out_stays_safe(f: Fixture) {
    let alice = user("alice");
    let devices = ["phone", "laptop", "tablet"];
    let mut full = Replica::default();
    let mut replicas: Vec<(Replica, Cursor)> = devices
        .iter()
        .map(|_| (Replica::default(), Cursor::START))
        .collect();
    let mut paginating = (Replica::default(), Cursor::START);
    // A small deterministic generator: the same history every run.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..120 {
        let d = usize::try_from(next(3)).expect("small");
        let record = format!("r{}", next(6));
        let at = format!("2026-11-25T10:00:{:02}.{:09}Z", next(60), next(5));
        let change = match next(8) {
            0 => insert_at(&record, &at),
            1 => delete(&record, &at),
            _ => update(
                &record,
                ["title", "done", "note"][usize::try_from(next(3)).expect("small")],
                &format!("{}", next(4)),
                &at,
            ),
        };
        full.apply(&change);
        replicas[d].0.apply(&change);
        f.push_todo(&alice, devices[d], &[change]).await;
        match next(6) {
            0 => {
                let outcome = compact(&*f.store, &alice, &CompactOptions::default()).await;
                assert!(!outcome.busy);
            }
            1 => {
                let (replica, cursor) = &mut replicas[usize::try_from(next(3)).expect("small")];
                let who = devices[d];
                *cursor = follow(&*f.store, &alice, Some(who), *cursor, 4, replica).await;
            }
            2 => {
                // One page of 3, then carry on later from its cursor.
                let mut q = query("todo", None, Since::Cursor(paginating.1));
                q.limit = 3;
                let page = f.store.changes_after(&alice, &q).await.expect("read");
                for change in &page.changes {
                    paginating.0.apply_stored(change);
                }
                paginating.1 = page.next;
            }
            _ => {}
        }
        if round == 60 {
            compact(&*f.store, &alice, &CompactOptions::default()).await;
        }
    }
    compact(&*f.store, &alice, &CompactOptions::default()).await;
    for (i, (replica, cursor)) in replicas.iter_mut().enumerate() {
        follow(&*f.store, &alice, Some(devices[i]), *cursor, 5, replica).await;
        assert_eq!(*replica, full, "{} from its cursor", devices[i]);
    }
    follow(&*f.store, &alice, None, paginating.1, 3, &mut paginating.0).await;
    assert_eq!(paginating.0, full, "the reader in the middle of its pages");
    let mut fresh = Replica::default();
    follow(&*f.store, &alice, None, Cursor::START, 1000, &mut fresh).await;
    assert_eq!(fresh, full, "a new device");
    assert!(
        rows(&*f.store, &alice).await.len() <= 6,
        "one change per record"
    );
}

async fn one_compactor_works_on_a_user_at_a_time(f: Fixture) {
    let alice = user("alice");
    for i in 0..10 {
        f.push_todo(&alice, "phone", &[update("a", "n", &i.to_string(), T[0])])
            .await;
    }
    match &f.backend {
        Backend::Postgres(db) => {
            // Another instance's compactor holds the user.
            let other = db.app().await;
            other
                .execute(
                    "SELECT pg_advisory_lock(hashtextextended('mana-sync compaction alice', 0))",
                    &[],
                )
                .await
                .expect("locks");
            let outcome = compact(&*f.store, &alice, &CompactOptions::default()).await;
            assert!(outcome.busy, "{outcome:?}");
            assert_eq!(rows(&*f.store, &alice).await.len(), 10, "nothing folded");
            other
                .execute(
                    "SELECT pg_advisory_unlock(hashtextextended('mana-sync compaction alice', 0))",
                    &[],
                )
                .await
                .expect("unlocks");
        }
        Backend::Sqlite { .. } => {
            // A second compaction while the first reports progress.
            let seen = Mutex::new(None);
            let store = f.store.clone();
            let log = LogId::of_user(&alice);
            let outcome = f
                .store
                .compact(&log, &CompactOptions::default(), &|_: &CompactOutcome| {
                    let second = futures::executor::block_on(store.compact(
                        &log,
                        &CompactOptions::default(),
                        &|_: &CompactOutcome| {},
                    ));
                    *seen.lock().unwrap() = Some(second.expect("answers"));
                })
                .await
                .expect("compacts");
            assert_eq!(outcome.changes_folded, 9);
            assert!(seen.lock().unwrap().expect("asked").busy);
        }
    }
    let outcome = compact(&*f.store, &alice, &CompactOptions::default()).await;
    assert!(!outcome.busy);
    assert_eq!(rows(&*f.store, &alice).await.len(), 1);
}

async fn users_with_superseded_changes_are_candidates_until_compacted(f: Fixture) {
    let (alice, bob) = (user("alice"), user("bob"));
    for i in 0..5 {
        f.push_todo(&alice, "phone", &[update("a", "n", &i.to_string(), T[0])])
            .await;
    }
    for i in 0..5 {
        // Inserts of new records supersede nothing.
        f.push_todo(&bob, "phone", &[insert_at(&format!("b{i}"), T[0])])
            .await;
    }
    let candidates = f.store.compaction_candidates(3, 10).await.expect("lists");
    assert_eq!(candidates, [(LogId::of_user(&alice), 5)]);
    compact(&*f.store, &alice, &CompactOptions::default()).await;
    assert!(
        f.store
            .compaction_candidates(3, 10)
            .await
            .expect("lists")
            .is_empty()
    );
    f.push_todo(&alice, "phone", &[update("a", "n", "9", T[1])])
        .await;
    assert_eq!(
        f.store.compaction_candidates(1, 10).await.expect("lists"),
        [(LogId::of_user(&alice), 1)]
    );
}

/// A shared space's log is compacted like a user's: its members' edits are
/// folded, and every member reads the folded state.
async fn a_spaces_log_is_compacted_like_a_users(f: Fixture) {
    let (ann, bob) = (user("ann"), user("bob"));
    let space = f.create_space(&ann, "Groceries").await;
    f.set_member(&ann, &space, "bob", mana_sync_store::Role::Editor)
        .await;
    let in_space = |mut change: Change| {
        change.space_id = Some(space.clone());
        change
    };
    f.push_todo(&ann, "anns-phone", &[in_space(insert_at("milk", T[0]))])
        .await;
    for i in 0..5 {
        let (who, device) = if i % 2 == 0 {
            (&ann, "anns-phone")
        } else {
            (&bob, "bobs-phone")
        };
        let edit = in_space(update("milk", "title", &format!("\"milk {i}\""), T[1 + i]));
        f.push_todo(who, device, &[edit]).await;
    }
    let log = LogId::of_space(&space);
    let candidates = f.store.compaction_candidates(3, 10).await.expect("lists");
    assert_eq!(candidates, [(log.clone(), 5)]);
    let outcome = f
        .store
        .compact(&log, &CompactOptions::default(), &|_: &CompactOutcome| {})
        .await
        .expect("compacts");
    assert_eq!(outcome.changes_folded, 5);
    for member in [&ann, &bob] {
        let page = f
            .store
            .changes_after(
                member,
                &ChangeQuery {
                    space: Some(&space),
                    ..query("todo", None, Since::START)
                },
            )
            .await
            .expect("a member reads");
        assert_eq!(page.changes.len(), 1, "one folded change");
        let folded = &page.changes[0];
        assert_eq!(folded.space_id.as_ref(), Some(&space));
        let fields = folded.fields.as_ref().expect("the merged fields");
        assert_eq!(fields["title"].value.to_string(), r#""milk 4""#);
    }
}

/// On SQLite a push waits for any compaction transaction to commit (one
/// writer), so even one record's long history is folded over many short
/// transactions, each reported as progress.
async fn a_long_history_is_folded_in_short_transactions(f: Fixture) {
    let alice = user("alice");
    let mut changes = Vec::new();
    for i in 0..600 {
        changes.push(update("a", "n", &i.to_string(), T[i % T.len()]));
    }
    for chunk in changes.chunks(100) {
        f.push_todo(&alice, "phone", chunk).await;
    }
    let reports = Mutex::new(Vec::new());
    let options = CompactOptions {
        pause_ratio: 0,
        ..CompactOptions::default()
    };
    let outcome = f
        .store
        .compact(
            &LogId::of_user(&alice),
            &options,
            &|so_far: &CompactOutcome| {
                reports.lock().unwrap().push(so_far.changes_folded);
            },
        )
        .await
        .expect("compacts");
    assert_eq!((outcome.changes_folded, outcome.records_folded), (599, 1));
    assert_eq!(rows(&*f.store, &alice).await.len(), 1);
    let reports = reports.into_inner().unwrap();
    if let Backend::Sqlite { .. } = f.backend {
        // The first window is 64 changes, and a window at most doubles.
        assert!(reports.len() >= 4, "transactions: {reports:?}");
    }
}

/// Two processes compacting one SQLite file (`mana-sync compact` beside a
/// server) take turns on its lock. The second folds every record while the
/// first is between two windows of its sweep, so positions the first
/// remembers of each record (SQLite has no index of records) are gone when
/// it reads them again; it must skip them, fold nothing twice, and leave
/// every device able to reach the whole history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_processes_compact_one_file_between_each_others_windows() {
    let f = Fixture::sqlite().await;
    let other = mana_sync_store::open(&f.url(), &StoreOptions::default())
        .await
        .expect("a second process opens the file");
    let alice = user("alice");
    let mut full = Replica::default();
    let mut halfway = (Replica::default(), Cursor::START);
    // Eight records changed in every round, so each has changes in every
    // window of the sweep (the first is 64 changes).
    for round in 0..40_usize {
        let at = format!("2026-11-25T10:00:{round:02}.000000001Z");
        let changes: Vec<Change> = (0..8)
            .map(|r| {
                update(
                    &format!("r{r}"),
                    ["title", "done"][round % 2],
                    &round.to_string(),
                    &at,
                )
            })
            .collect();
        for change in &changes {
            full.apply(change);
        }
        f.push_todo(&alice, "phone", &changes).await;
        if round == 20 {
            halfway.1 = follow(&*f.store, &alice, None, Cursor::START, 7, &mut halfway.0).await;
        }
    }
    let log = LogId::of_user(&alice);
    let options = CompactOptions {
        pause_ratio: 0,
        ..CompactOptions::default()
    };
    let windows = Mutex::new(0);
    let first = f
        .store
        .compact(&log, &options, &|_: &CompactOutcome| {
            let mut windows = windows.lock().unwrap();
            *windows += 1;
            if *windows == 1 {
                let second = futures::executor::block_on(other.compact(
                    &log,
                    &options,
                    &|_: &CompactOutcome| {},
                ))
                .expect("the second process compacts");
                assert_eq!(
                    (second.records_folded, second.busy),
                    (8, false),
                    "the second process folds every record"
                );
            }
        })
        .await
        .expect("the first process finishes its sweep");
    assert!(*windows.lock().unwrap() >= 2, "the sweep had windows left");
    assert_eq!(
        first.changes_folded,
        64 - 8,
        "the first process folded its first window, then found the rest folded"
    );
    assert_eq!(
        rows(&*f.store, &alice).await.len(),
        8,
        "one change per record"
    );
    follow(&*f.store, &alice, None, halfway.1, 3, &mut halfway.0).await;
    assert_eq!(halfway.0, full, "a device that synced half way");
    let mut fresh = Replica::default();
    follow(&*f.store, &alice, None, Cursor::START, 5, &mut fresh).await;
    assert_eq!(fresh, full, "a new device");
}

store_suite!(
    a_long_history_is_folded_in_short_transactions,
    each_records_history_is_folded_at_its_latest_position,
    every_cursor_handed_out_stays_safe,
    one_compactor_works_on_a_user_at_a_time,
    users_with_superseded_changes_are_candidates_until_compacted,
    a_spaces_log_is_compacted_like_a_users,
);
