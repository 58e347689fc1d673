//! The wait chain: from a task in D to the lock it waits for, to the lock's holder
//! and what that one does, to the mount, to the server or daemon at the end, with
//! the state of each link. What an engineer in an incident otherwise rebuilds by
//! hand from `ps`, `/proc/PID/stack`, `/proc/locks` and `lsof`.
//!
//! Everything here comes from the record, the task iterator's look
//! ([`crate::model::seen`]: the holders' own waits, so a chain goes several hops,
//! and the processes serving a FUSE connection), and from `/proc` and
//! `/sys/fs/fuse` (files the kernel answers itself); nothing under a diagnosed
//! mount is touched.

use std::path::Path;

use dstrace_common::{FuseKey, FuseRequest, RpcCall, RpcKey};

use crate::{
    kernel::{
        decode::{comm_string, state_letter},
        iter::{FuseFileSeen, FuseRequestSeen},
    },
    model::{
        link::Link,
        rpc,
        seen::Seen,
        wait::{Holder, TaskState, Wait},
    },
    resolve::procfs,
};

/// Holders followed past the first one, at most: a chain of locks held by tasks
/// waiting for other locks.
const MAX_HOPS: usize = 4;

/// What the chains of one moment are built from, beside `/proc`.
#[derive(Default)]
pub struct Context {
    /// FUSE requests in flight (from the kernel side), with the time of the read.
    pub fuse: Vec<(FuseKey, FuseRequest)>,
    /// RPC tasks in flight (from the kernel side).
    pub rpc: Vec<(RpcKey, RpcCall)>,
    /// CLOCK_MONOTONIC when they were read.
    pub now_ns: u64,
    /// The task iterator's look (empty when it did not run).
    pub seen: Seen,
}

impl Wait {
    /// Works out the wait chain (for a wait still going on): the chain is built
    /// from the wait, so it is added here rather than where the wait is made.
    pub fn with_chain(mut self, context: &Context) -> Wait {
        self.chain = chain(&self, context);
        self
    }
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
            links.push(holder_link(holder));
            hops(holder.tid, wait.tid, &context.seen, &mut links);
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
                    oldest_ns: Some(context.now_ns.saturating_sub(oldest.sent_ns)),
                    oldest_opcode: fuse_opcode(oldest.opcode),
                    oldest_tid: oldest.task.tid,
                    oldest_comm: comm_string(&oldest.task.comm),
                    read_by_daemon: None,
                });
            } else if let Some(link) = pending_requests(&context.seen, dev) {
                links.push(link);
            }
            links.extend(daemons(&context.seen, dev, mount.dev.1));
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

/// The link of a lock's holder, as it was when looked at.
fn holder_link(holder: &Holder) -> Link {
    Link::Task {
        tid: holder.tid,
        pid: holder.pid,
        comm: holder.comm.clone(),
        state: holder.state,
        function: holder.function.clone(),
    }
}

/// The holders past the first (`holder`, of the wait of `waiter`): while the
/// holder itself waits for a lock the look proves, that lock and its holder.
fn hops(mut holder: u32, waiter: u32, seen: &Seen, links: &mut Vec<Link>) {
    let mut visited = vec![waiter, holder];
    for _ in 0..MAX_HOPS {
        let Some(next) = seen.task(holder).and_then(|task| seen.lock_of(task)) else { return };
        links.push(Link::Lock { name: next.name() });
        let Some(next_holder) = next.holder else { return };
        links.push(holder_link(&next_holder));
        if visited.contains(&next_holder.tid) {
            // A cycle: a deadlock, shown once around.
            return;
        }
        visited.push(next_holder.tid);
        holder = next_holder.tid;
    }
}

/// The FUSE requests of the connection `dev` (kernel encoding) not answered, as the
/// look read them from the kernel: those queued on the connection (every one of its
/// `/dev/fuse` files says the same) and those its daemon read from each of its
/// files (each open file's own processing queue, counted once however many
/// processes hold it); the oldest by age where the kernel says when a request was
/// made (6.14+), else the first queued, else the first read.
fn pending_requests(seen: &Seen, dev: u32) -> Option<Link> {
    let files: Vec<&FuseFileSeen> = seen.serving(dev).collect();
    let queue = files.iter().copied().max_by_key(|file| file.pending);
    let queued = queue.map_or(0, |file| file.pending);
    let mut requests: Vec<&FuseRequestSeen> =
        queue.into_iter().flat_map(|file| file.requests.iter().filter(|request| !request.read)).collect();
    let mut fuse_devs = Vec::new();
    let mut read = 0u64;
    for file in files {
        if fuse_devs.contains(&file.fuse_dev) {
            continue;
        }
        fuse_devs.push(file.fuse_dev);
        read += u64::from(file.processing);
        requests.extend(file.requests.iter().filter(|request| request.read));
    }
    let in_flight = u64::from(queued) + read;
    if in_flight == 0 {
        return None;
    }
    let oldest = requests
        .iter()
        .copied()
        .filter(|request| request.age_ns.is_some())
        .max_by_key(|request| request.age_ns)
        .or_else(|| requests.first().copied())?;
    let comm = seen
        .task(oldest.pid)
        .map(|task| task.task.comm.clone())
        .or_else(|| procfs::task(Path::new("/proc"), oldest.pid, oldest.pid).map(|task| task.comm))
        .unwrap_or_default();
    Some(Link::FuseRequests {
        in_flight,
        oldest_ns: oldest.age_ns,
        oldest_opcode: fuse_opcode(oldest.opcode),
        oldest_tid: oldest.pid,
        oldest_comm: comm,
        read_by_daemon: Some(read),
    })
}

