//! The task iterator against real pile-ups that stand before it loads (dstrace
//! arrives after the hang), and the live path's kernel identities: every stuck task
//! is named with its path walk or file by mount ID, the lock's owner is found and
//! read too, and the FUSE connections of the `/dev/fuse` files are named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    ffi::CString,
    fs::File,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use dstrace::kernel::{
    iter::{BlockerKind, Look, Looker, TaskSeen},
    loader::{Options, Tracer},
};
use dstrace_common::{FUSE_PENDING_MAX, TASK_UNINTERRUPTIBLE};
use dstrace_tests::{
    fuse::FuseMount, mounts, require_root, wait_for_state, wait_until_proc, Children, Pileup,
};

/// `TASK_INTERRUPTIBLE`: the `S` of `ps`.
const TASK_INTERRUPTIBLE: u32 = 0x1;

/// The mount ID and device (in the kernel's encoding) of the mount at `path` in
/// `/proc/self/mountinfo` (read as bytes: another mount point may not be UTF-8).
fn mount_of(path: &Path) -> (u32, u32) {
    let mountinfo = std::fs::read("/proc/self/mountinfo").unwrap();
    let mount = dstrace::resolve::mounts::parse_bytes(&mountinfo)
        .into_iter()
        .find(|mount| mount.mount_point == path)
        .unwrap_or_else(|| panic!("{} is not in /proc/self/mountinfo", path.display()));
    (mount.id, (mount.dev.0 << 20) | mount.dev.1)
}

/// A new test filesystem, with its mount ID and device.
fn mounted(name: &str) -> (FuseMount, u32, u32) {
    let mount = FuseMount::new(name).expect("mount the test filesystem");
    let (id, dev) = mount_of(mount.path());
    (mount, id, dev)
}

/// `FUSE_INIT` (include/uapi/linux/fuse.h).
const FUSE_INIT: u32 = 26;

/// A FUSE mount that no daemon serves: its `INIT` request stays queued on the
/// connection. Nothing may touch it (a lookup would wait for the `INIT` answer);
/// dropping it closes `/dev/fuse`, which aborts the connection, and detaches it.
struct Unserved {
    dir: PathBuf,
    dev: Option<File>,
}

