//! Advice: for each recognised pattern among the waits still going on, one short,
//! correct line saying what it is and what can be done. No pattern, no advice.
//!
//! The patterns are read from the wait chains ([`crate::model::chain`]): a FUSE daemon
//! that does not answer, an NFS server, a task holding a lock others wait for, a
//! file lock, writeback to a block device.
//!
//! A line is for a person and holds commands to paste: the names in its words are
//! escaped here ([`prose`]) and the words of its commands quoted for the shell
//! ([`shell_word`]), so the sinks print it as it is ([`crate::escape::controls`]).

use std::collections::BTreeMap;

use crate::{
    clock::human_duration,
    escape::{prose, shell_word},
    model::{chain, link::Link, rpc, wait::Wait},
    resolve::{
        file_locks::{self, Queue},
        mounts::{self, Mount},
    },
};

/// Waits at least this old are worth advice.
pub const MIN_AGE_NS: u64 = 1_000_000_000;

/// Functions of the block layer a task waits in while its I/O is with the device.
const BLOCK_WAITS: [&str; 5] =
    ["submit_bio_wait", "__filemap_fdatawait_range", "blk_mq_get_tag", "rq_qos_wait", "__bio_queue_enter"];

/// The advice for these waits (those still going on), most tasks first; with
/// the file locks others queue for now (`/proc/locks`) only when one of them
/// waits for a file lock. A read of `/proc/locks` takes the kernel's locks of
/// every file lock of the host and puts dstrace itself in D for milliseconds:
/// too much for each refresh of a live view that shows no file lock wait.
pub fn advise(waits: &[Wait]) -> Vec<String> {
    let file_lock_wait =
        waits.iter().any(|wait| wait.is_ongoing() && wait.on.is_file_lock_wait(wait.blocked_in.as_deref()));
    let queues = if file_lock_wait { file_locks::queues(&file_locks::read()) } else { Vec::new() };
    advise_with(waits, &queues)
}

/// As [`advise`], with every file lock queue `/proc/locks` lists (its waiters
/// sleep in S, so no wait need show it): for a look taken once (`snapshot`, the
/// summary at the end of `run`).
pub fn advise_once(waits: &[Wait]) -> Vec<String> {
    advise_with(waits, &file_locks::queues(&file_locks::read()))
}

/// Whether a task found in D has no known age (no start, 0 s): before tracing,
/// its task clock did not say when it last ran.
fn age_unknown(wait: &Wait) -> bool {
    wait.start.is_none() && wait.duration_ns == 0 && wait.source != crate::model::wait::Source::Traced
}

