//! Where the CPU of a load run goes: the server process, the database's
//! processes and this load generator, read from `/proc` (Linux) before and
//! after a phase. On a machine that runs all three, this is what bounds a
//! rate, so the load report shows it per push.

use std::time::Duration;

/// Kernel clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`,
/// 100 on every Linux architecture this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time used so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// The server process (on SQLite, the database works inside it).
    pub server: Duration,
    /// Every `postgres` process of the machine.
    pub database: Duration,
    /// This process.
    pub generator: Duration,
}

impl Cpu {
    /// The CPU used now by `server` (if any), the database and this process.
    pub fn now(server: Option<u32>) -> Self {
        Self {
            server: server.map_or(Duration::ZERO, process_time),
            database: processes_named("postgres"),
            generator: process_time(std::process::id()),
        }
    }

    /// What was used between `earlier` and `self`.
    pub fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            server: self.server.saturating_sub(earlier.server),
            database: self.database.saturating_sub(earlier.database),
            generator: self.generator.saturating_sub(earlier.generator),
        }
    }

    /// Per operation, in words.
    pub fn per(&self, operations: usize) -> String {
        let [server, database, generator] = self.each(operations);
        format!(
            "server {server:.0} µs, database {database:.0} µs, load generator {generator:.0} µs"
        )
    }

    /// Per operation, in microseconds: `server / database / generator`.
    pub fn micros_per(&self, operations: usize) -> String {
        let [server, database, generator] = self.each(operations);
        format!("{server:.0} / {database:.0} / {generator:.0}")
    }

    fn each(&self, operations: usize) -> [f64; 3] {
        let each = |d: Duration| d.as_secs_f64() * 1e6 / operations.max(1) as f64;
        [each(self.server), each(self.database), each(self.generator)]
    }
}

/// User and system time of `pid` and its threads (zero if it is gone).
fn process_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name (field 2) is in parentheses and may hold spaces;
    // utime and stime are fields 14 and 15, the 12th and 13th after it.
    let Some((_, after_name)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let mut fields = after_name.split_whitespace().skip(11);
    let ticks: u64 = fields
        .by_ref()
        .take(2)
        .filter_map(|field| field.parse::<u64>().ok())
        .sum();
    Duration::from_secs_f64(ticks as f64 / TICKS_PER_SECOND)
}

/// The CPU time of every running process whose command is `name`.
fn processes_named(name: &str) -> Duration {
    pids_named(name).into_iter().map(process_time).sum()
}

/// Every process of this machine whose command is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .collect()
}