impl Unserved {
    fn mount() -> Unserved {
        let dir = std::env::temp_dir().join(format!("dstrace-test-iter-unserved-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dev = File::options().read(true).write(true).open("/dev/fuse").unwrap();
        let options = format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd());
        let mounted = mounts::mount(Some("unserved"), &dir, Some("fuse.unserved"), 0, Some(&options));
        assert!(mounted.is_ok(), "mount {}: {mounted:?}", dir.display());
        Unserved { dir, dev: Some(dev) }
    }
}

impl Drop for Unserved {
    fn drop(&mut self) {
        drop(self.dev.take());
        let target = CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `FUSE_LOOKUP`, `FUSE_WRITE` (include/uapi/linux/fuse.h).
const FUSE_LOOKUP: u32 = 1;
const FUSE_WRITE: u32 = 16;

/// Openers of a new name piled up behind a held lookup: the owner (`sh` appending
/// to a name that does not exist, `O_CREAT`) waits for the server in S in
/// `openat(2)` holding the directory's `i_rwsem`, taken to write; the next wait
/// for it in D in `openat(2)`, on its wait list. Dropping it releases the mount
/// before its children are ended.
struct Openers<'m> {
    mount: &'m FuseMount,
    owner: u32,
    stuck: Vec<u32>,
    _children: Children,
}

impl<'m> Openers<'m> {
    fn start(mount: &'m FuseMount, n: usize) -> Openers<'m> {
        let append = format!("echo x >> '{}'", mount.path().join("created").display());
        mount.hold();
        let mut children = Children::default();
        let in_openat = |pid: u32| {
            let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
            syscall.split_whitespace().next() == Some(libc::SYS_openat.to_string().as_str())
        };
        let owner = children.spawn(std::process::Command::new("sh").arg("-c").arg(&append));
        wait_until_proc(owner, Duration::from_secs(10), |state, wchan| {
            state == 'S' && in_openat(owner) && (wchan.contains("fuse") || wchan.contains("request_wait"))
        });
        let stuck: Vec<u32> =
            (0..n).map(|_| children.spawn(std::process::Command::new("sh").arg("-c").arg(&append))).collect();
        for &pid in &stuck {
            wait_until_proc(pid, Duration::from_secs(10), |state, _| state == 'D' && in_openat(pid));
        }
        eprintln!("opener holding the directory's lock: pid {owner}; piled up behind it in D: {stuck:?}");
        Openers { mount, owner, stuck, _children: children }
    }
}

impl Drop for Openers<'_> {
    fn drop(&mut self) {
        self.mount.release();
    }
}

fn task(look: &Look, tid: u32) -> &TaskSeen {
    look.tasks.iter().find(|task| task.tid == tid).unwrap_or_else(|| {
        let seen: Vec<(u32, &str, u32)> =
            look.tasks.iter().map(|task| (task.tid, task.comm.as_str(), task.state)).collect();
        panic!("tid {tid} is not in the look; it has {seen:?}")
    })
}

/// The syscall a task is in, from the iterator or, where it cannot say (before
/// 5.15), from `/proc/TID/syscall`.
fn syscall_nr(task: &TaskSeen) -> Option<i64> {
    if task.syscall_from_proc {
        let text = std::fs::read_to_string(format!("/proc/{}/syscall", task.tid)).ok()?;
        return text.split_whitespace().next()?.parse().ok();
    }
    task.syscall.map(|(nr, _)| nr)
}

fn in_s(task: &TaskSeen) -> bool {
    task.state & TASK_INTERRUPTIBLE != 0 && task.state & TASK_UNINTERRUPTIBLE == 0
}

#[test]
fn a_look_after_the_hang_names_every_stuck_task_its_mount_and_its_owner() {
    if !require_root("a_look_after_the_hang_names_every_stuck_task_its_mount_and_its_owner") {
        return;
    }
    let (lookups, lookups_id, lookups_dev) = mounted("iter-lookups");
    let (writes, writes_id, writes_dev) = mounted("iter-writes");
    let (opens, opens_id, opens_dev) = mounted("iter-opens");
    let stats = Pileup::start(&lookups, 2);
    let writers = Pileup::writers(&writes, 2);
    let openers = Openers::start(&opens, 2);
    let unserved = Unserved::mount();
    let (_, unserved_dev) = mount_of(&unserved.dir);

    let mut looker = Looker::load(false).expect("load the task iterator");
    eprintln!("the iterator cannot give here: {:#?}", looker.skipped());
    let look = looker.look(&[]).expect("look");
    eprintln!("{look:#?}");

    // The stats wait in D in d_alloc_parallel, in a walk of the mount's root.
    let lookups_root = lookups.path().to_str().unwrap();
    let mut dir_dentry = None;
    for &tid in &stats.stuck {
        let stat = task(&look, tid);
        assert!(stat.state & TASK_UNINTERRUPTIBLE != 0 && !stat.kernel_thread, "{stat:#?}");
        assert!(!stat.stack.is_empty(), "{stat:#?}");
        let stat_syscalls = [libc::SYS_statx, libc::SYS_newfstatat, libc::SYS_stat, libc::SYS_lstat];
        assert!(syscall_nr(stat).is_some_and(|nr| stat_syscalls.contains(&nr)), "{stat:#?}");
        let walk = stat.walk.as_ref().unwrap_or_else(|| panic!("tid {tid} is not in a path walk: {stat:#?}"));
        assert_eq!(walk.path, format!("{lookups_root}/missing"), "the kernel's copy of the path");
        assert_eq!(walk.last, "missing");
        assert_eq!((walk.mnt_id, walk.dev, walk.dir_ino), (lookups_id, lookups_dev, 1), "the mount's root");
        assert_eq!(*dir_dentry.get_or_insert(walk.dir_dentry), walk.dir_dentry, "one directory");
        // They hold the directory shared and wait for the name, not for its lock.
        assert_eq!(walk.dir_waiting, None, "{stat:#?}");
    }
    // Their lookup's owner waits for the daemon in S, walking the same directory for
    // the same name: the pass over the walkers of that directory found it.
    let owner = task(&look, stats.owner);
    let walk = owner.walk.as_ref().unwrap_or_else(|| panic!("the lookup owner is not walking: {owner:#?}"));
    assert!(in_s(owner), "{owner:#?}");
    assert_eq!((walk.dir_dentry, walk.last.as_str()), (dir_dentry.unwrap(), "missing"));

    // The writers wait in D for the file's inode lock, which the first writer holds:
    // in write(2) on the mount's file (6.18), or where their write goes through (5.10
    // to 6.12) in close(2) (`fuse_flush`), the descriptor gone: then nothing names the
    // lock (no `blocker` before 6.16 either), and its owner is not looked for.
    let mut owner_named = false;
    for &tid in &writers.stuck {
        let writer = task(&look, tid);
        assert!(writer.state & TASK_UNINTERRUPTIBLE != 0, "{writer:#?}");
        if syscall_nr(writer) != Some(libc::SYS_write) {
            assert_eq!(syscall_nr(writer), Some(libc::SYS_close), "{writer:#?}");
            assert!(writer.fd_file.is_none(), "{writer:#?}");
            continue;
        }
        let file = writer.fd_file.as_ref().unwrap_or_else(|| panic!("tid {tid} has no fd file: {writer:#?}"));
        assert_eq!((file.mnt_id, file.dev, file.ino), (writes_id, writes_dev, 2), "{writer:#?}");
        assert!(writer.syscall.is_some_and(|(_, args)| args[0] == file.fd as u64), "{writer:#?}");
        // On the wait list of the file's i_rwsem, to write: the lock proven where
        // the kernel has no `blocker` (before 6.16), and the same as `blocker`'s
        // where it has.
        assert_eq!(
            file.waiting,
            Some(BlockerKind::RwsemWriter),
            "on the file's i_rwsem wait list: {writer:#?}"
        );
        let owner = match &writer.blocker {
            Some(blocker) => {
                assert_eq!(
                    (blocker.lock, blocker.kind),
                    (file.rwsem, BlockerKind::RwsemWriter),
                    "{writer:#?}"
                );
                blocker.owner.as_ref()
            }
            None => file.owner.as_ref(),
        };
        let owner = owner.unwrap_or_else(|| panic!("no owner of tid {tid}'s lock: {writer:#?}"));
        assert_eq!(owner.tid, writers.owner, "{writer:#?}");
        assert_eq!(
            file.owner.as_ref().map(|owner| owner.tid),
            Some(writers.owner),
            "the inode's i_rwsem owner"
        );
        owner_named = true;
    }
    if owner_named {
        // The owner itself was read (the pass over the owners the records name): in S.
        let owner = task(&look, writers.owner);
        assert!(in_s(owner), "{owner:#?}");
        assert!(owner.fd_file.as_ref().is_some_and(|file| file.mnt_id == writes_id), "{owner:#?}");
        // It holds the lock, it does not wait for it.
        assert!(owner.fd_file.as_ref().is_some_and(|file| file.waiting.is_none()), "{owner:#?}");
    }

    // The openers wait in D in openat(2) for the directory's i_rwsem, which the
    // first holds (to write) for its lookup: each on that lock's wait list, to
    // write, its walk in the mount's root; `blocker` names the same lock where the
    // kernel has it.
    let mut dir_rwsem = None;
    for &tid in &openers.stuck {
        let opener = task(&look, tid);
        assert!(opener.state & TASK_UNINTERRUPTIBLE != 0, "{opener:#?}");
        assert_eq!(syscall_nr(opener), Some(libc::SYS_openat), "{opener:#?}");
        let walk = opener.walk.as_ref().unwrap_or_else(|| panic!("opener {tid} is not walking: {opener:#?}"));
        assert_eq!(
            (walk.mnt_id, walk.dev, walk.dir_ino, walk.last.as_str()),
            (opens_id, opens_dev, 1, "created")
        );
        assert_eq!(*dir_rwsem.get_or_insert(walk.dir_rwsem), walk.dir_rwsem, "one directory");
        assert_eq!(
            walk.dir_waiting,
            Some(BlockerKind::RwsemWriter),
            "on the directory's i_rwsem wait list: {opener:#?}"
        );
        assert_eq!(walk.dir_owner.as_ref().map(|owner| owner.tid), Some(openers.owner), "{opener:#?}");
        if let Some(blocker) = &opener.blocker {
            assert_eq!(
                (blocker.lock, blocker.kind),
                (walk.dir_rwsem, BlockerKind::RwsemWriter),
                "{opener:#?}"
            );
        }
    }
    // Their owner was read too, holding the lock: on no wait list.
    let owner = task(&look, openers.owner);
    assert!(in_s(owner), "{owner:#?}");
    assert!(owner.walk.as_ref().is_some_and(|walk| walk.dir_waiting.is_none()), "{owner:#?}");

    // This process serves the mounts: its /dev/fuse files name their devices
    // (where the kernel describes FUSE connections: a FUSE module has no BTF on 5.10).
    let me = std::process::id();
    let connections = !looker.skipped().iter().any(|why| why.starts_with("the FUSE connections"));
    for (mount, dev) in [(&lookups, lookups_dev), (&writes, writes_dev), (&opens, opens_dev)] {
        let dev = if connections { dev } else { 0 };
        assert!(
            look.fuse_files
                .iter()
                .any(|file| file.tgid == me && file.dev == dev && file.connected == connections),
            "no /dev/fuse file of pid {me} on {} ({dev:#x}): {:#?}",
            mount.path().display(),
            look.fuse_files
        );
    }
    if !connections {
        drop((stats, writers, openers, unserved));
        return;
    }
    // This server has read the held requests (a thread of its own waits on each):
    // they are on its file's processing queue, not on the connection's, each from
    // the task that waits for it. Every kernel whose BTF describes the connection
    // has that queue (a pointer to its hash table since 4.20).
    assert!(
        !looker.skipped().iter().any(|why| why.starts_with("the FUSE requests a daemon has read")),
        "the connection is known, its processing queues not: {:#?}",
        looker.skipped()
    );
    for (what, dev, opcode, sender) in [
        ("the lookups'", lookups_dev, FUSE_LOOKUP, stats.owner),
        ("the writers'", writes_dev, FUSE_WRITE, writers.owner),
        ("the openers'", opens_dev, FUSE_LOOKUP, openers.owner),
    ] {
        let file = look.fuse_files.iter().find(|file| file.dev == dev && file.tgid == me).unwrap();
        assert_eq!(file.pending, 0, "{what}: nothing queued, all read: {file:#?}");
        assert!(file.processing >= 1, "{what}: no request read and unanswered: {file:#?}");
        assert!(file.requests.iter().all(|request| request.read), "{what}: {file:#?}");
        assert!(
            file.requests.iter().any(|request| request.opcode == opcode && request.pid == sender),
            "{what}: no request {opcode} read from pid {sender}: {file:#?}"
        );
    }
    // The unserved mount's INIT waits on its connection, queued for a daemon.
    let queue = look.fuse_files.iter().find(|file| file.dev == unserved_dev && file.tgid == me).unwrap();
    assert!(queue.connected && queue.pending == 1 && queue.pending <= FUSE_PENDING_MAX + 1, "{queue:#?}");
    assert_eq!(queue.requests.len(), 1);
    assert_eq!(queue.requests[0].opcode, FUSE_INIT, "{queue:#?}");
    let ages = !looker.skipped().iter().any(|why| why.contains("fuse_req.create_time"));
    assert_eq!(queue.requests[0].age_ns.is_some(), ages, "{queue:#?}");

    // Each task once.
    let mut tids: Vec<u32> = look.tasks.iter().map(|task| task.tid).collect();
    tids.sort_unstable();
    tids.dedup();
    assert_eq!(tids.len(), look.tasks.len());
    drop((stats, writers, openers, unserved));
}

/// A wait the live path sees begin names its mount by ID: the walked directory's
/// for a lookup, the file's for a write; and dstrace's own waits are not recorded.
#[test]
fn a_traced_wait_names_its_mount_by_id_and_dstrace_s_own_are_left_out() {
    if !require_root("a_traced_wait_names_its_mount_by_id_and_dstrace_s_own_are_left_out") {
        return;
    }
    let (lookups, lookups_id, lookups_dev) = mounted("iter-live-lookups");
    let (writes, writes_id, writes_dev) = mounted("iter-live-writes");
    let mut tracer = Tracer::load(&Options::default()).expect("load the eBPF programs");
    eprintln!("this kernel cannot give: {:#?}", tracer.skipped);
    let stats = Pileup::start(&lookups, 1);
    let writers = Pileup::writers(&writes, 1);
    // A thread of this process (dstrace's, as far as the kernel side knows) piles
    // up behind the writer too.
    let (send, receive) = mpsc::channel();
    let file = writes.path().join(dstrace_tests::fuse::FILE_NAME);
    let own = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        send.send(unsafe { libc::gettid() } as u32).unwrap();
        let mut file = std::fs::OpenOptions::new().append(true).open(file).unwrap();
        let _ = std::io::Write::write_all(&mut file, b"x\n");
    });
    let own_tid = receive.recv().unwrap();
    wait_for_state(own_tid, 'D', Duration::from_secs(10));

