//! The cgroup of a task, by path (`/system.slice/nfs.service`,
//! `/kubepods.slice/.../cri-containerd-....scope`): what names its container or
//! service. Read from the v2 line of `/proc/PID/cgroup` (`0::/path`), under the
//! deadline of every `/proc` read that could wait, and kept by cgroup id.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use crate::resolve::procfs;

/// The most cgroups (and processes of unknown cgroup) kept.
const KEPT: usize = 4096;
/// How long the cgroup of a process whose cgroup id is unknown is reused.
const PID_TTL: Duration = Duration::from_secs(1);

/// Cgroup paths seen.
#[derive(Default)]
pub struct Cgroups {
    /// By cgroup v2 id: a cgroup keeps its path for its life.
    by_id: HashMap<u64, String>,
    /// By process, for tasks whose cgroup id is not known (seen in `/proc`).
    by_pid: HashMap<u32, (Instant, Option<String>)>,
}

impl Cgroups {
    /// The cgroup v2 path of process `pid`, whose cgroup id is `id` (0: unknown).
    pub fn path(&mut self, pid: u32, id: u64) -> Option<String> {
        if id != 0 {
            if let Some(path) = self.by_id.get(&id) {
                return Some(path.clone());
            }
        } else if let Some((seen, path)) = self.by_pid.get(&pid) {
            if seen.elapsed() < PID_TTL {
                return path.clone();
            }
        }
        let path = read(pid);
        if id != 0 {
            if let Some(path) = &path {
                if self.by_id.len() >= KEPT {
                    self.by_id.clear();
                }
                self.by_id.insert(id, path.clone());
            }
        } else {
            if self.by_pid.len() >= KEPT {
                self.by_pid.clear();
            }
            self.by_pid.insert(pid, (Instant::now(), path.clone()));
        }
        path
    }
}

/// The cgroup v2 path of a process now, if it exists and is in one.
fn read(pid: u32) -> Option<String> {
    let text =
        procfs::read_text_bounded(Path::new(&format!("/proc/{pid}/cgroup")), procfs::BOUNDED_READ).ok()?;
    parse(&text)
}

/// The path of the v2 line (`0::/path`) of a `/proc/PID/cgroup` text.
pub fn parse(text: &str) -> Option<String> {
    text.lines().find_map(|line| line.strip_prefix("0::")).map(|path| path.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_line_names_the_cgroup() {
        let text = "12:pids:/user.slice\n0::/system.slice/nfs-server.service\n";
        assert_eq!(parse(text).as_deref(), Some("/system.slice/nfs-server.service"));
        assert_eq!(parse("1:name=systemd:/init.scope\n"), None, "v1 only");
    }

    #[test]
    fn this_process_is_in_a_cgroup() {
        let mut cgroups = Cgroups::default();
        let mine = cgroups.path(std::process::id(), 0);
        assert!(mine.as_deref().is_some_and(|path| path.starts_with('/')), "{mine:?}");
        assert_eq!(cgroups.path(u32::MAX, 0), None);
    }
}
