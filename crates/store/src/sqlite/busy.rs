//! Waiting for another connection's write lock.
//!
//! Our own writes go through one writer thread, but another process may
//! write the same file: an operator's `mana-sync compact` or `import`. Its
//! transactions are short (compaction's are bounded by a time budget), so a
//! push that finds the lock taken should get it as soon as it is released.
//! SQLite's own busy timeout sleeps in coarse steps (1, 2, 5, 10, 15, 20,
//! 25 … ms): a push arriving while a 3 ms compaction batch holds the lock
//! slept 1 + 2 + 5 ms before trying again, which made push p99 during a
//! compaction five times the idle one. This handler tries again after a
//! twentieth of the time waited so far (at least 100 µs, at most 2 ms): it
//! notices a release within about 5 % of the wait, or 100 µs, and a lock
//! held for seconds costs at most 500 attempts a second, each one a failed
//! lock on the shared-memory file.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// How long a statement waits for the lock before failing with
/// `SQLITE_BUSY` (answered as unavailable: `database_error`).
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Shortest and longest sleep between two attempts.
const MIN_STEP: Duration = Duration::from_micros(100);
const MAX_STEP: Duration = Duration::from_millis(2);

thread_local! {
    /// When the current wait began. SQLite calls the handler on the thread
    /// running the statement, with `attempts` 0 on the first call of each
    /// wait, and one thread runs one statement at a time.
    static WAITING_SINCE: Cell<Instant> = Cell::new(Instant::now());
}

/// Installs the handler on `conn` (instead of `PRAGMA busy_timeout`).
pub(crate) fn wait_when_busy(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_handler(Some(busy))
}

/// SQLite's busy handler: `true` to try again (after a short sleep).
fn busy(attempts: i32) -> bool {
    let now = Instant::now();
    let since = WAITING_SINCE.with(|since| {
        if attempts == 0 {
            since.set(now);
        }
        since.get()
    });
    match step(now.saturating_duration_since(since)) {
        Some(sleep) => {
            std::thread::sleep(sleep);
            true
        }
        None => false,
    }
}

/// The sleep before the next attempt after waiting `waited`; none once the
/// timeout has passed.
fn step(waited: Duration) -> Option<Duration> {
    if waited >= BUSY_TIMEOUT {
        return None;
    }
    Some((waited / 20).clamp(MIN_STEP, MAX_STEP))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another process holds the write lock for a while; a writer waiting
    /// for it gets it once it is released instead of failing as busy. (How
    /// soon is a matter of `step`, below; its effect on pushes is measured
    /// by `mana-sync-bench compaction`, not asserted here, where a loaded
    /// machine decides when a thread wakes.)
    #[test]
    fn a_waiting_writer_gets_the_lock_once_it_is_released() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("busy.db");
        let open = || {
            let conn = Connection::open(&path).expect("opens");
            conn.execute_batch("PRAGMA journal_mode = WAL")
                .expect("WAL");
            wait_when_busy(&conn).expect("handler");
            conn
        };
        let holder = open();
        holder
            .execute_batch("CREATE TABLE t (x INTEGER)")
            .expect("table");
        let mut waiter = open();
        for hold in [3, 12, 40] {
            holder.execute_batch("BEGIN IMMEDIATE").expect("locks");
            let (started, ready) = std::sync::mpsc::channel();
            let waiting = std::thread::spawn(move || {
                started.send(()).expect("told");
                waiter
                    .execute_batch("BEGIN IMMEDIATE")
                    .expect("gets the lock");
                let got = Instant::now();
                waiter.execute_batch("ROLLBACK").expect("ends");
                (got, waiter)
            });
            ready.recv().expect("waiter started");
            // The other process's transaction, working.
            std::thread::sleep(Duration::from_millis(hold));
            let released = Instant::now();
            holder.execute_batch("ROLLBACK").expect("releases");
            let (got, back) = waiting.join().expect("waiter");
            waiter = back;
            assert!(got >= released, "the lock was never shared");
        }
    }

    #[test]
    fn waits_in_short_steps_until_the_timeout() {
        assert_eq!(step(Duration::ZERO), Some(MIN_STEP));
        assert_eq!(
            step(Duration::from_millis(10)),
            Some(Duration::from_micros(500))
        );
        assert_eq!(step(Duration::from_secs(1)), Some(MAX_STEP));
        assert_eq!(step(BUSY_TIMEOUT), None);
    }
}