    let inflight = tracer.inflight();
    let wait = |tid: u32| {
        inflight.iter().find(|(t, _)| *t == tid).map(|(_, wait)| wait).unwrap_or_else(|| {
            panic!(
                "tid {tid} is in D but not tracked: {:?}",
                inflight.iter().map(|(t, _)| t).collect::<Vec<_>>()
            )
        })
    };
    let stat = wait(stats.stuck[0]).target;
    assert_eq!(
        (stat.walk.mnt_id, stat.walk.dev, stat.walk.dir_ino),
        (lookups_id, lookups_dev, 1),
        "{stat:?}"
    );
    let path = dstrace::kernel::decode::comm_string(&stat.path);
    assert_eq!(path, format!("{}/missing", lookups.path().display()), "the kernel's copy of the path");
    // The writer waits in write(2) (6.18), or in close(2) with its descriptor gone
    // (5.10 to 6.12, see above); before 5.18 no syscall is recorded.
    let write = wait(writers.stuck[0]).target;
    let files = !tracer.skipped.iter().any(|why| why.starts_with(dstrace::kernel::loader::NO_SYSCALLS));
    if write.syscall == libc::SYS_write as i32 {
        assert_eq!((write.mnt_id, write.dev, write.ino), (writes_id, writes_dev, 2), "{write:?}");
    } else {
        let expected = if files { libc::SYS_close as i32 } else { -1 };
        assert_eq!((write.syscall, write.mnt_id, write.ino), (expected, 0, 0), "{write:?}");
    }
    assert_eq!(write.walk, dstrace_common::Walk::NONE, "a write walks no path");
    let me = std::process::id();
    assert!(
        inflight.iter().all(|(tid, wait)| *tid != own_tid && wait.tgid != me),
        "dstrace's own wait is recorded"
    );

    // The iterator, loaded with the rest, sees them too, but not this process's
    // task in D (no pass after the first looks for it: it walks no path and owns
    // no lock).
    let look = tracer.look(&[]).expect("look");
    assert!(task(&look, stats.stuck[0]).walk.as_ref().is_some_and(|walk| walk.mnt_id == lookups_id));
    let writer = task(&look, writers.stuck[0]);
    if syscall_nr(writer) == Some(libc::SYS_write) {
        assert!(writer.fd_file.as_ref().is_some_and(|file| file.mnt_id == writes_id), "{writer:#?}");
    }
    assert!(look.tasks.iter().all(|task| task.tid != own_tid), "dstrace's own task in D is in the look");

    drop((stats, writers));
    own.join().unwrap();
}
