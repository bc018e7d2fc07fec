//! SQLite's write-ahead log under a writer that never stops.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Backend, Fixture, insert, push, query, user};
use mana_sync_protocol::{Cursor, Since};

/// How many devices push at once, and how many small pushes each.
const DEVICES: usize = 16;
const PUSHES: usize = 750;

/// Pushes from many devices at once keep the writer busy without a pause,
/// while reads go on. The log must still start over from its beginning now
/// and then; it used to grow by every page ever written (gigabytes in a
/// minute of small pushes), since a write restarts it only if it begins
/// with every page copied into the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_starts_over_while_pushes_never_stop() {
    let f = Fixture::sqlite().await;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, done) = (f.store.clone(), done.clone());
        tokio::spawn(async move {
            let alice = user("user-0");
            while !done.load(Ordering::Relaxed) {
                store
                    .changes_after(&alice, &query("todo", None, Since::Cursor(Cursor::START)))
                    .await
                    .expect("reads");
            }
        })
    };
    push_nonstop(&f).await;
    done.store(true, Ordering::Relaxed);
    reader.await.expect("reader");
    assert_log_stayed_short(&f);
}

/// A reader whose every read lasts longer than the writer's first wait for
/// readers (a page of a long log, on a slow machine) is in the middle of a
/// read whenever the log could start over. It must not keep the log from
/// starting over: it did, and the log grew by every page written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_starts_over_past_readers_slower_than_its_first_wait() {
    /// How long each read keeps its snapshot of the log.
    const READ_LASTS: Duration = Duration::from_millis(30);
    let f = Fixture::sqlite().await;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (path, done) = (database_file(&f).to_owned(), done.clone());
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(path).expect("opens the file");
            while !done.load(Ordering::Relaxed) {
                let read = conn.unchecked_transaction().expect("begins");
                read.query_row("SELECT count(*) FROM mana_changes", [], |_| Ok(()))
                    .expect("reads");
                // The read's own length, not a wait for anything.
                std::thread::sleep(READ_LASTS);
                read.commit().expect("ends the read");
            }
        })
    };
    push_nonstop(&f).await;
    done.store(true, Ordering::Relaxed);
    reader.join().expect("reader");
    assert_log_stayed_short(&f);
}

/// A small push writes a leaf page of every index keyed by its user (users'
/// pushes arrive interleaved, so no two of a commit group share one): the
/// log keeps one, by position. Reads of a collection filter that range, and
/// compaction finds records by the positions it sweeps.
#[tokio::test]
async fn the_log_has_one_index_keyed_by_user() {
    let f = Fixture::sqlite().await;
    let conn = rusqlite::Connection::open(database_file(&f)).expect("opens");
    let mut indexes = conn
        .prepare(
            "SELECT l.name FROM pragma_index_list('mana_changes') l
             WHERE (SELECT i.name FROM pragma_index_info(l.name) i WHERE i.seqno = 0) = 'user_id'
             ORDER BY l.name",
        )
        .expect("prepares");
    let keyed_by_user: Vec<String> = indexes
        .query_map([], |row| row.get(0))
        .expect("lists")
        .collect::<Result<_, _>>()
        .expect("reads");
    assert_eq!(keyed_by_user, ["mana_changes_user_seq"]);
}

/// Storing a change builds no temporary table: the log's rule on `op` is
/// three comparisons (migration 10), not an IN list, for which SQLite opens
/// and fills a temporary B-tree at every insert. The rule still refuses an
/// operation it does not know.
#[tokio::test]
async fn storing_a_change_builds_no_temporary_table() {
    let f = Fixture::sqlite().await;
    let conn = rusqlite::Connection::open(database_file(&f)).expect("opens");
    let insert = "INSERT INTO mana_changes (user_id, seq, event_id, app_id, table_name,
                      record_id, op, client_id, schema_version, created_at)
                  VALUES ('u', 1, 'e', 'a', 't', 'r', ?1, 'c', 1, 0)";
    let opcodes: Vec<String> = conn
        .prepare(&format!("EXPLAIN {insert}"))
        .expect("prepares")
        .query_map(["insert"], |row| row.get(1))
        .expect("explains")
        .collect::<Result<_, _>>()
        .expect("reads");
    assert!(
        !opcodes.iter().any(|opcode| opcode == "OpenEphemeral"),
        "{opcodes:?}"
    );
    let refused = conn
        .execute(insert, ["rename"])
        .expect_err("an unknown op is refused");
    assert!(
        refused.to_string().contains("CHECK constraint failed"),
        "{refused}"
    );
}

fn database_file(f: &Fixture) -> &Path {
    let Backend::Sqlite { path, .. } = &f.backend else {
        unreachable!("a SQLite fixture");
    };
    path
}

/// [`DEVICES`] devices each push [`PUSHES`] one-change changesets, all at
/// once, each device as fast as its pushes are answered.
async fn push_nonstop(f: &Fixture) {
    let devices: Vec<_> = (0..DEVICES)
        .map(|device| {
            let store = f.store.clone();
            tokio::spawn(async move {
                // Users apart, as real devices' pushes are: every push
                // touches pages of its own user.
                let owner = user(&format!("user-{}", device % 8));
                for n in 0..PUSHES {
                    let id = format!("{device}-{n}");
                    push(
                        &*store,
                        &owner,
                        "todo",
                        &format!("d{device}"),
                        &[insert("tasks", &id)],
                    )
                    .await;
                }
            })
        })
        .collect();
    for device in devices {
        device.await.expect("pushes");
    }
}

/// The log file keeps the largest size the log ever reached: under 96 MB
/// (three times the length at which it restarts) for all these pushes.
fn assert_log_stayed_short(f: &Fixture) {
    let wal = database_file(f).with_file_name("sync.db-wal");
    let largest = std::fs::metadata(&wal).expect("the log file").len();
    let written = (DEVICES * PUSHES) as u64;
    assert!(
        largest < 96 << 20,
        "the log reached {} MB for {written} small pushes",
        largest >> 20
    );
}
