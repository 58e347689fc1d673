//! One look of the task iterator ([`crate::kernel::iter`]): the tasks in D read
//! from kernel memory, whenever their wait began, the tasks their locks lead to,
//! and the processes serving each FUSE connection. From it come a wait that began
//! before dstrace started ([`Wait::from_seen`]), explained as fully as one seen
//! begin, and the hops of a chain past the first holder.
//!
//! What is said is what the kernel objects prove: the lock a task waits for is the
//! one `task_struct.blocker` names (6.16+), else the walked directory's or the
//! file's `i_rwsem` whose wait list the task is on; a name being looked up is owned
//! by the task that walks the same directory for the same name and is not itself
//! waiting for it; a FUSE daemon is a process holding a `/dev/fuse` file of that
//! very connection.

use std::collections::HashMap;

use dstrace_common::{TASK_NOLOAD, TASK_UNINTERRUPTIBLE};

use crate::{
    kernel::{
        decode::{kernel_dev, state_letter},
        iter::{BlockerKind, FuseFileSeen, Look, Peer, TaskSeen},
        syscalls,
    },
    model::wait::{Holder, LockInfo, ProcNow, Source, TaskState, Wait},
    resolve::{
        attribution::{attribute_objects, attribute_proc, objects_seen, Attribution},
        procfs::{self, Syscall},
        symbols::{blocking_function, Stack, Stacks},
        Names,
    },
};

/// Functions a task waiting for a name another task looks up sleeps in.
const LOOKUP_WAITS: [&str; 2] = ["d_alloc_parallel", "d_wait_lookup"];

/// A task of the look, its stack symbolized.
#[derive(Clone, Debug)]
pub struct SeenTask {
    /// What the iterator read.
    pub task: TaskSeen,
    /// Its kernel stack, innermost frame first.
    pub stack: Stack,
    /// Where it is blocked (the first frame that is not a wait primitive).
    pub blocked_in: Option<String>,
}

impl SeenTask {
    /// Whether it waits for a name another task is looking up.
    fn waits_for_lookup(&self) -> bool {
        self.stack.iter().take(4).any(|frame| LOOKUP_WAITS.iter().any(|wait| frame.starts_with(wait)))
    }
}

/// One look: the tasks by thread id, and the `/dev/fuse` files open.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    tasks: HashMap<u32, SeenTask>,
    fuse_files: Vec<FuseFileSeen>,
    /// Whether a look was taken at all (without one, nothing here is known: the
    /// daemon of a FUSE mount, for one, is then unknown).
    pub looked: bool,
}

impl Seen {
    /// The look, with its stacks symbolized.
    pub fn of(look: Look, stacks: &mut Stacks) -> Seen {
        let tasks = look
            .tasks
            .into_iter()
            .map(|task| {
                let stack = stacks.addresses(&task.stack);
                let blocked_in = blocking_function(stack.iter().map(String::as_str)).map(str::to_owned);
                (task.tid, SeenTask { task, stack, blocked_in })
            })
            .collect();
        Seen { tasks, fuse_files: look.fuse_files, looked: true }
    }

    /// A look of these tasks and files (tests).
    #[cfg(test)]
    pub(crate) fn from_parts(tasks: Vec<SeenTask>, fuse_files: Vec<FuseFileSeen>) -> Seen {
        Seen {
            tasks: tasks.into_iter().map(|seen| (seen.task.tid, seen)).collect(),
            fuse_files,
            looked: true,
        }
    }

    /// A task of the look.
    pub fn task(&self, tid: u32) -> Option<&SeenTask> {
        self.tasks.get(&tid)
    }

    /// The tasks in D (`TASK_IDLE` ones too with `include_idle`), by thread id.
    pub fn in_d(&self, include_idle: bool) -> impl Iterator<Item = &SeenTask> {
        let mut tasks: Vec<&SeenTask> = self
            .tasks
            .values()
            .filter(move |seen| {
                let state = seen.task.state;
                state & TASK_UNINTERRUPTIBLE != 0 && (include_idle || state & TASK_NOLOAD == 0)
            })
            .collect();
        tasks.sort_by_key(|seen| seen.task.tid);
        tasks.into_iter()
    }

    /// The `/dev/fuse` files of the FUSE connection of a mount's device (kernel
    /// encoding): its daemon's, and only its.
    pub fn serving(&self, dev: u32) -> impl Iterator<Item = &FuseFileSeen> {
        self.fuse_files.iter().filter(move |file| file.dev == dev)
    }

