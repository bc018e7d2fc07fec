//! SQLite's write-ahead log under a writer that never stops.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Backend, Fixture, insert, push, query, user};
use mana_sync_protocol::{Cursor, Since};

/// Pushes from many devices at once keep the writer busy without a pause,
/// while reads go on. The log must still start over from its beginning now
/// and then; it used to grow by every page ever written (gigabytes in a
/// minute of small pushes), since a write restarts it only if it begins
/// with every page copied into the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_starts_over_while_pushes_never_stop() {
    const DEVICES: usize = 16;
    const PUSHES: usize = 750;
    let f = Fixture::sqlite().await;
    let Backend::Sqlite { path, .. } = &f.backend else {
        unreachable!("a SQLite fixture");
    };
    let wal = path.with_file_name("sync.db-wal");
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
    done.store(true, Ordering::Relaxed);
    reader.await.expect("reader");
    // The file keeps the largest size the log ever reached.
    let largest = std::fs::metadata(&wal).expect("the log file").len();
    let written = (DEVICES * PUSHES) as u64;
    assert!(
        largest < 96 << 20,
        "the log reached {} MB for {written} small pushes",
        largest >> 20
    );
}
