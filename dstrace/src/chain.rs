//! The wait chain: from a task in D to the lock it waits for, to the lock's holder
//! and what that one does, to the mount, to the server or daemon at the end, with
//! the state of each link. What an engineer in an incident otherwise rebuilds by
//! hand from `ps`, `/proc/PID/stack`, `/proc/locks` and `lsof`.
//!
//! Everything here comes from the record and from `/proc` and `/sys/fs/fuse`
//! (files the kernel answers itself); nothing under a diagnosed mount is touched.

use std::path::Path;

use dstrace_common::{FuseKey, FuseRequest, RpcCall, RpcKey};

use crate::{
    clock::human_duration,
    procfs,
    record::{comm_string, TaskState, Wait},
    rpc,
};

/// One link of a chain (in JSON: an object whose `link` names the kind).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "link", rename_all = "snake_case")]
pub enum Link {
    /// A task and what it does now.
    Task {
        /// Thread id.
        tid: u32,
        /// Process id (`tgid` in JSON, as everywhere).
        #[serde(rename = "tgid")]
        pid: u32,
        /// Command name.
        comm: String,
        /// State letter (`D`, `S`, `T`, ...), `None` once it is gone.
        state: Option<char>,
        /// Where it is blocked, if it is.
        function: Option<String>,
    },
    /// A kernel lock (by its name, e.g. `i_rwsem of inode 1 (0:55)`).
    Lock {
        /// What the lock is.
        name: String,
    },
    /// A file lock someone holds on the file.
    FileLock {
        /// `POSIX`, `FLOCK`, ...
        kind: String,
    },
    /// The mount it all happens on.
    Mount {
        /// Mount point.
        mountpoint: String,
        /// Filesystem type.
        fstype: String,
        /// Source (`server:/export`, FUSE daemon name, device).
        source: String,
    },
    /// The FUSE requests of the mount not answered yet: the daemon has been
    /// silent at least as long as the oldest has waited.
    FuseRequests {
        /// How many are in flight.
        in_flight: u64,
        /// The oldest one's age, in nanoseconds (`oldest_ms` in JSON).
        #[serde(rename = "oldest_ms", serialize_with = "crate::output::serialize_ms")]
        oldest_ns: u64,
        /// The oldest one's operation (`LOOKUP`, ...).
        oldest_opcode: String,
        /// Who sent the oldest one: thread id.
        oldest_tid: u32,
        /// Its command name.
        oldest_comm: String,
    },
    /// A FUSE daemon: a process with `/dev/fuse` open (on a machine with several
    /// FUSE daemons, each is listed).
    FuseDaemon {
        /// Its process id.
        #[serde(rename = "tgid")]
        pid: u32,
        /// Its command name.
        comm: String,
        /// Its state letter now (`T`: stopped).
        state: Option<char>,
        /// Requests of this mount's connection waiting for an answer
        /// (`/sys/fs/fuse/connections/N/waiting`), when fusectl is mounted.
        waiting: Option<u64>,
    },
    /// The RPCs the task began that are still in flight (NFS, NLM, ...), from the
    /// sunrpc tracepoints: the one with the most major timeouts is described.
    Rpc {
        /// The RPC program (`nfs`, `lockd`, ...; empty when not seen).
        program: String,
        /// The program's version (0 when not seen).
        version: u32,
        /// The procedure (`GETATTR`, `LOCK`, `WRITE`, ...; empty when not seen).
        procedure: String,
        /// The transaction id of its last transmission, when one was seen.
        xid: Option<u32>,
        /// How long ago it began (`age_ms` in JSON); `None` if before tracing.
        #[serde(rename = "age_ms", serialize_with = "crate::output::serialize_opt_ms")]
        age_ns: Option<u64>,
        /// Transmissions seen (more than one: retransmitted).
        transmits: u32,
        /// Major timeouts seen: the server has not answered in the mount's
        /// `timeo` and `retrans` (the kernel logs "not responding").
        timeouts: u32,
        /// Since the first major timeout (`not_responding_ms` in JSON).
        #[serde(rename = "not_responding_ms", serialize_with = "crate::output::serialize_opt_ms")]
        not_responding_ns: Option<u64>,
        /// Other RPCs of the task in flight.
        others: u32,
    },
    /// The NFS server of the mount.
    NfsServer {
        /// Its address (`addr=` of the mount options, or the host of the source).
        address: String,
        /// The NFS version of the mount (`vers=` of its options).
        nfs_version: Option<String>,
    },
}

/// What the chains of one moment are built from, beside `/proc`.
#[derive(Default)]
pub struct Context {
    /// FUSE requests in flight (from the kernel side), with the time of the read.
    pub fuse: Vec<(FuseKey, FuseRequest)>,
    /// RPC tasks in flight (from the kernel side).
    pub rpc: Vec<(RpcKey, RpcCall)>,
    /// CLOCK_MONOTONIC when they were read.
    pub now_ns: u64,
}