/// The daemons of the FUSE connection `dev` (kernel encoding; `minor` its
/// number under /sys/fs/fuse/connections): the processes holding a `/dev/fuse`
/// file of that connection, from the look. Without a look, a process is named
/// only when it is provably the one: the only process with `/dev/fuse` open on a
/// machine with only this FUSE connection.
fn daemons(seen: &Seen, dev: u32, minor: u32) -> Vec<Link> {
    let waiting = fuse_waiting(minor);
    if seen.looked {
        let mut daemons: Vec<Link> = Vec::new();
        for file in seen.serving(dev) {
            if daemons.iter().any(|link| matches!(link, Link::FuseDaemon { pid, .. } if *pid == file.tgid)) {
                continue;
            }
            daemons.push(Link::FuseDaemon {
                pid: file.tgid,
                comm: file.comm.clone(),
                state: Some(state_letter(file.state)),
                waiting: waiting.or(Some(u64::from(file.num_waiting))),
            });
        }
        return daemons;
    }
    let only_connection = fuse_connections().is_some_and(|connections| connections == [minor]);
    match fuse_daemons(Path::new("/proc")).as_slice() {
        [(pid, comm, state)] if only_connection => {
            vec![Link::FuseDaemon { pid: *pid, comm: comm.clone(), state: *state, waiting }]
        }
        _ => Vec::new(),
    }
}

