//! Checkpoints off the push path.
//!
//! In WAL mode a commit appends pages to the log, and a checkpoint copies
//! them into the database file and syncs it. SQLite runs one inside any
//! commit that finds the log over 1,000 pages, so a push unlucky enough to
//! cross that line waited for several megabytes of random writes: the
//! slowest pushes of all, and during compaction (which writes many pages)
//! a push in every few hundred. The writer connection therefore never
//! checkpoints (`wal_autocheckpoint = 0`); after its work it tells this
//! thread, which checkpoints on a connection of its own (passive: it never
//! waits for the writer, and never holds it up), at most every
//! [`INTERVAL`] (a second).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// Shortest time between two checkpoints: a busy writer's log grows by what
/// it writes in this time, and a checkpoint syncs the database file once.
/// That sync competes with pushes' own for the disk: during compaction
/// (300,000 changes, `mana-sync-bench compaction --records 3000 --backend
/// sqlite`) push p99 was 3.6 ms with a checkpoint every 100 ms and 2.1 ms
/// with one every second, against 1.3 ms idle.
const INTERVAL: Duration = Duration::from_secs(1);

/// The writer's side: tells the checkpointer that the log grew.
pub(crate) struct Checkpoints {
    wrote: mpsc::SyncSender<()>,
}

impl Checkpoints {
    /// The writer committed (or may have): a checkpoint is due.
    pub(crate) fn wrote(&self) {
        // Full: one is already due, which will copy this too; gone: the
        // store is closing.
        let _ = self.wrote.try_send(());
    }
}

/// Starts the checkpointer on `conn`; it ends when the writer drops its
/// [`Checkpoints`].
pub(crate) fn start(conn: Connection) -> std::io::Result<Checkpoints> {
    let (wrote, due) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || run(&conn, &due))?;
    Ok(Checkpoints { wrote })
}

fn run(conn: &Connection, due: &mpsc::Receiver<()>) {
    while due.recv().is_ok() {
        let started = Instant::now();
        // Passive: copies what no reader still needs; what is left is copied
        // by a later one. The result row says how far it got.
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        if let Err(error) = done {
            tracing::warn!(%error, "SQLite checkpoint failed; the log grows until one succeeds");
        }
        let next = started + INTERVAL;
        let now = Instant::now();
        if next > now {
            // Rate limit: what is written meanwhile waits for the next one.
            std::thread::sleep(next - now);
        }
    }
}

/// The writer's connection: it leaves checkpoints to the checkpointer.
pub(crate) fn leave_to_checkpointer(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
}
