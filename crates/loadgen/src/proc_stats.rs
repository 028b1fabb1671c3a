//! Memory and CPU of a process (or of this thread) from Linux `/proc`.
//!
//! A server is measured with its descendants ([`sample_tree`]): nginx (Nchan) serves from
//! worker processes under the master whose pid one knows. Their `VmRSS` are added up, so
//! memory shared between them (nginx's shared zones) counts once per process touching it.
//!
//! CPU times in `/proc/<pid>/stat` are in clock ticks of `USER_HZ`, which is 100 on every
//! mainstream Linux architecture (the kernel's ABI fixes it regardless of `CONFIG_HZ`), so
//! they have a 10 ms granularity: measure phases of seconds.

use std::io;

use serde::{Deserialize, Serialize};

/// `USER_HZ`: clock ticks per second in `/proc/*/stat`.
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Resident set size in bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// User + system CPU seconds so far.
    pub cpu_s: f64,
    /// Which processes were added up ([`sample_tree`]; 0 for one process): when it
    /// differs between two readings a process ended or was replaced (an nginx worker
    /// respawned) and their difference means nothing.
    #[serde(default)]
    pub processes: u64,
}

/// Which CPU times of `/proc/…/stat` to add up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Times {
    /// utime + stime.
    Own,
    /// utime + stime + cutime + cstime (children that were waited for).
    WithChildren,
}

/// Reads process `pid`.
pub fn sample(pid: u32) -> io::Result<Sample> {
    let dir = format!("/proc/{pid}");
    Ok(Sample {
        rss_bytes: rss_bytes(&std::fs::read_to_string(format!("{dir}/status"))?)?,
        cpu_s: cpu_seconds(&std::fs::read_to_string(format!("{dir}/stat"))?, Times::Own)?,
        processes: 0,
    })
}

/// Reads process `pid` and all its descendants, added up; also says how many
/// processes that was. Fails only when `pid` itself cannot be read.
pub fn sample_tree(pid: u32) -> io::Result<(Sample, usize)> {
    let mut total = sample(pid)?;
    let mut count = 1;
    let mut pids = vec![pid];
    for child in descendants(pid) {
        // a process may end between the listing and the reading
        if let Ok(s) = sample(child) {
            total.rss_bytes += s.rss_bytes;
            total.cpu_s += s.cpu_s;
            count += 1;
            pids.push(child);
        }
    }
    total.processes = fingerprint(&mut pids);
    Ok((total, count))
}

/// Pids of the descendants of `pid` (from the parent pids in `/proc/*/stat`).
fn descendants(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parent_of = Vec::new();
    for entry in dir.flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat"))
            && let Some(ppid) = parent_pid(&stat)
        {
            parent_of.push((p, ppid));
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parent_of {
            if pp == parent && p != pid && !found.contains(&p) {
                found.push(p);
                frontier.push(p);
            }
        }
    }
    found
}

/// Field 4 (ppid) of a `/proc/<pid>/stat` text.
fn parent_pid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// A value that changes when the set of `pids` does.
fn fingerprint(pids: &mut [u32]) -> u64 {
    use std::hash::{Hash, Hasher};
    pids.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pids.hash(&mut h);
    h.finish()
}

/// Reads this process; CPU includes the children that were waited for when `children`.
pub fn sample_self(children: bool) -> io::Result<Sample> {
    let times = if children {
        Times::WithChildren
    } else {
        Times::Own
    };
    Ok(Sample {
        rss_bytes: rss_bytes(&std::fs::read_to_string("/proc/self/status")?)?,
        cpu_s: cpu_seconds(&std::fs::read_to_string("/proc/self/stat")?, times)?,
        processes: 0,
    })
}

/// CPU seconds of the calling thread.
pub fn thread_cpu_s() -> io::Result<f64> {
    cpu_seconds(
        &std::fs::read_to_string("/proc/thread-self/stat")?,
        Times::Own,
    )
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
fn rss_bytes(status: &str) -> io::Result<u64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or_else(|| invalid("no VmRSS in status"))?;
    let kib: u64 = line
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| invalid("bad VmRSS"))?;
    Ok(kib * 1024)
}

/// CPU seconds of a `/proc/<pid>/stat` text.
fn cpu_seconds(stat: &str, times: Times) -> io::Result<f64> {
    // The command name (field 2) is in parentheses and may hold spaces: count fields
    // after its closing parenthesis. Field 3 (state) is then the first one.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| invalid("bad stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| invalid("bad stat field"))
    };
    let mut ticks = field(14)? + field(15)?;
    if times == Times::WithChildren {
        ticks += field(16)? + field(17)?;
    }
    Ok(ticks as f64 / TICKS_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat = "1234 (my (odd) prog) S 1 2 3 4 5 6 7 8 9 10 250 50 7 3 20 0 1 0 100 200 300";
        assert_eq!(cpu_seconds(stat, Times::Own).expect("valid"), 3.0);
        assert_eq!(cpu_seconds(stat, Times::WithChildren).expect("valid"), 3.1);
        assert!(cpu_seconds("garbage", Times::Own).is_err());
    }

    #[test]
    fn parses_status() {
        let status = "Name:\tx\nVmPeak:\t  999 kB\nVmRSS:\t    2048 kB\nThreads: 1\n";
        assert_eq!(rss_bytes(status).expect("valid"), 2048 * 1024);
    }

    #[test]
    fn finds_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep runs");
        let me = std::process::id();
        assert!(descendants(me).contains(&child.id()));
        let (tree, n) = sample_tree(me).expect("own tree");
        assert!(n >= 2);
        // The tree holds this process and the child: more than the child alone (whose
        // size, unlike this test process's, does not move while the other tests run).
        let child_rss = sample(child.id()).expect("child").rss_bytes;
        assert!(
            tree.rss_bytes > child_rss,
            "{} <= {child_rss}",
            tree.rss_bytes
        );
        let _ = child.kill();
        let _ = child.wait();
        let (after, _) = sample_tree(me).expect("own tree");
        assert_ne!(tree.processes, after.processes, "the child left the tree");
        assert_eq!(parent_pid("7 (a) b) S 42 7 7"), Some(42));
    }

    #[test]
    fn reads_itself() {
        let me = sample(std::process::id()).expect("own /proc entry");
        assert!(me.rss_bytes > 0);
        let s = sample_self(true).expect("self");
        assert!(s.rss_bytes > 0);
        assert!(thread_cpu_s().expect("thread") >= 0.0);
    }
}
