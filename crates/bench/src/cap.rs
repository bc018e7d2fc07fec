//! Confines the database's processes to a share of the CPU for a run, with a
//! Linux cgroup's CPU quota (cgroup v2's `cpu.max`, or v1's CFS quota).
//!
//! On one machine the server, the database and the load generator share the
//! cores, so a rate measures all three. In production many server instances
//! share one database, and the database is what saturates first; capping it
//! puts this machine in that regime, for mana-sync and the raw baselines
//! alike, in the same run. Needs root; every process is moved back (and the
//! group removed) when the cap is dropped, and a group left behind by a run
//! that was killed is emptied by the next one.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::cpu::pids_named;

/// The group every capped process is moved into, under the hierarchy's root.
const GROUP: &str = "mana-sync-bench-database";

/// How long one period of the quota lasts, in microseconds (the kernel's
/// default).
const PERIOD_MICROS: u64 = 100_000;

/// The processes of one name, held to a CPU quota until dropped.
pub struct Cap {
    name: String,
    /// The capping group.
    group: PathBuf,
    /// The group they were in before.
    home: PathBuf,
}

impl Cap {
    /// Holds every process named `name` (and those they start) to `cores`
    /// cores' worth of CPU time.
    pub fn confine(name: &str, cores: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cores > 0.0 && cores.is_finite(),
            "--database-cpus must be a positive number of cores"
        );
        let hierarchy = Hierarchy::find()?;
        let group = hierarchy.root().join(GROUP);
        if group.exists() {
            // Left by a run that was killed: its processes go back to the root.
            move_until_none(hierarchy.root(), || procs_of(&group))?;
        } else {
            std::fs::create_dir(&group)
                .with_context(|| format!("creating {} (this needs root)", group.display()))?;
        }
        let first = *pids_named(name)
            .first()
            .with_context(|| format!("no `{name}` process runs on this machine"))?;
        let home = hierarchy.root().join(hierarchy.group_of(first)?);
        let quota = (cores * PERIOD_MICROS as f64).round() as u64;
        hierarchy.set_quota(&group, quota)?;
        let cap = Self {
            name: name.to_owned(),
            group,
            home,
        };
        move_until_none(&cap.group, || {
            let inside = procs_of(&cap.group)?;
            Ok(pids_named(name)
                .into_iter()
                .map(|pid| pid.to_string())
                .filter(|pid| !inside.contains(pid))
                .collect())
        })?;
        Ok(cap)
    }
}

impl Drop for Cap {
    fn drop(&mut self) {
        if let Err(error) = move_until_none(&self.home, || procs_of(&self.group))
            .and_then(|()| Ok(std::fs::remove_dir(&self.group)?))
        {
            eprintln!(
                "could not release the `{}` processes from {}: {error:#}",
                self.name,
                self.group.display()
            );
        }
    }
}

/// Moves the processes `pending` lists into the group `to`, and again while
/// it lists some: a process may start while the others move (a backend or
/// an autovacuum worker forked by a postmaster not yet moved).
fn move_until_none(
    to: &Path,
    mut pending: impl FnMut() -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<()> {
    for _ in 0..10 {
        let pids = pending()?;
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            // A process that ended meanwhile cannot move; that is fine.
            let _ = std::fs::write(to.join("cgroup.procs"), pid);
        }
    }
    anyhow::bail!("processes kept starting outside {}", to.display())
}

/// The processes in `group`.
fn procs_of(group: &Path) -> anyhow::Result<Vec<String>> {
    let procs = std::fs::read_to_string(group.join("cgroup.procs"))?;
    Ok(procs.lines().map(str::to_owned).collect())
}

/// The cgroup hierarchy that holds the CPU controller.
enum Hierarchy {
    /// cgroup v2, mounted at `/sys/fs/cgroup`.
    Unified,
    /// cgroup v1's `cpu` controller, mounted at `/sys/fs/cgroup/cpu`.
    Cpu,
}

impl Hierarchy {
    fn find() -> anyhow::Result<Self> {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            // Children of the root get the CPU controller only when asked.
            std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu")
                .context("enabling the cpu controller of cgroup v2 (this needs root)")?;
            Ok(Self::Unified)
        } else if Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() {
            Ok(Self::Cpu)
        } else {
            anyhow::bail!("no cgroup CPU controller at /sys/fs/cgroup (Linux only)")
        }
    }

    fn root(&self) -> &'static Path {
        Path::new(match self {
            Self::Unified => "/sys/fs/cgroup",
            Self::Cpu => "/sys/fs/cgroup/cpu",
        })
    }

    /// The group of `pid`, relative to the root.
    fn group_of(&self, pid: u32) -> anyhow::Result<PathBuf> {
        let lines = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        self.group_in(&lines)
            .with_context(|| format!("process {pid} is in no CPU cgroup"))
    }

    /// The group named by `/proc/<pid>/cgroup`'s `lines`: v2 writes
    /// `0::/path`, v1 a line per hierarchy such as `3:cpu,cpuacct:/path`.
    fn group_in(&self, lines: &str) -> Option<PathBuf> {
        lines.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let wanted = match self {
                Self::Unified => controllers.is_empty(),
                Self::Cpu => controllers.split(',').any(|c| c == "cpu"),
            };
            wanted.then(|| PathBuf::from(path.trim_start_matches('/')))
        })
    }

    fn set_quota(&self, group: &Path, quota_micros: u64) -> anyhow::Result<()> {
        match self {
            Self::Unified => std::fs::write(
                group.join("cpu.max"),
                format!("{quota_micros} {PERIOD_MICROS}"),
            )?,
            Self::Cpu => {
                std::fs::write(group.join("cpu.cfs_period_us"), PERIOD_MICROS.to_string())?;
                std::fs::write(group.join("cpu.cfs_quota_us"), quota_micros.to_string())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "9:name=systemd:/\n4:memory:/jobs/7\n2:cpuacct,cpu:/db\n0::/\n";

    #[test]
    fn v1_names_the_group_of_the_cpu_controller_only() {
        assert_eq!(Hierarchy::Cpu.group_in(V1), Some(PathBuf::from("db")));
        assert_eq!(Hierarchy::Cpu.group_in("4:memory:/jobs/7\n"), None);
    }

    #[test]
    fn v2_names_the_unified_group() {
        assert_eq!(
            Hierarchy::Unified.group_in("0::/system.slice/postgresql.service\n"),
            Some(PathBuf::from("system.slice/postgresql.service"))
        );
        assert_eq!(Hierarchy::Unified.group_in(V1), Some(PathBuf::new()));
    }
}