/// The chain of a wait: the waiting task first.
pub fn chain(wait: &Wait, context: &Context) -> Vec<Link> {
    let mut links = vec![Link::Task {
        tid: wait.tid,
        pid: wait.pid,
        comm: wait.comm.clone(),
        state: Some(if wait.state == TaskState::Idle { 'I' } else { 'D' }),
        function: wait.blocked_in.clone(),
    }];
    if let Some(lock) = &wait.lock {
        links.push(Link::Lock { name: lock.name() });
        if let Some(holder) = &lock.holder {
            links.push(Link::Task {
                tid: holder.tid,
                pid: holder.pid,
                comm: holder.comm.clone(),
                state: holder.state,
                function: holder.function.clone(),
            });
        }
    }
    for held in &wait.on.file_locks {
        links.push(Link::FileLock { kind: held.kind.clone() });
        if let Some(pid) = held.pid {
            links.push(task_now(pid, pid));
        }
    }
    if let Some(mount) = &wait.on.mount {
        links.push(Link::Mount {
            mountpoint: mount.mount_point.to_string_lossy().into_owned(),
            fstype: mount.fs_type.clone(),
            source: mount.source.clone(),
        });
        if mount.fs_type == "fuse" || mount.fs_type.starts_with("fuse.") || mount.fs_type == "fuseblk" {
            let dev = (mount.dev.0 << 20) | mount.dev.1;
            let requests: Vec<&FuseRequest> =
                context.fuse.iter().filter(|(key, _)| key.dev == dev).map(|(_, request)| request).collect();
            if let Some(oldest) = requests.iter().min_by_key(|request| request.sent_ns) {
                links.push(Link::FuseRequests {
                    in_flight: requests.len() as u64,
                    oldest_ns: context.now_ns.saturating_sub(oldest.sent_ns),
                    oldest_opcode: fuse_opcode(oldest.opcode),
                    oldest_tid: oldest.task.tid,
                    oldest_comm: comm_string(&oldest.task.comm),
                });
            }
            let waiting = fuse_waiting(mount.dev.1);
            links.extend(
                fuse_daemons(Path::new("/proc")).into_iter().map(|(pid, comm, state)| Link::FuseDaemon {
                    pid,
                    comm,
                    state,
                    waiting,
                }),
            );
        } else if mount.fs_type.starts_with("nfs") {
            links.extend(rpc::link(wait.tid, &context.rpc, context.now_ns));
            if let Some(address) = nfs_server(&mount.super_options, &mount.source) {
                links.push(Link::NfsServer { address, nfs_version: rpc::nfs_version(&mount.super_options) });
            }
            return links;
        }
    }
    // The mount unknown (a path not resolved, or a kernel that cannot say): the
    // RPC still says what the task waits for.
    links.extend(rpc::link(wait.tid, &context.rpc, context.now_ns));
    links
}

/// A task as `/proc` shows it now.
pub(crate) fn task_now(pid: u32, tid: u32) -> Link {
    let task = procfs::task(Path::new("/proc"), pid, tid);
    Link::Task {
        tid,
        pid,
        comm: task.as_ref().map(|t| t.comm.clone()).unwrap_or_default(),
        state: task.as_ref().map(|t| t.state),
        function: task.as_ref().and_then(procfs::ProcTask::blocked_in),
    }
}

/// Processes with `/dev/fuse` open, with their command and state: `readlink` of
/// `/proc/PID/fd/*`, which the kernel answers from its own records.
pub fn fuse_daemons(proc_root: &Path) -> Vec<(u32, String, Option<char>)> {
    let Ok(entries) = std::fs::read_dir(proc_root) else { return Vec::new() };
    let mut daemons: Vec<(u32, String, Option<char>)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|target| target == Path::new("/dev/fuse"))
                })
            })
        })
        .map(|pid| {
            let task = procfs::task(proc_root, pid, pid);
            (pid, task.as_ref().map(|t| t.comm.clone()).unwrap_or_default(), task.map(|t| t.state))
        })
        .collect();
    daemons.sort();
    daemons
}

/// The name of a FUSE operation (include/uapi/linux/fuse.h).
pub fn fuse_opcode(opcode: u32) -> String {
    let name = match opcode {
        1 => "LOOKUP",
        3 => "GETATTR",
        4 => "SETATTR",
        5 => "READLINK",
        8 => "MKNOD",
        9 => "MKDIR",
        10 => "UNLINK",
        11 => "RMDIR",
        12 => "RENAME",
        14 => "OPEN",
        15 => "READ",
        16 => "WRITE",
        17 => "STATFS",
        18 => "RELEASE",
        20 => "FSYNC",
        25 => "FLUSH",
        26 => "INIT",
        27 => "OPENDIR",
        28 => "READDIR",
        31 => "GETLK",
        32 => "SETLK",
        33 => "SETLKW",
        34 => "ACCESS",
        35 => "CREATE",
        44 => "READDIRPLUS",
        45 => "RENAME2",
        52 => "STATX",
        other => return format!("opcode {other}"),
    };
    name.to_owned()
}

/// Requests waiting on the FUSE connection of a mount (its device minor), when the
/// fusectl filesystem is mounted.
fn fuse_waiting(minor: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/fs/fuse/connections/{minor}/waiting")).ok()?.trim().parse().ok()
}