    /// The lock `seen` waits for, as its kernel objects prove it, with its holder
    /// as it is now: the lock `blocker` names; else (before 6.16) the walked
    /// directory's or the file's `i_rwsem` whose wait list the task is on; else the
    /// name it waits for another task to look up.
    pub fn lock_of(&self, seen: &SeenTask) -> Option<LockInfo> {
        let task = &seen.task;
        if let Some(blocker) = &task.blocker {
            let kind = kind_name(blocker.kind);
            // Whose i_rwsem it is: the walked directory's, or the file's.
            let inode = match (&task.walk, &task.fd_file) {
                (Some(walk), _) if walk.dir_rwsem == blocker.lock => {
                    Some((kernel_dev(walk.dev), walk.dir_ino))
                }
                (_, Some(file)) if file.rwsem == blocker.lock => Some((kernel_dev(file.dev), file.ino)),
                _ => None,
            };
            let holder = blocker
                .owner
                .as_ref()
                .filter(|owner| owner.tid != task.tid)
                .map(|owner| self.holder(owner, blocker.reader_hint));
            return Some(LockInfo { kind, addr: blocker.lock, inode, holder });
        }
        let walk = task.walk.as_ref().and_then(|walk| {
            let kind = walk.dir_waiting?;
            let inode = (kernel_dev(walk.dev), walk.dir_ino);
            Some((kind, walk.dir_rwsem, inode, walk.dir_owner.as_ref(), walk.dir_owner_reader_hint))
        });
        let file = task.fd_file.as_ref().and_then(|file| {
            let kind = file.waiting?;
            Some((
                kind,
                file.rwsem,
                (kernel_dev(file.dev), file.ino),
                file.owner.as_ref(),
                file.owner_reader_hint,
            ))
        });
        if let Some((kind, addr, inode, owner, reader_hint)) = walk.or(file) {
            let holder =
                owner.filter(|owner| owner.tid != task.tid).map(|owner| self.holder(owner, reader_hint));
            return Some(LockInfo { kind: kind_name(kind), addr, inode: Some(inode), holder });
        }
        if seen.waits_for_lookup() {
            let walk = task.walk.as_ref()?;
            let owner = self.tasks.values().find(|other| {
                other.task.tid != task.tid
                    && !other.waits_for_lookup()
                    && other.task.walk.as_ref().is_some_and(|theirs| {
                        theirs.dir_dentry == walk.dir_dentry && theirs.last == walk.last
                    })
            });
            let holder = owner.map(|owner| {
                let peer = Peer {
                    tid: owner.task.tid,
                    tgid: owner.task.tgid,
                    comm: owner.task.comm.clone(),
                    state: owner.task.state,
                };
                self.holder(&peer, false)
            });
            return Some(LockInfo { kind: "dentry-lookup", addr: walk.dir_dentry, inode: None, holder });
        }
        None
    }

    /// A lock's holder as it is now: from the look when it was read (its own
    /// record), else from `/proc`; gone if neither has it.
    pub fn holder(&self, owner: &Peer, reader_hint: bool) -> Holder {
        let (state, function) = match self.task(owner.tid) {
            Some(seen) => (Some(state_letter(seen.task.state)), seen.blocked_in.clone()),
            None => match procfs::task(std::path::Path::new("/proc"), owner.tgid, owner.tid) {
                Some(task) => (Some(task.state), task.blocked_in()),
                None => (None, None),
            },
        };
        Holder {
            tid: owner.tid,
            pid: owner.tgid,
            comm: owner.comm.clone(),
            reader_hint,
            looked: true,
            state,
            function,
        }
    }
}

/// A lock's kind as [`LockInfo::kind`] names it.
fn kind_name(kind: BlockerKind) -> &'static str {
    match kind {
        BlockerKind::Mutex => "mutex",
        BlockerKind::Semaphore => "semaphore",
        BlockerKind::RwsemReader => "rwsem-read",
        BlockerKind::RwsemWriter => "rwsem-write",
    }
}

impl Wait {
    /// The wait of a task the iterator found in D: it began before tracing (or no
    /// tracing runs), so its age is a lower bound (the time since it last ran,
    /// read on the task clock of the CPU it last ran on, as [`Wait::from_proc`]).
    pub fn from_seen(seen: &SeenTask, look: &Seen, now: &ProcNow, names: &mut Names) -> Wait {
        let task = &seen.task;
        let age = now.age_since(task.last_ran_ns, task.cpu);
        let lock = look.lock_of(seen);
        let mut on = attribution_of(task, names);
        if on.mount.is_none() {
            // The mount of the inode whose lock it waits for.
            if let Some(((major, minor), _)) = lock.as_ref().and_then(|lock| lock.inode) {
                on.mount = names.mounts.by_dev(task.tgid, (major << 20) | minor);
            }
        }
        Wait {
            start: age.and_then(|age| now.wall.checked_sub(std::time::Duration::from_nanos(age))),
            end: None,
            duration_ns: age.unwrap_or(0),
            tid: task.tid,
            pid: task.tgid,
            comm: task.comm.clone(),
            cgroup_id: task.cgroup_id,
            cgroup: names.cgroups.path(task.tgid, task.cgroup_id),
            state: TaskState::from_bits(task.state),
            blocked_in: seen.blocked_in.clone(),
            stack: seen.stack.clone(),
            user_stack: Stack::from([]),
            waker: None,
            on,
            lock,
            chain: Vec::new(),
            source: Source::Iterator,
        }
    }
}