/// As [`advise`], with the file lock queues given.
pub fn advise_with(waits: &[Wait], queues: &[Queue]) -> Vec<String> {
    let stuck: Vec<&Wait> = waits.iter().filter(|w| w.is_ongoing() && w.duration_ns >= MIN_AGE_NS).collect();
    let mut advice = Vec::new();

    // By mount (a mount point of one mount namespace): a FUSE daemon or an NFS
    // server not answering.
    let own_namespace = mounts::namespace_of(None).unwrap_or(0);
    let mut by_mount: BTreeMap<(u64, String), Vec<&Wait>> = BTreeMap::new();
    let mount_key = |mount: &Mount| (mount.namespace, mount.mount_point.to_string_lossy().into_owned());
    for wait in &stuck {
        if let Some(mount) = &wait.on.mount {
            by_mount.entry(mount_key(mount)).or_default().push(wait);
        }
    }
    // A task already in D whose age the clocks cannot give (its `exec_start` is 0
    // or ahead of its CPU's clock: seen on 6.12 in a TCG guest, the last task of a
    // pile-up) is one of the pile-up on a mount where others are stuck.
    for wait in waits.iter().filter(|w| w.is_ongoing() && age_unknown(w)) {
        if let Some(tasks) = wait.on.mount.as_ref().and_then(|mount| by_mount.get_mut(&mount_key(mount))) {
            tasks.push(wait);
        }
    }
    for ((_, mount_point), waits) in &by_mount {
        let oldest = waits.iter().map(|w| w.duration_ns).max().unwrap_or(0);
        let Some(mount) = waits.iter().find_map(|w| w.on.mount.as_ref()) else { continue };
        let n = waits.len();
        // Commands on the mount, as pasted into a shell: its namespace entered
        // when it is not dstrace's own (a container's mount is not at that path
        // on the host).
        let on_mount = |command: &str| on_mount(command, mount, waits[0].pid, own_namespace);
        let links: Vec<&Link> = waits.iter().flat_map(|w| w.chain.iter()).collect();
        if mount.fs_type.starts_with("fuse") {
            let daemons: Vec<(u32, &str, Option<char>)> = dedup(links.iter().filter_map(|link| match link {
                Link::FuseDaemon { pid, comm, state, .. } => Some((*pid, comm.as_str(), *state)),
                _ => None,
            }));
            let mut line = format!(
                "{n} {} on the FUSE mount {} ({}) for up to {}: ",
                tasks_wait(n),
                prose(mount_point),
                prose(&mount.source),
                human_duration(oldest)
            );
            match daemons.as_slice() {
                [(pid, comm, Some('T'))] => line.push_str(&format!(
                    "its daemon {}[{pid}] is stopped, `kill -CONT {pid}` resumes it; ",
                    prose(comm)
                )),
                [(pid, comm, _)] => {
                    line.push_str(&format!("its daemon {}[{pid}] does not answer; ", prose(comm)));
                }
                _ => line.push_str("its daemon does not answer; "),
            }
            line.push_str(&format!(
                "`{}` detaches the mount point; {}",
                on_mount("umount -l"),
                fuse_abort(mount.dev.1, fusectl_mounted())
            ));
            advice.push((n, line));
        } else if mount.fs_type.starts_with("nfs") {
            let server = links
                .iter()
                .find_map(|link| match link {
                    Link::NfsServer { address, .. } => Some(address.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| mount.source.clone());
            advice.push((
                n,
                format!(
                    "{n} {} on the NFS mount {} ({}) for up to {}{}: they cannot be killed until \
                     the server {} answers; `{}` detaches the mount point, `{}` aborts pending RPCs",
                    tasks_wait(n),
                    prose(mount_point),
                    prose(&mount.source),
                    human_duration(oldest),
                    rpc_state(&links),
                    prose(&server),
                    on_mount("umount -l"),
                    on_mount("umount -f"),
                ),
            ));
        } else if mount.source.starts_with("/dev/")
            && waits.iter().all(|w| w.blocked_in.as_deref().is_some_and(|f| BLOCK_WAITS.contains(&f)))
        {
            let device = mount.source.trim_start_matches("/dev/");
            advice.push((
                n,
                format!(
                    "{n} {} for I/O to {} ({}) for up to {}: see its queue \
                     (/sys/block/{}/inflight, iostat -x)",
                    tasks_wait(n),
                    prose(&mount.source),
                    prose(mount_point),
                    human_duration(oldest),
                    prose(device),
                ),
            ));
        }
    }

    // RPCs of waits whose mount is not known (a path not resolved, or a kernel
    // that cannot say): the RPC alone says an NFS (or NLM) server does not answer.
    let unmounted: Vec<&Wait> = stuck
        .iter()
        .copied()
        .filter(|wait| {
            wait.on.mount.is_none() && wait.chain.iter().any(|link| matches!(link, Link::Rpc { .. }))
        })
        .collect();
    if !unmounted.is_empty() {
        let n = unmounted.len();
        let oldest = unmounted.iter().map(|w| w.duration_ns).max().unwrap_or(0);
        let links: Vec<&Link> = unmounted.iter().flat_map(|w| w.chain.iter()).collect();
        let calls: Vec<String> = dedup(links.iter().filter_map(|link| match link {
            Link::Rpc { program, version, procedure, .. } => {
                Some(prose(&rpc::call_name(program, *version, procedure)))
            }
            _ => None,
        }));
        advice.push((
            n,
            format!(
                "{n} {} for RPCs ({}) for up to {}{}: an NFS mount whose server does not answer; its \
                 tasks cannot be killed until it does; `umount -l` of the mount detaches it",
                tasks_wait(n),
                calls.join(", "),
                human_duration(oldest),
                rpc_state(&links),
            ),
        ));
    }

    // Waits in the NFS client that no kernel object ties to a mount (the `statfs`
    // of `df`: its path walk is over) and whose RPC is not seen yet (it began before
    // tracing, or nothing traces): what is known is that an NFS server does not
    // answer them.
    let nfs_unnamed: Vec<&Wait> = stuck
        .iter()
        .copied()
        .filter(|wait| {
            wait.on.mount.is_none()
                && !wait.chain.iter().any(|link| matches!(link, Link::Rpc { .. }))
                && in_nfs_client(wait)
        })
        .collect();
    if !nfs_unnamed.is_empty() {
        let n = nfs_unnamed.len();
        let oldest = nfs_unnamed.iter().map(|w| w.duration_ns).max().unwrap_or(0);
        let who: Vec<String> = nfs_unnamed
            .iter()
            .take(4)
            .map(|wait| {
                let syscall = wait.on.syscall.map_or(String::new(), |name| format!(" ({name})"));
                format!("{}[{}]{syscall}", prose(&wait.comm), wait.tid)
            })
            .collect();
        advice.push((
            n,
            format!(
                "{n} {} in the NFS client for up to {} with no file or path walk that names its mount ({}): \
                 an NFS server does not answer them; they cannot be killed until it does; `dstrace run` \
                 names the RPC and its server at the RPC's next retransmission",
                tasks_wait(n),
                human_duration(oldest),
                who.join(", ")
            ),
        ));
    }

    // By holder: a task holding a lock others wait for.
    let mut by_lock: BTreeMap<String, Vec<&Wait>> = BTreeMap::new();
    for wait in &stuck {
        if let Some(lock) = wait.lock.as_ref().filter(|lock| lock.holder.is_some()) {
            by_lock.entry(lock.name()).or_default().push(wait);
        }
    }
    for (name, waits) in &by_lock {
        let Some(holder) = waits.iter().find_map(|w| w.lock.as_ref()?.holder.clone()) else { continue };
        let n = waits.len();
        let doing = match (holder.state, &holder.function) {
            (Some(state), Some(function)) => format!("; it is in {state} in {}", prose(function)),
            (Some(state), None) => format!("; it is in {state}"),
            (None, _) => "; it has exited since".to_owned(),
        };
        let what = if name.starts_with("lookup of a name") { "is doing the" } else { "holds" };
        advice.push((
            n,
            format!(
                "pid {} ({}) {what} {} that {n} {} for{doing}",
                holder.pid,
                prose(&holder.comm),
                prose(name),
                tasks_wait(n),
            ),
        ));
    }

    // File locks: the queues the kernel lists (waiters in any state: a POSIX or
    // flock waiter sleeps in S), with the tasks in D whose lock request names the
    // holder (an NFS client's request goes to the server, so it is not queued
    // here); then holders only tasks in D name.
    let mut covered: Vec<(u32, u64)> = Vec::new();
    for queue in queues {
        let Some(pid) = queue.held.pid else { continue };
        let mut waiters: Vec<u32> = queue.waiters.iter().filter_map(|w| w.pid).collect();
        for wait in &stuck {
            let names_it =
                wait.on.file_locks.iter().any(|held| held.pid == Some(pid) && held.ino == queue.held.ino);
            if names_it && !waiters.contains(&wait.pid) {
                waiters.push(wait.pid);
            }
        }
        covered.push((pid, queue.held.ino));
        let n = waiters.len();
        let on = stuck
            .iter()
            .filter_map(|wait| wait.on.mount.as_ref())
            .find(|mount| mount.dev == queue.held.dev)
            .map_or(String::new(), |mount| format!(" of {}", prose(&mount.mount_point.to_string_lossy())));
        let who: Vec<String> = waiters.iter().map(|&pid| task_text(pid)).collect();
        advice.push((
            n,
            format!(
                "{} holds the {} {} lock on inode {} ({}:{}{on}) that {n} {} for: {}",
                task_text(pid),
                prose(&queue.held.kind),
                prose(&queue.held.access),
                queue.held.ino,
                queue.held.dev.0,
                queue.held.dev.1,
                tasks_wait(n),
                who.join(", ")
            ),
        ));
    }
    let mut by_file_lock: BTreeMap<(u32, String), usize> = BTreeMap::new();
    for wait in &stuck {
        for held in &wait.on.file_locks {
            if let Some(pid) = held.pid.filter(|&pid| !covered.contains(&(pid, held.ino))) {
                let inode =
                    wait.on.file.as_ref().and_then(|f| f.inode).map_or("?".to_owned(), |i| i.to_string());
                *by_file_lock.entry((pid, format!("{} lock on inode {inode}", held.kind))).or_default() += 1;
            }
        }
    }
    for ((pid, what), n) in by_file_lock {
        advice.push((n, format!("pid {pid} holds the {} that {n} {} for", prose(&what), tasks_wait(n))));
    }

    advice.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    advice.into_iter().map(|(_, line)| line).collect()
}

/// How to fail every pending request of FUSE connection `minor`: its `abort` file,
/// which exists only where the fusectl filesystem is mounted (else how to mount
/// it first).
fn fuse_abort(minor: u32, fusectl_mounted: bool) -> String {
    let abort = format!("writing 1 to /sys/fs/fuse/connections/{minor}/abort fails every pending request");
    if fusectl_mounted {
        abort
    } else {
        format!("after `mount -t fusectl none /sys/fs/fuse/connections` (not mounted now), {abort}")
    }
}

/// Whether dstrace's mount namespace has the fusectl filesystem mounted (its
/// mount table; unreadable: not known to be).
fn fusectl_mounted() -> bool {
    mounts::read().is_ok_and(|table| table.iter().any(|mount| mount.fs_type == "fusectl"))
}

/// What the RPCs of these links say of the server: `, the server not responding
/// for 2m10s (3 major timeouts of NFSv4 LOCK)`, or nothing when none timed out.
fn rpc_state(links: &[&Link]) -> String {
    let worst = links
        .iter()
        .filter_map(|link| match link {
            Link::Rpc { program, version, procedure, timeouts, not_responding_ns, .. } if *timeouts > 0 => {
                Some((
                    not_responding_ns.unwrap_or(0),
                    *timeouts,
                    rpc::call_name(program, *version, procedure),
                ))
            }
            _ => None,
        })
        .max();
    match worst {
        Some((since, timeouts, call)) => format!(
            ", the server NOT RESPONDING for {} ({timeouts} major timeout{} of {call})",
            human_duration(since),
            if timeouts == 1 { "" } else { "s" }
        ),
        None => String::new(),
    }
}

/// Whether a wait's stack is in the NFS client or the RPC layer under it.
fn in_nfs_client(wait: &Wait) -> bool {
    const NFS_FRAMES: [&str; 5] = ["nfs_", "nfs3_", "nfs4_", "rpc_", "nlmclnt_"];
    wait.stack.iter().any(|frame| NFS_FRAMES.iter().any(|prefix| frame.starts_with(prefix)))
}

/// `command MOUNT_POINT`, the mount point quoted for the shell, inside the mount
/// namespace of task `pid` (one that sees the mount) when it is not dstrace's own:
/// `nsenter -m -t PID command MOUNT_POINT`.
fn on_mount(command: &str, mount: &Mount, pid: u32, own_namespace: u64) -> String {
    let path = shell_word(mount.mount_point.as_os_str());
    if mount.namespace != 0 && own_namespace != 0 && mount.namespace != own_namespace {
        format!("nsenter -m -t {pid} {command} {path}")
    } else {
        format!("{command} {path}")
    }
}

/// A task as `/proc` shows it now: `holder[194] in D in folio_wait_bit_common`.
fn task_text(pid: u32) -> String {
    match chain::task_now(pid, pid) {
        Link::Task { comm, state: Some('D'), function: Some(function), .. } => {
            format!("{}[{pid}] in D in {}", prose(&comm), prose(&function))
        }
        Link::Task { comm, state: Some(state), .. } => format!("{}[{pid}] in {state}", prose(&comm)),
        _ => format!("pid {pid} (gone)"),
    }
}

fn tasks_wait(n: usize) -> &'static str {
    if n == 1 {
        "task waits"
    } else {
        "tasks wait"
    }
}

fn dedup<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{
        model::wait::{fake::ongoing as wait, Holder, LockInfo},
        resolve::{attribution::FileRef, file_locks::FileLock, mounts},
    };

    /// The advice with no file lock queues (this machine's would vary).
    fn advise(waits: &[Wait]) -> Vec<String> {
        advise_with(waits, &[])
    }

    const NFS: &str = "91 22 0:29 / /var/lib/nova rw - nfs4 10.0.0.5:/export rw,addr=10.0.0.5\n";
    const FUSE: &str = "92 22 0:55 / /mnt/x rw - fuse.sshfs sshfs rw\n";
    const DISK: &str = "93 22 8:16 / /data rw - ext4 /dev/sdb rw\n";

    #[test]
    fn nfs_server_not_answering() {
        let mut waits: Vec<Wait> = (1..=3).map(|pid| wait(pid, NFS, 240_000_000_000)).collect();
        waits[0].chain =
            vec![Link::NfsServer { address: "10.0.0.5".into(), nfs_version: Some("4.2".into()) }];
        let advice = advise(&waits);
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert_eq!(
            advice[0],
            "3 tasks wait on the NFS mount /var/lib/nova (10.0.0.5:/export) for up to 4m00s: they cannot be \
             killed until the server 10.0.0.5 answers; `umount -l /var/lib/nova` detaches the mount point, \
             `umount -f /var/lib/nova` aborts pending RPCs"
        );
    }

    /// A task of no known age counts in the pile-up of a mount others are stuck
    /// on, and alone it gets no advice.
    #[test]
    fn a_task_of_unknown_age_counts_beside_stuck_ones_only() {
        let mut waits: Vec<Wait> = (1..=3).map(|pid| wait(pid, NFS, 240_000_000_000)).collect();
        let mut unknown = wait(4, NFS, 0);
        unknown.source = crate::model::wait::Source::Iterator;
        waits.push(unknown.clone());
        let advice = advise(&waits);
        assert!(advice[0].starts_with("4 tasks wait on the NFS mount /var/lib/nova"), "{advice:?}");
        assert_eq!(advise(&[unknown]), Vec::<String>::new());
    }

    fn rpc(timeouts: u32, not_responding_ns: Option<u64>) -> Link {
        Link::Rpc {
            program: "nfs".into(),
            version: 4,
            procedure: "LOCK".into(),
            xid: Some(7),
            age_ns: Some(200_000_000_000),
            transmits: 3,
            timeouts,
            not_responding_ns,
            others: 0,
        }
    }

    #[test]
    fn nfs_server_not_responding_by_its_rpcs() {
        let mut waits: Vec<Wait> = (1..=2).map(|pid| wait(pid, NFS, 240_000_000_000)).collect();
        waits[0].chain = vec![rpc(0, None)];
        waits[1].chain = vec![rpc(3, Some(130_000_000_000)), rpc(1, Some(10_000_000_000))];
        let advice = advise(&waits);
        assert!(
            advice[0].starts_with(
                "2 tasks wait on the NFS mount /var/lib/nova (10.0.0.5:/export) for up to 4m00s, the server \
                 NOT RESPONDING for 2m10s (3 major timeouts of NFSv4 LOCK): they cannot be killed"
            ),
            "{advice:?}"
        );
        // Without a major timeout, nothing is said of the server's state.
        waits[1].chain = vec![rpc(0, None)];
        assert!(!advise(&waits)[0].contains("RESPONDING"));
    }

    /// The `abort` file is named as it is only where fusectl is mounted; else the
    /// advice says how to mount it first.
    #[test]
    fn fuse_abort_says_how_to_mount_fusectl() {
        assert_eq!(
            fuse_abort(55, true),
            "writing 1 to /sys/fs/fuse/connections/55/abort fails every pending request"
        );
        assert_eq!(
            fuse_abort(55, false),
            "after `mount -t fusectl none /sys/fs/fuse/connections` (not mounted now), writing 1 to \
             /sys/fs/fuse/connections/55/abort fails every pending request"
        );
        let fusectl = std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(" - fusectl ");
        assert_eq!(fusectl_mounted(), fusectl);
    }

    #[test]
    fn rpcs_of_waits_without_a_mount() {
        let mut one = wait(1, NFS, 30_000_000_000);
        one.on.mount = None;
        assert!(advise(std::slice::from_ref(&one)).is_empty());
        one.chain = vec![rpc(2, Some(20_000_000_000))];
        assert_eq!(
            advise(&[one]),
            ["1 task waits for RPCs (NFSv4 LOCK) for up to 30.000s, the server NOT RESPONDING for 20.000s (2 \
              major timeouts of NFSv4 LOCK): an NFS mount whose server does not answer; its tasks cannot be \
              killed until it does; `umount -l` of the mount detaches it"]
        );
    }

    #[test]
    fn stopped_fuse_daemon() {
        let mut one = wait(1, FUSE, 5_000_000_000);
        one.chain =
            vec![Link::FuseDaemon { pid: 77, comm: "sshfs".into(), state: Some('T'), waiting: Some(2) }];
        let advice = advise(&[one]);
        assert!(
            advice[0].starts_with("1 task waits on the FUSE mount /mnt/x (sshfs) for up to 5.000s"),
            "{advice:?}"
        );
        assert!(advice[0].contains("sshfs[77] is stopped, `kill -CONT 77` resumes it"), "{advice:?}");
        assert!(advice[0].contains("`umount -l /mnt/x`") && advice[0].contains("connections/55/abort"));
    }

    #[test]
    fn lock_holder() {
        let mut waits: Vec<Wait> = (1..=2).map(|pid| wait(pid, DISK, 3_000_000_000)).collect();
        for wait in &mut waits {
            wait.blocked_in = Some("path_openat".into());
            wait.lock = Some(LockInfo {
                kind: "rwsem-write",
                addr: 1,
                inode: Some(((0, 55), 1)),
                holder: Some(Holder {
                    tid: 28331,
                    pid: 28331,
                    comm: "nova-compute".into(),
                    reader_hint: false,
                    looked: true,
                    state: Some('S'),
                    function: Some("request_wait_answer".into()),
                }),
            });
        }
        let advice = advise(&waits);
        assert_eq!(
            advice,
            ["pid 28331 (nova-compute) holds i_rwsem of inode 1 (0:55) that 2 tasks wait for; it is in S in \
              request_wait_answer"]
        );
    }

    #[test]
    fn file_lock_holder() {
        let mut one = wait(1, NFS, 2_000_000_000);
        one.on.mount = None;
        one.on.file = Some(FileRef { path: None, inode: Some(2199054015793) });
        one.on.file_locks = vec![FileLock {
            id: 1,
            kind: "POSIX".into(),
            access: "WRITE".into(),
            pid: Some(28331),
            dev: (0, 29),
            ino: 2199054015793,
            range: (0, None),
            waiting: false,
        }];
        assert_eq!(
            advise(&[one]),
            ["pid 28331 holds the POSIX lock on inode 2199054015793 that 1 task waits for"]
        );
    }

    /// Seed 000 in one line: the holder of a lock others queue for, and who.
    #[test]
    fn file_lock_queue() {
        // The holder is pid 1, which every machine has; the waiters are gone.
        let holder = 1;
        let lock = |pid: u32, waiting: bool| FileLock {
            id: 5,
            kind: "POSIX".into(),
            access: "WRITE".into(),
            pid: Some(pid),
            dev: (0, 29),
            ino: 11381,
            range: (0, None),
            waiting,
        };
        let queue = Queue { held: lock(holder, false), waiters: vec![lock(4243, true)] };
        // A task in D (an NFS client's request, which the server queues) names the
        // same holder: it is counted once among the waiters.
        let mut one = wait(4242, NFS, 2_000_000_000);
        one.on.file_locks = vec![lock(holder, false)];
        let advice = advise_with(&[one.clone(), one], &[queue]);
        // The NFS mount's line, and the queue's.
        assert_eq!(advice.len(), 2, "{advice:?}");
        let advice: Vec<&String> = advice.iter().filter(|line| line.contains("holds the")).collect();
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert!(advice[0].contains("[1] in "), "{advice:?}");
        assert!(
            advice[0].contains(
                "holds the POSIX WRITE lock on inode 11381 (0:29 of /var/lib/nova) that 2 tasks wait for: "
            ),
            "{advice:?}"
        );
        assert!(advice[0].ends_with("wait for: pid 4243 (gone), pid 4242 (gone)"), "{advice:?}");
    }

    #[test]
    fn block_device_writeback() {
        let mut one = wait(1, DISK, 9_000_000_000);
        one.blocked_in = Some("submit_bio_wait".into());
        let advice = advise(&[one]);
        assert!(
            advice[0].contains("I/O to /dev/sdb (/data)") && advice[0].contains("/sys/block/sdb/inflight")
        );
    }

    #[test]
    fn no_pattern_no_advice() {
        // Too young, completed, or on nothing recognised: nothing to say.
        assert!(advise(&[wait(1, NFS, 10_000_000)]).is_empty());
        let mut done = wait(1, NFS, 10_000_000_000);
        done.end = Some(SystemTime::now());
        assert!(advise(&[done]).is_empty());
        let mut ext4 = wait(1, DISK, 10_000_000_000);
        ext4.blocked_in = Some("jbd2_log_wait_commit".into());
        assert!(advise(&[ext4]).is_empty());
    }

    #[test]
    fn commands_are_quoted_and_entered_into_the_mount_namespace() {
        let mut mount = mounts::parse(FUSE).pop().unwrap();
        assert_eq!(on_mount("umount -l", &mount, 7, 0), "umount -l /mnt/x");
        mount.namespace = 4026532900;
        assert_eq!(on_mount("umount -l", &mount, 7, 4026531841), "nsenter -m -t 7 umount -l /mnt/x");
        assert_eq!(
            on_mount("umount -l", &mount, 7, 4026532900),
            "umount -l /mnt/x",
            "dstrace's own namespace"
        );
    }

    #[test]
    fn an_nfs_wait_without_a_mount_or_an_rpc_says_what_is_known() {
        let mut df = wait(7, "", 30_000_000_000);
        df.on.mount = None;
        df.on.syscall = Some("statfs");
        df.stack = ["rpc_wait_bit_killable", "__rpc_execute", "rpc_run_task", "nfs3_proc_statfs"]
            .map(String::from)
            .into();
        let advice = advise(&[df.clone()]);
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert!(advice[0].starts_with("1 task waits in the NFS client for up to 30.000s"), "{advice:?}");
        assert!(
            advice[0].contains("df[7] (statfs)") && advice[0].contains("next retransmission"),
            "{advice:?}"
        );
        // With its RPC known, the RPC's own advice says more.
        df.chain = vec![Link::Rpc {
            program: "nfs".into(),
            version: 3,
            procedure: "FSSTAT".into(),
            xid: None,
            age_ns: None,
            transmits: 1,
            timeouts: 1,
            not_responding_ns: Some(1),
            others: 0,
        }];
        assert!(advise(&[df]).iter().all(|line| !line.contains("in the NFS client")));
    }
}