/// The NFS server of a mount: `addr=` in its options, or the host of its source.
pub fn nfs_server(super_options: &str, source: &str) -> Option<String> {
    super_options
        .split(',')
        .find_map(|option| option.strip_prefix("addr="))
        .map(str::to_owned)
        .or_else(|| source.rsplit_once(":/").map(|(host, _)| host.to_owned()))
}

/// The chain as one line: `stat[7] D in d_alloc_parallel -> i_rwsem of ... -> ...`.
pub fn text(links: &[Link]) -> String {
    links
        .iter()
        .map(|link| match link {
            Link::Task { tid, comm, state, function, .. } => {
                let mut text = format!("{comm}[{tid}]");
                match (state, function) {
                    (Some(state), Some(function)) => text.push_str(&format!(" {state} in {function}")),
                    (Some(state), None) => text.push_str(&format!(" {state}")),
                    (None, _) => text.push_str(" (gone)"),
                }
                text
            }
            Link::Lock { name } => name.clone(),
            Link::FileLock { kind } => format!("{kind} file lock"),
            Link::Mount { mountpoint, fstype, source } => format!("{fstype} {mountpoint} ({source})"),
            Link::FuseRequests { in_flight, oldest_ns, oldest_opcode, oldest_tid, oldest_comm } => format!(
                "{in_flight} FUSE requests unanswered, the oldest for {} ({oldest_opcode} from {oldest_comm}[{oldest_tid}])",
                human_duration(*oldest_ns)
            ),
            Link::FuseDaemon { pid, comm, state, waiting } => {
                let mut text = format!("FUSE daemon {comm}[{pid}]");
                match state {
                    Some('T') => text.push_str(" STOPPED"),
                    Some(state) => text.push_str(&format!(" {state}")),
                    None => text.push_str(" (gone)"),
                }
                if let Some(waiting) = waiting {
                    text.push_str(&format!(", {waiting} requests waiting"));
                }
                text
            }
            Link::Rpc {
                program,
                version,
                procedure,
                xid,
                age_ns,
                transmits,
                timeouts,
                not_responding_ns,
                others,
            } => {
                let mut text = rpc::call_name(program, *version, procedure);
                if let Some(xid) = xid {
                    text.push_str(&format!(" xid 0x{xid:08x}"));
                }
                if let Some(age) = age_ns {
                    text.push_str(&format!(" unanswered for {}", human_duration(*age)));
                }
                if *transmits > 1 {
                    text.push_str(&format!(", sent {transmits} times"));
                }
                match (timeouts, not_responding_ns) {
                    (0, _) => {}
                    (n, Some(since)) => text.push_str(&format!(
                        ", {n} major timeout{}: server NOT RESPONDING for {}",
                        if *n == 1 { "" } else { "s" },
                        human_duration(*since)
                    )),
                    (n, None) => text.push_str(&format!(", {n} major timeouts: server NOT RESPONDING")),
                }
                if *others > 0 {
                    text.push_str(&format!(" (and {others} more RPCs)"));
                }
                text
            }
            Link::NfsServer { address, nfs_version } => match nfs_version {
                Some(version) => format!("NFS server {address} (v{version})"),
                None => format!("NFS server {address}"),
            },
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfs_servers() {
        assert_eq!(
            nfs_server("rw,vers=4.2,addr=10.0.0.5,clientaddr=10.0.0.9", "x:/y"),
            Some("10.0.0.5".into())
        );
        assert_eq!(nfs_server("rw", "fileserver:/export"), Some("fileserver".into()));
        assert_eq!(nfs_server("rw", "/dev/sda1"), None);
    }

    #[test]
    fn chains_read_as_one_line() {
        let links = vec![
            Link::Task {
                tid: 7,
                pid: 7,
                comm: "touch".into(),
                state: Some('D'),
                function: Some("path_openat".into()),
            },
            Link::Lock { name: "i_rwsem of inode 1 (0:55)".into() },
            Link::Task { tid: 6, pid: 6, comm: "touch".into(), state: Some('S'), function: None },
            Link::Mount { mountpoint: "/mnt/x".into(), fstype: "fuse.sshfs".into(), source: "sshfs".into() },
            Link::FuseDaemon { pid: 5, comm: "sshfs".into(), state: Some('T'), waiting: Some(3) },
        ];
        assert_eq!(
            text(&links),
            "touch[7] D in path_openat -> i_rwsem of inode 1 (0:55) -> touch[6] S -> fuse.sshfs /mnt/x (sshfs) \
             -> FUSE daemon sshfs[5] STOPPED, 3 requests waiting"
        );
    }

    #[test]
    fn fuse_opcodes() {
        assert_eq!(fuse_opcode(1), "LOOKUP");
        assert_eq!(fuse_opcode(999), "opcode 999");
    }

    #[test]
    fn this_process_is_no_fuse_daemon() {
        let daemons = fuse_daemons(Path::new("/proc"));
        assert!(daemons.iter().all(|(pid, _, _)| *pid != std::process::id()));
    }
}