/// What a task the iterator read waits on: from its kernel objects (its path
/// walk, the file behind its descriptor); where the kernel could not give its
/// registers (before 5.15), its syscall and file descriptor from `/proc`. A kernel
/// thread has none.
fn attribution_of(task: &TaskSeen, names: &mut Names) -> Attribution {
    let mut objects = objects_seen(task);
    if !task.syscall_from_proc || task.kernel_thread {
        return attribute_objects(task.tgid, &objects, &mut names.mounts, &mut names.files);
    }
    let dir =
        std::path::Path::new("/proc").join(task.tgid.to_string()).join("task").join(task.tid.to_string());
    let syscall = procfs::read_text_bounded(&dir.join("syscall"), procfs::BOUNDED_READ)
        .ok()
        .and_then(|text| procfs::parse_syscall(&text));
    let Some(Syscall::Blocked { nr, args }) = syscall else {
        return attribute_objects(task.tgid, &objects, &mut names.mounts, &mut names.files);
    };
    if objects.walk.is_none() {
        // Its file, from the descriptor's `fdinfo`.
        return attribute_proc(task.tgid, nr, &args, &mut names.mounts);
    }
    objects.syscall = i32::try_from(nr).ok().and_then(syscalls::by_nr);
    objects.fd = objects.syscall.and_then(|syscall| syscall.fd_arg).map(|i| args[usize::from(i)] as i32);
    attribute_objects(task.tgid, &objects, &mut names.mounts, &mut names.files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::iter::{BlockerSeen, WalkSeen};

    fn task(tid: u32, state: u32) -> TaskSeen {
        TaskSeen { comm: "bash".into(), ..TaskSeen::bare(tid, state) }
    }

    fn walk(dentry: u64, last: &str) -> WalkSeen {
        WalkSeen {
            path: format!("/mnt/{last}"),
            last: last.into(),
            mnt_id: 47,
            dev: 42,
            dir_ino: 1,
            dir_dentry: dentry,
            dir_rwsem: 0xffff_0000_0000_1198,
            dir_owner: None,
            dir_owner_reader_hint: false,
            dir_waiting: None,
        }
    }

    fn seen(tasks: Vec<(TaskSeen, &[&str])>) -> Seen {
        let tasks = tasks
            .into_iter()
            .map(|(task, frames)| {
                let stack: Stack = frames.iter().map(|frame| (*frame).to_owned()).collect();
                let blocked_in = blocking_function(stack.iter().map(String::as_str)).map(str::to_owned);
                (task.tid, SeenTask { task, stack, blocked_in })
            })
            .collect();
        Seen { tasks, fuse_files: Vec::new(), looked: true }
    }

    #[test]
    fn the_blocker_names_the_lock_its_inode_and_its_holder_now() {
        let mut writer = task(10, TASK_UNINTERRUPTIBLE);
        writer.walk = Some(walk(0xd0, "newfile"));
        let owner = Peer { tid: 9, tgid: 9, comm: "bash".into(), state: 1 };
        writer.blocker = Some(BlockerSeen {
            lock: 0xffff_0000_0000_1198,
            kind: BlockerKind::RwsemWriter,
            owner: Some(owner),
            reader_hint: false,
        });
        let look = seen(vec![
            (writer, &["path_openat", "do_filp_open"]),
            (task(9, 1), &["request_wait_answer", "__fuse_simple_request"]),
        ]);
        let lock = look.lock_of(look.task(10).unwrap()).unwrap();
        assert_eq!(lock.kind, "rwsem-write");
        assert_eq!(lock.name(), "i_rwsem of inode 1 (0:42)");
        let holder = lock.holder.unwrap();
        assert_eq!(
            (holder.tid, holder.state, holder.function.as_deref()),
            (9, Some('S'), Some("request_wait_answer"))
        );
    }

    /// Before 6.16 (no `blocker`): the i_rwsem whose wait list the task is on, the
    /// directory's or the file's, with its inode and its owner; `blocker` first
    /// where there is one.
    #[test]
    fn without_a_blocker_the_wait_list_names_the_lock_its_inode_and_its_holder() {
        use crate::kernel::iter::FileSeen;
        let owner = Peer { tid: 9, tgid: 9, comm: "sh".into(), state: 1 };
        let mut opener = task(10, TASK_UNINTERRUPTIBLE);
        opener.walk = Some(WalkSeen {
            dir_owner: Some(owner.clone()),
            dir_waiting: Some(BlockerKind::RwsemWriter),
            ..walk(0xd0, "created")
        });
        let mut writer = task(11, TASK_UNINTERRUPTIBLE);
        writer.fd_file = Some(FileSeen {
            fd: 3,
            mnt_id: 47,
            dev: 42,
            ino: 2,
            rwsem: 0xffff_0000_0000_2198,
            owner: Some(Peer { tid: 8, ..owner.clone() }),
            owner_reader_hint: false,
            waiting: Some(BlockerKind::RwsemWriter),
        });
        // A reader of a directory held for reading: its owner is a hint.
        let mut reader = task(12, TASK_UNINTERRUPTIBLE);
        reader.walk = Some(WalkSeen {
            dir_owner: Some(owner.clone()),
            dir_owner_reader_hint: true,
            dir_waiting: Some(BlockerKind::RwsemReader),
            ..walk(0xd0, "x")
        });
        let mut both = writer.clone();
        both.tid = 13;
        both.blocker = Some(BlockerSeen {
            lock: 0x5000,
            kind: BlockerKind::Mutex,
            owner: Some(owner.clone()),
            reader_hint: false,
        });
        let look = seen(vec![
            (opener, &["path_openat"]),
            (writer, &["fuse_file_write_iter"]),
            (reader, &["lookup_slow"]),
            (both, &["fuse_file_write_iter"]),
            (task(9, 1), &["request_wait_answer"]),
            (task(8, 1), &["request_wait_answer"]),
        ]);
        let lock = |tid| look.lock_of(look.task(tid).unwrap()).unwrap();
        let opened = lock(10);
        assert_eq!((opened.kind, opened.addr), ("rwsem-write", 0xffff_0000_0000_1198));
        assert_eq!(opened.name(), "i_rwsem of inode 1 (0:42)");
        let holder = opened.holder.unwrap();
        assert_eq!((holder.tid, holder.state, holder.reader_hint), (9, Some('S'), false));
        let written = lock(11);
        assert_eq!((written.kind, written.name().as_str()), ("rwsem-write", "i_rwsem of inode 2 (0:42)"));
        assert_eq!(written.holder.map(|holder| holder.tid), Some(8));
        let read = lock(12);
        assert_eq!(read.kind, "rwsem-read");
        assert!(read.holder.unwrap().reader_hint);
        assert_eq!((lock(13).kind, lock(13).addr), ("mutex", 0x5000), "the blocker first");
        // Not on the list: no lock proven (the walk's owner alone says nothing).
        let mut walker = task(14, TASK_UNINTERRUPTIBLE);
        walker.walk = Some(WalkSeen { dir_owner: Some(owner), ..walk(0xd0, "y") });
        let look = seen(vec![(walker, &["schedule_timeout"])]);
        assert_eq!(look.lock_of(look.task(14).unwrap()), None);
    }

    #[test]
    fn a_lookup_is_owned_by_the_task_that_walks_the_same_name_and_does_not_wait_for_it() {
        let mut waiter = task(20, TASK_UNINTERRUPTIBLE);
        waiter.walk = Some(walk(0xd0, "missing"));
        let mut other_waiter = task(21, TASK_UNINTERRUPTIBLE);
        other_waiter.walk = Some(walk(0xd0, "missing"));
        let mut elsewhere = task(22, 1);
        elsewhere.walk = Some(walk(0xd0, "other-name"));
        let mut owner = task(19, 1);
        owner.walk = Some(walk(0xd0, "missing"));
        let look = seen(vec![
            (waiter, &["d_alloc_parallel", "lookup_slow"]),
            (other_waiter, &["d_alloc_parallel", "lookup_slow"]),
            (elsewhere, &["request_wait_answer"]),
            (owner, &["request_wait_answer", "fuse_lookup"]),
        ]);
        let lock = look.lock_of(look.task(20).unwrap()).unwrap();
        assert_eq!((lock.kind, lock.addr), ("dentry-lookup", 0xd0));
        assert_eq!(lock.holder.map(|holder| holder.tid), Some(19));
        assert_eq!(look.lock_of(look.task(19).unwrap()), None, "the owner waits for the daemon, not a lock");
    }

    #[test]
    fn only_tasks_in_d_are_waits() {
        let look = seen(vec![
            (task(1, TASK_UNINTERRUPTIBLE), &[]),
            (task(2, 1), &[]),
            (task(3, TASK_UNINTERRUPTIBLE | TASK_NOLOAD), &[]),
        ]);
        assert_eq!(look.in_d(false).map(|seen| seen.task.tid).collect::<Vec<_>>(), [1]);
        assert_eq!(look.in_d(true).map(|seen| seen.task.tid).collect::<Vec<_>>(), [1, 3]);
    }
}
