//! Checkpoints off the push path.
//!
//! In WAL mode a commit appends pages to the log, and a checkpoint copies
//! them into the database file and syncs it. SQLite runs one inside any
//! commit that finds the log over 1,000 pages, so a push unlucky enough to
//! cross that line waited for several megabytes of random writes: the
//! slowest pushes of all, and during compaction (which writes many pages)
//! a push in every few hundred. The writer connection therefore never
//! checkpoints by itself (`wal_autocheckpoint = 0`); after its work it tells
//! this thread, which checkpoints on a connection of its own (passive: it
//! never waits for the writer, and never holds it up), at most every
//! [`INTERVAL`] (a second) while the log is short.
//!
//! The log starts again from its beginning only when a write begins with
//! every page of it copied, which a writer that never stops (many small
//! pushes) never does: the log grew by gigabytes in a minute, every append
//! extending the file. So once the log is [`RESTART_FRAMES`] long, this
//! thread checkpoints without pausing until little is left to copy, and
//! then asks the writer to restart the log between two of its jobs
//! ([`Checkpoints::restart_if_due`]): it copies the rest, waits briefly for
//! readers still on the log, and its next write starts the log over.
//!
//! The checkpointer asks for a restart just after a passive checkpoint
//! caught up, which it can only do once every reader's snapshot is recent:
//! so a reader is often in the middle of a read when the restart comes, and
//! a read longer than the wait held up every restart while the log grew
//! without bound. Each restart that readers held up therefore doubles the
//! next one's wait, up to [`LONGEST_RESTART_WAIT`].

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

thread_local! {
    /// Pages in the log after the last commit on this thread: SQLite tells
    /// it to the writer connection's hook ([`leave_to_checkpointer`]), which
    /// runs on the writer's thread.
    static LOG_PAGES: Cell<i64> = const { Cell::new(0) };
}

/// Shortest time between two checkpoints: a busy writer's log grows by what
/// it writes in this time, and a checkpoint syncs the database file once.
/// That sync competes with pushes' own for the disk: during compaction
/// (300,000 changes, `mana-sync-bench compaction --records 3000 --backend
/// sqlite`) push p99 was 3.6 ms with a checkpoint every 100 ms and 2.1 ms
/// with one every second, against 1.3 ms idle.
const INTERVAL: Duration = Duration::from_secs(1);

/// A log this long (32 MB) is checkpointed without pause and then started
/// over. Each checkpoint copies a page once however often the log holds
/// it, so a longer log copies less per push: under `mana-sync-bench load
/// --backend sqlite`, 8,000 pages gave 5,669–5,689 pushes/s where 1,000
/// (SQLite's own automatic checkpoint line) gave 4,989–5,220.
const RESTART_FRAMES: i64 = 8000;

/// At most this many pages left to copy when the writer restarts the log:
/// it copies them, and syncs the database file, between two jobs.
const CATCH_UP_FRAMES: i64 = 256;

/// How long the writer first waits for readers still on the log when
/// restarting it; if they take longer, the next round tries again, waiting
/// twice as long.
const FIRST_RESTART_WAIT: Duration = Duration::from_millis(5);

/// The longest the writer waits for readers when restarting the log (pushes
/// queue meanwhile): long enough for a read of one page of a log
/// (`changes_after`'s limit) on a busy machine. A longer read (a backup
/// export, one snapshot) rarely meets a restart: while its snapshot is old
/// the checkpointer cannot catch up, and asks for none.
const LONGEST_RESTART_WAIT: Duration = Duration::from_millis(160);

/// The writer's side: tells the checkpointer that the log grew (to how many
/// pages), and hears when to restart it.
pub(crate) struct Checkpoints {
    wrote: mpsc::SyncSender<i64>,
    restart_due: Arc<AtomicBool>,
    /// How long the next restart waits for readers.
    restart_wait: Cell<Duration>,
}

impl Checkpoints {
    /// The writer committed (or may have): a checkpoint is due. Called on
    /// the writer's thread.
    pub(crate) fn wrote(&self) {
        // Full: one is already due, which will copy this too; gone: the
        // store is closing.
        let _ = self.wrote.try_send(LOG_PAGES.get());
    }

    /// Between two of the writer's jobs, on its connection: when the
    /// checkpointer found the log long and nearly all copied, copies the
    /// rest and waits (briefly) until no reader uses the log, so that the
    /// next write starts the log from its beginning.
    pub(crate) fn restart_if_due(&self, conn: &Connection) {
        if !self.restart_due.swap(false, Ordering::Relaxed) {
            return;
        }
        // A reader still on the log after the wait is no failure (the result
        // row's first column says busy); the checkpointer asks again.
        let wait = self.restart_wait.get();
        let restarted = conn.busy_timeout(wait).and_then(|()| {
            conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
                row.get::<_, i64>(0)
            })
        });
        match restarted {
            Ok(0) => self.restart_wait.set(FIRST_RESTART_WAIT),
            Ok(_) => self.restart_wait.set((wait * 2).min(LONGEST_RESTART_WAIT)),
            Err(error) => {
                tracing::warn!(%error, "restarting the SQLite log failed; it grows until it can");
            }
        }
        // Back to the writer's own way of waiting, whatever happened.
        if let Err(error) = super::busy::wait_when_busy(conn) {
            tracing::warn!(%error, "cannot set the SQLite writer's busy handler back");
        }
    }
}

/// Starts the checkpointer on `conn`; it ends when the writer drops its
/// [`Checkpoints`].
pub(crate) fn start(conn: Connection) -> std::io::Result<Checkpoints> {
    let (wrote, due) = mpsc::sync_channel(1);
    let restart_due = Arc::new(AtomicBool::new(false));
    let asks = restart_due.clone();
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || run(&conn, &due, &asks))?;
    Ok(Checkpoints {
        wrote,
        restart_due,
        restart_wait: Cell::new(FIRST_RESTART_WAIT),
    })
}

fn run(conn: &Connection, due: &mpsc::Receiver<i64>, restart_due: &AtomicBool) {
    while due.recv().is_ok() {
        let started = Instant::now();
        // Passive: copies what no reader still needs; what is left is copied
        // by a later one. The result row says how long the log is and how
        // much of it is copied.
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        });
        match done {
            Ok((log, copied)) if log >= RESTART_FRAMES => {
                if log - copied <= CATCH_UP_FRAMES {
                    restart_due.store(true, Ordering::Relaxed);
                }
                // A long log: no pause until it is started over.
                continue;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "SQLite checkpoint failed; the log grows until one succeeds");
            }
        }
        // Rate limit: what is written meanwhile waits for the next one,
        // unless the log grows long first.
        let next = started + INTERVAL;
        loop {
            let now = Instant::now();
            if now >= next {
                break;
            }
            match due.recv_timeout(next - now) {
                Ok(pages) if pages >= RESTART_FRAMES => break,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// The writer's connection: it leaves checkpoints to the checkpointer, and
/// notes how long the log is after each commit (SQLite's WAL hook, which
/// also replaces its automatic checkpoints).
pub(crate) fn leave_to_checkpointer(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
    conn.wal_hook(Some(|_, pages| {
        LOG_PAGES.set(i64::from(pages));
        Ok(())
    }));
    Ok(())
}