/// The FUSE connections the kernel lists (`/sys/fs/fuse/connections`, when
/// fusectl is mounted).
fn fuse_connections() -> Option<Vec<u32>> {
    let entries = std::fs::read_dir("/sys/fs/fuse/connections").ok()?;
    let mut connections: Vec<u32> =
        entries.filter_map(Result::ok).filter_map(|entry| entry.file_name().to_str()?.parse().ok()).collect();
    connections.sort_unstable();
    Some(connections)
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
    fn fuse_opcodes() {
        assert_eq!(fuse_opcode(1), "LOOKUP");
        assert_eq!(fuse_opcode(999), "opcode 999");
    }

    /// In flight: the connection's queue once, and each open file's processing
    /// queue once however many processes hold it; the oldest by age, else the
    /// first queued, else the first read.
    #[test]
    fn fuse_requests_count_the_queued_and_those_each_file_s_daemon_read() {
        use crate::kernel::iter::{FuseFileSeen, FuseRequestSeen};
        let request = |pid: u32, read: bool, age_ns: Option<u64>| FuseRequestSeen {
            opcode: if read { 16 } else { 1 },
            unique: 2,
            nodeid: 1,
            pid,
            age_ns,
            read,
        };
        let file = |tgid: u32, fuse_dev: u64, pending: u32, requests: Vec<FuseRequestSeen>| FuseFileSeen {
            tgid,
            tid: tgid,
            comm: "sshfs".into(),
            state: 1,
            fd: 3,
            dev: 42,
            connected: true,
            num_waiting: 3,
            pending,
            processing: requests.iter().filter(|request| request.read).count() as u32,
            fuse_dev,
            requests,
        };
        let queued = request(7, false, None);
        let read = request(8, true, None);
        // Two processes share one open file (a fork), a third has a clone of its own.
        let files = vec![
            file(100, 0xa, 1, vec![queued.clone(), read.clone()]),
            file(101, 0xa, 1, vec![queued.clone(), read.clone()]),
            file(102, 0xb, 1, vec![queued.clone(), request(9, true, None)]),
        ];
        let link = |files: Vec<FuseFileSeen>| pending_requests(&Seen::from_parts(Vec::new(), files), 42);
        let Some(Link::FuseRequests { in_flight, oldest_tid, oldest_opcode, read_by_daemon, .. }) =
            link(files.clone())
        else {
            panic!("no link")
        };
        assert_eq!((in_flight, read_by_daemon), (3, Some(2)), "one queued, one read on each of two files");
        assert_eq!((oldest_tid, oldest_opcode.as_str()), (7, "LOOKUP"), "the first queued without ages");
        // Only read ones: the first read.
        let only_read = vec![file(100, 0xa, 0, vec![read.clone()])];
        assert!(matches!(link(only_read), Some(Link::FuseRequests { oldest_tid: 8, in_flight: 1, .. })));
        // With ages: the oldest, read or not.
        let aged = vec![file(100, 0xa, 1, vec![request(7, false, Some(5)), request(8, true, Some(9))])];
        assert!(matches!(link(aged), Some(Link::FuseRequests { oldest_tid: 8, oldest_ns: Some(9), .. })));
        assert_eq!(link(vec![file(100, 0xa, 0, Vec::new())]), None, "nothing unanswered");
    }

    #[test]
    fn this_process_is_no_fuse_daemon() {
        let daemons = fuse_daemons(Path::new("/proc"));
        assert!(daemons.iter().all(|(pid, _, _)| *pid != std::process::id()));
    }

    #[test]
    fn a_chain_follows_the_holders_and_names_only_its_connections_daemon() {
        use crate::{
            kernel::iter::{BlockerKind, BlockerSeen, FuseFileSeen, FuseRequestSeen, Peer, TaskSeen},
            model::{seen::SeenTask, wait::LockInfo},
            resolve::{attribution::Attribution, mounts},
        };
        let task = |tid: u32, state: u32, owner: Option<u32>, top: &str| SeenTask {
            task: TaskSeen {
                blocker: owner.map(|owner| BlockerSeen {
                    lock: 0x1000 + u64::from(tid),
                    kind: BlockerKind::Mutex,
                    owner: Some(Peer { tid: owner, tgid: owner, comm: format!("t{owner}"), state: 2 }),
                    reader_hint: false,
                }),
                ..TaskSeen::bare(tid, state)
            },
            stack: [top.to_owned()].into(),
            blocked_in: Some(top.to_owned()),
        };
        let fuse = |tgid: u32, dev: u32, state: u32| FuseFileSeen {
            tgid,
            tid: tgid,
            comm: format!("daemon{tgid}"),
            state,
            fd: 3,
            dev,
            connected: true,
            num_waiting: 1,
            pending: 1,
            processing: 0,
            fuse_dev: u64::from(tgid),
            requests: vec![FuseRequestSeen {
                opcode: 1,
                unique: 2,
                nodeid: 1,
                pid: 8,
                age_ns: None,
                read: false,
            }],
        };
        let seen = Seen::from_parts(
            vec![task(9, 2, Some(8), "lock_two_directories"), task(8, 1, None, "request_wait_answer")],
            vec![fuse(100, 42, 0x104), fuse(200, 43, 1)],
        );
        let wait = Wait {
            start: None,
            end: None,
            duration_ns: 5,
            tid: 10,
            pid: 10,
            comm: "t10".into(),
            cgroup_id: 0,
            cgroup: None,
            state: TaskState::Uninterruptible,
            blocked_in: Some("do_renameat2".into()),
            stack: [].into(),
            user_stack: [].into(),
            waker: None,
            on: Attribution {
                mount: mounts::parse("47 22 0:42 / /mnt/x rw - fuse.x x rw\n").pop(),
                ..Attribution::default()
            },
            lock: Some(LockInfo {
                kind: "mutex",
                addr: 0x10,
                inode: None,
                holder: Some(seen.holder(&Peer { tid: 9, tgid: 9, comm: "t9".into(), state: 2 }, false)),
            }),
            chain: Vec::new(),
            source: crate::model::wait::Source::Iterator,
        };
        let context = Context { seen, ..Context::default() };
        let links = chain(&wait, &context);
        // Each hop, told by what names it (the text of a chain is the sinks').
        let hops: Vec<String> = links
            .iter()
            .map(|link| match link {
                Link::Task { tid, state, function, .. } => {
                    format!("task {tid} {} {}", state.unwrap_or('?'), function.as_deref().unwrap_or("?"))
                }
                Link::Lock { name } => format!("lock {name}"),
                Link::Mount { mountpoint, .. } => format!("mount {mountpoint}"),
                Link::FuseRequests { in_flight, .. } => format!("{in_flight} requests"),
                Link::FuseDaemon { pid, .. } => format!("daemon {pid}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            hops,
            [
                "task 10 D do_renameat2",
                "lock mutex 0x10",
                "task 9 D lock_two_directories",
                "lock mutex 0x1009",
                "task 8 S request_wait_answer",
                "mount /mnt/x",
                "1 requests",
                "daemon 100",
            ],
            "only its own connection's daemon (not 200)"
        );
    }
}
