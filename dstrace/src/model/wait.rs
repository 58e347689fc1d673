//! One D wait as dstrace shows it: who, when, how long, where, woken by whom.
//!
//! Everything dstrace prints is a grouping of these records. A wait still going on
//! (a task in D now) is a record too, with no end and a duration that grows; one
//! seen only in `/proc` (it began before tracing, or BPF is unavailable) says so in
//! [`Wait::source`].

use std::time::SystemTime;

use aya::maps::{MapData, StackTraceMap};
use dstrace_common::{
    Cause, InFlight, WaitEvent, CAUSE_DENTRY, CAUSE_HOLDER_KNOWN, CAUSE_HOLDER_READER_HINT,
    CAUSE_INODE_RWSEM, CAUSE_LOCK, LCB_F_MUTEX, LCB_F_PERCPU, LCB_F_READ, LCB_F_RT, LCB_F_WRITE, NO_STACK,
    TASK_NOLOAD, TASK_WAKEKILL,
};

use crate::{
    kernel::decode::{comm_string, kernel_dev},
    model::link::Link,
    resolve::{
        attribution::{attribute, attribute_proc, Attribution, FilePaths},
        mounts::MountTable,
        procfs::{self, ProcTask, Syscall},
        symbols::{blocking_function, is_interrupt_frame, Stack},
        Names,
    },
};

/// A D wait, ongoing or completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    /// When the task entered D (for a wait seen only in `/proc`: when it last ran,
    /// so the wait began at or after this; `None` when unknown).
    pub start: Option<SystemTime>,
    /// When it ran again; `None` while it is still in D.
    pub end: Option<SystemTime>,
    /// How long it has been in D, in nanoseconds (so far, for an ongoing wait).
    pub duration_ns: u64,
    /// Thread id.
    pub tid: u32,
    /// Process id (thread group id).
    pub pid: u32,
    /// Command name, as the kernel has it (any bytes; the sinks escape them).
    pub comm: String,
    /// The task's cgroup v2 id (0 when unknown).
    pub cgroup_id: u64,
    /// Its cgroup v2 path (its container or service), when known.
    pub cgroup: Option<String>,
    /// The kind of sleep.
    pub state: TaskState,
    /// The kernel function it blocked in, when the stack is known.
    pub blocked_in: Option<String>,
    /// The kernel stack, innermost frame first (empty when lost).
    pub stack: Stack,
    /// The user stack as addresses, when asked for (`--user-stacks`).
    pub user_stack: Stack,
    /// Who woke it, when known.
    pub waker: Option<WakerInfo>,
    /// Which syscall, mount and file it concerns.
    pub on: Attribution,
    /// The kernel lock it waits for, when it waits for one.
    pub lock: Option<LockInfo>,
    /// The wait chain, for waits still going on (see [`crate::model::chain`]); empty
    /// otherwise.
    pub chain: Vec<Link>,
    /// Where the record comes from.
    pub source: Source,
}

/// Who woke a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakerInfo {
    /// The waker's thread id (0: the idle task, i.e. an interrupt on an idle CPU).
    pub tid: u32,
    /// The waker's process id.
    pub pid: u32,
    /// The waker's command name.
    pub comm: String,
    /// Whether the wake-up came from interrupt context (then the task named is
    /// only the one the interrupt came in on).
    pub interrupt: bool,
    /// The waker's kernel stack.
    pub stack: Stack,
}

/// A kernel lock a task waits for (`lock:contention_begin`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    /// `mutex`, `rwsem-write`, `rwsem-read`, `rt-mutex`, `percpu-rwsem`,
    /// `semaphore`, `lock`, or
    /// `dentry-lookup`: not a lock but a name another task (the holder) is looking
    /// up, which the waiter waits for in `d_alloc_parallel`.
    pub kind: &'static str,
    /// Its address.
    pub addr: u64,
    /// For an inode's `i_rwsem`: the inode's device (`major:minor`) and number.
    pub inode: Option<((u32, u32), u64)>,
    /// Who held it when the wait began, when known.
    pub holder: Option<Holder>,
}

impl LockInfo {
    /// What the lock is, for people: `i_rwsem of inode 1 (0:55)`, or its kind and
    /// address.
    pub fn name(&self) -> String {
        match (self.kind, self.inode) {
            (_, Some(((major, minor), ino))) => format!("i_rwsem of inode {ino} ({major}:{minor})"),
            ("dentry-lookup", None) => format!("lookup of a name in dentry {:#x}", self.addr),
            (kind, None) => format!("{kind} {:#x}", self.addr),
        }
    }
}

/// The task holding a lock, and what it is doing now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Its thread id.
    pub tid: u32,
    /// Its process id.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// For a rwsem held for reading: only the last reader to take it (a hint).
    pub reader_hint: bool,
    /// Whether it was looked at now (the holder of a wait still going on): then
    /// a `state` of `None` means it has exited. A completed wait's holder is
    /// left as it was when the wait began.
    pub looked: bool,
    /// Its state letter now (`/proc`), if it was looked at and still exists.
    pub state: Option<char>,
    /// Where it is blocked now (`/proc` stack or wchan), if it is.
    pub function: Option<String>,
}

/// Every [`LockInfo::kind`].
pub const LOCK_KINDS: [&str; 8] =
    ["mutex", "rwsem-write", "rwsem-read", "rt-mutex", "percpu-rwsem", "semaphore", "lock", "dentry-lookup"];

/// The [`LockInfo::kind`] of this name (read back from a recording); `lock` when
/// unknown.
pub fn lock_kind(name: &str) -> &'static str {
    LOCK_KINDS.iter().find(|&&kind| kind == name).copied().unwrap_or("lock")
}

/// The lock of a recorded cause. With `holder_now` (a wait still going on), what
/// its holder does now is looked up in `/proc`; a completed wait's holder is left
/// as it was recorded (what it does after the wait says nothing of the wait, and
/// the look costs five reads of `/proc` per wait).
pub fn lock_info(cause: &Cause, holder_now: bool) -> Option<LockInfo> {
    if cause.kind != CAUSE_LOCK && cause.kind != CAUSE_DENTRY {
        return None;
    }
    let flags = cause.flags;
    let kind = if cause.kind == CAUSE_DENTRY {
        "dentry-lookup"
    } else if flags & LCB_F_MUTEX != 0 {
        "mutex"
    } else if flags & LCB_F_RT != 0 {
        "rt-mutex"
    } else if flags & LCB_F_PERCPU != 0 {
        "percpu-rwsem"
    } else if flags & LCB_F_WRITE != 0 {
        "rwsem-write"
    } else if flags & LCB_F_READ != 0 {
        "rwsem-read"
    } else {
        "lock"
    };
    let inode = (flags & CAUSE_INODE_RWSEM != 0).then(|| (kernel_dev(cause.dev), cause.ino));
    let holder = (flags & CAUSE_HOLDER_KNOWN != 0).then(|| {
        let now = holder_now
            .then(|| procfs::task(std::path::Path::new("/proc"), cause.holder_tgid, cause.holder_tid))
            .flatten();
        let function = now.as_ref().and_then(ProcTask::blocked_in);
        Holder {
            tid: cause.holder_tid,
            pid: cause.holder_tgid,
            comm: comm_string(&cause.holder_comm),
            reader_hint: flags & CAUSE_HOLDER_READER_HINT != 0,
            looked: holder_now,
            state: now.map(|task| task.state),
            function,
        }
    });
    Some(LockInfo { kind, addr: cause.key, inode, holder })
}

/// Where a [`Wait`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Traced by the eBPF programs from its start.
    Traced,
    /// Seen in `/proc`: it began before tracing did (or nothing is traced).
    Proc,
    /// Read from kernel memory by the task iterator: it began before tracing did
    /// (or nothing is traced), and is explained from the kernel's own objects.
    Iterator,
}

/// The kind of uninterruptible sleep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// `TASK_UNINTERRUPTIBLE`: no signal wakes it.
    Uninterruptible,
    /// `TASK_KILLABLE`: only a fatal signal wakes it.
    Killable,
    /// `TASK_IDLE`: an idle kernel thread, not counted in the load average.
    Idle,
}

impl TaskState {
    /// From the kernel's `TASK_*` bits.
    pub fn from_bits(state: u32) -> TaskState {
        if state & TASK_NOLOAD != 0 {
            TaskState::Idle
        } else if state & TASK_WAKEKILL != 0 {
            TaskState::Killable
        } else {
            TaskState::Uninterruptible
        }
    }

    /// A short name: `D`, `D+killable`, `D+idle`.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Uninterruptible => "D",
            TaskState::Killable => "D+killable",
            TaskState::Idle => "D+idle",
        }
    }
}

/// "Now", for ages read from `/proc`.
#[derive(Clone, Debug)]
pub struct ProcNow {
    /// The wall-clock time.
    pub wall: SystemTime,
    /// Each CPU's task clock now ([`procfs::task_clocks_now`]).
    pub task_clocks: std::collections::HashMap<u32, u64>,
}

impl ProcNow {
    /// Reads the clocks now: after a look (or a listing of `/proc`), so that every
    /// task it read last ran before and its age is never below zero.
    pub fn read() -> ProcNow {
        ProcNow { wall: SystemTime::now(), task_clocks: procfs::task_clocks_now() }
    }

    /// How long a task has not run, a lower bound, from its `se.exec_start`
    /// (`last_ran`, on the task clock of the CPU it was stamped on) and the CPU the
    /// kernel says it is on. Normally that CPU stamped it. A sleeping task that the
    /// scheduler moved since (a dequeue the kernel delays keeps it on a run queue,
    /// where load balancing may move it) keeps the old CPU's stamp, which may lie
    /// ahead of its new CPU's clock (the clocks of two CPUs drift apart by their
    /// interrupt and stolen time, minutes on a busy virtual machine): then the least
    /// age on any CPU whose clock has passed the stamp, still a lower bound since
    /// one of them stamped it. `None` when the kernel reset the stamp (0) or no
    /// clock passed it.
    pub fn age_since(&self, last_ran: Option<u64>, cpu: Option<u32>) -> Option<u64> {
        let ran = last_ran.filter(|&ran| ran != 0)?;
        let own = cpu.and_then(|cpu| self.task_clocks.get(&cpu)).copied();
        match own {
            Some(now) if ran <= now => Some(now - ran),
            _ => self.task_clocks.values().filter(|&&now| ran <= now).map(|&now| now - ran).min(),
        }
    }
}

/// What turns kernel records into [`Wait`]s: the names, and the kernel side's
/// stack map their stack ids refer to.
pub struct Resolver<'a> {
    /// Symbols, mounts, files, cgroups, the clock.
    pub names: &'a mut Names,
    /// The kernel side's stack map.
    pub stack_map: &'a StackTraceMap<MapData>,
}

impl Wait {
    /// A completed wait from its ring buffer record.
    pub fn completed(event: &WaitEvent, resolver: &mut Resolver<'_>) -> Wait {
        let mut wait = Wait::traced(event.tid, &event.wait, event.end_ns, false, resolver);
        wait.end = Some(resolver.names.clock.wall(event.end_ns));
        wait
    }

    /// A wait still going on at `now_ns`, from its `INFLIGHT` entry.
    ///
    /// A stack the kernel side lost (a full or colliding stack map: counted as
    /// `stack_lost`) is read from `/proc/PID/stack` instead: the task is still in
    /// D, so the stack there is the one it sleeps with.
    ///
    /// Where the kernel side could not read the syscall (a kernel before 5.18 has
    /// no `bpf_task_pt_regs` in its `sched_switch`), the task is still in it: its
    /// syscall, and for a file descriptor the file and mount, come from `/proc`.
    pub fn ongoing(tid: u32, wait: &InFlight, now_ns: u64, resolver: &mut Resolver<'_>) -> Wait {
        let mut ongoing = Wait::traced(tid, wait, now_ns, true, resolver);
        let lost_stack = ongoing.stack.is_empty();
        let no_syscall = wait.target.syscall == -1;
        if !lost_stack && !no_syscall {
            return ongoing;
        }
        let Some(task) = procfs::task(std::path::Path::new("/proc"), wait.tgid, tid) else { return ongoing };
        if lost_stack {
            if let Some(stack) = task.stack.as_ref().filter(|stack| !stack.is_empty()) {
                ongoing.stack = Stack::from(stack.clone());
                ongoing.blocked_in = blocking_of(&ongoing.stack);
            }
        }
        if let (true, Some(Syscall::Blocked { nr, args })) = (no_syscall, task.syscall) {
            let names = &mut *resolver.names;
            if ongoing.on.mount.is_none() && ongoing.on.file.is_none() {
                ongoing.on = attribute_proc(task.pid, nr, &args, &mut names.mounts);
            } else {
                ongoing.on.syscall =
                    i32::try_from(nr).ok().and_then(crate::kernel::syscalls::by_nr).map(|s| s.name);
            }
        }
        ongoing
    }

    fn traced(tid: u32, wait: &InFlight, until_ns: u64, ongoing: bool, resolver: &mut Resolver<'_>) -> Wait {
        let names = &mut *resolver.names;
        let stack = names.stacks.kernel(resolver.stack_map, wait.kstack_id);
        let user_stack = match wait.ustack_id {
            NO_STACK => Stack::from([]),
            id => names.stacks.user(resolver.stack_map, id),
        };
        let waker = (wait.waker.at_ns != 0).then(|| {
            let stack = names.stacks.kernel(resolver.stack_map, wait.waker.kstack_id);
            WakerInfo {
                tid: wait.waker.tid,
                pid: wait.waker.tgid,
                comm: comm_string(&wait.waker.comm),
                interrupt: wait.waker.tid == 0 || stack.iter().any(|frame| is_interrupt_frame(frame)),
                stack,
            }
        });
        Wait {
            start: Some(names.clock.wall(wait.start_ns)),
            end: None,
            duration_ns: until_ns.saturating_sub(wait.start_ns),
            tid,
            pid: wait.tgid,
            comm: comm_string(&wait.comm),
            cgroup_id: wait.cgroup_id,
            cgroup: names.cgroups.path(wait.tgid, wait.cgroup_id),
            state: TaskState::from_bits(wait.state),
            blocked_in: blocking_of(&stack),
            stack,
            user_stack,
            waker,
            on: attribute_with_lock(wait, &mut names.mounts, &mut names.files),
            lock: lock_info(&wait.cause, ongoing),
            chain: Vec::new(),
            source: Source::Traced,
        }
    }

    /// A task in D now as `/proc` shows it.
    ///
    /// `/proc` does not say when the wait began; the task's last run bounds it:
    /// the wait is at least as old as the task clock of the CPU it last ran on now,
    /// minus its `se.exec_start` then. That clock runs behind CLOCK_MONOTONIC by the
    /// CPU's time in interrupts and stolen by the hypervisor, so neither it and
    /// CLOCK_MONOTONIC nor two CPUs' clocks may be mixed.
    pub fn from_proc(task: &ProcTask, now: &ProcNow, names: &mut Names) -> Wait {
        let stack: Stack = task.stack.clone().unwrap_or_default().into();
        let blocked_in = task.blocked_in();
        let age = now.age_since(task.last_ran_ns, task.cpu);
        Wait {
            start: age.and_then(|age| now.wall.checked_sub(std::time::Duration::from_nanos(age))),
            end: None,
            duration_ns: age.unwrap_or(0),
            tid: task.tid,
            pid: task.pid,
            comm: task.comm.clone(),
            cgroup_id: 0,
            cgroup: names.cgroups.path(task.pid, 0),
            state: if task.state == 'I' { TaskState::Idle } else { TaskState::Uninterruptible },
            blocked_in,
            stack,
            user_stack: Stack::from([]),
            waker: None,
            on: match task.syscall {
                Some(Syscall::Blocked { nr, args }) => attribute_proc(task.pid, nr, &args, &mut names.mounts),
                _ => Attribution::default(),
            },
            lock: None,
            chain: Vec::new(),
            source: Source::Proc,
        }
    }

    /// Whether the wait is still going on.
    pub fn is_ongoing(&self) -> bool {
        self.end.is_none()
    }
}

/// The syscall's attribution; the mount of the inode whose lock it waits for when
/// the syscall names none.
fn attribute_with_lock(wait: &InFlight, mounts: &mut MountTable, files: &mut FilePaths) -> Attribution {
    let mut on = attribute(wait.tgid, &wait.target, mounts, files);
    if on.mount.is_none() && wait.cause.kind == CAUSE_LOCK && wait.cause.flags & CAUSE_INODE_RWSEM != 0 {
        on.mount = mounts.by_dev(wait.tgid, wait.cause.dev);
    }
    on
}

fn blocking_of(stack: &Stack) -> Option<String> {
    blocking_function(stack.iter().map(String::as_str)).map(str::to_owned)
}

/// Waits made up for the unit tests of what reads them (advice, metrics, the
/// daemon's lines): one constructor, so that a field added to [`Wait`] is added
/// once.
#[cfg(test)]
pub mod fake {
    use super::*;

    /// Task `pid` (`df`, in `rpc_wait_bit_killable`) in D for `age_ns` now, on
    /// the mount of a `/proc/PID/mountinfo` line (on none for `""`).
    pub fn ongoing(pid: u32, mountinfo: &str, age_ns: u64) -> Wait {
        Wait {
            start: None,
            end: None,
            duration_ns: age_ns,
            tid: pid,
            pid,
            comm: "df".into(),
            cgroup_id: 0,
            cgroup: None,
            state: TaskState::Uninterruptible,
            blocked_in: Some("rpc_wait_bit_killable".into()),
            stack: [].into(),
            user_stack: [].into(),
            waker: None,
            on: Attribution {
                mount: crate::resolve::mounts::parse(mountinfo).pop(),
                ..Attribution::default()
            },
            lock: None,
            chain: Vec::new(),
            source: Source::Proc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        assert_eq!(TaskState::from_bits(0x2), TaskState::Uninterruptible);
        assert_eq!(TaskState::from_bits(0x102), TaskState::Killable);
        assert_eq!(TaskState::from_bits(0x402), TaskState::Idle);
    }

    #[test]
    fn lock_causes_are_named() {
        let mut cause = Cause::NONE;
        assert_eq!(lock_info(&cause, true), None);
        cause.kind = CAUSE_LOCK;
        cause.key = 0xffff_8880_1234_5678;
        cause.flags = LCB_F_MUTEX;
        let lock = lock_info(&cause, true).unwrap();
        assert_eq!((lock.kind, lock.holder.clone()), ("mutex", None));
        assert_eq!(lock.name(), "mutex 0xffff888012345678");

        cause.flags = LCB_F_WRITE | CAUSE_INODE_RWSEM | CAUSE_HOLDER_KNOWN;
        cause.dev = 55;
        cause.ino = 1;
        cause.holder_tid = u32::MAX; // no such task: state and function unknown
        cause.holder_tgid = u32::MAX;
        cause.holder_comm[..5].copy_from_slice(b"touch");
        let lock = lock_info(&cause, true).unwrap();
        assert_eq!(lock.kind, "rwsem-write");
        assert_eq!(lock.name(), "i_rwsem of inode 1 (0:55)");
        let holder = lock.holder.unwrap();
        assert_eq!((holder.comm.as_str(), holder.state, holder.reader_hint), ("touch", None, false));
    }

    #[test]
    fn proc_task_becomes_an_ongoing_wait_with_a_lower_bound_age() {
        let task = ProcTask {
            pid: 6,
            tid: 7,
            comm: "df".into(),
            state: 'D',
            ppid: 1,
            kernel_thread: false,
            wchan: Some("rpc_wait_bit_killable".into()),
            stack: Some(vec!["__schedule".into(), "schedule".into(), "rpc_wait_bit_killable".into()]),
            syscall: Some(Syscall::NotInSyscall),
            last_ran_ns: Some(1_000_000_000),
            cpu: Some(3),
        };
        let mut names = Names::new();
        let now = ProcNow {
            wall: std::time::UNIX_EPOCH + std::time::Duration::from_secs(100),
            task_clocks: [(3, 5_000_000_000), (4, 1)].into(),
        };
        let wait = Wait::from_proc(&task, &now, &mut names);
        assert!(wait.is_ongoing());
        assert_eq!(wait.duration_ns, 4_000_000_000);
        assert_eq!(wait.start, Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(96)));
        assert_eq!(wait.blocked_in.as_deref(), Some("rpc_wait_bit_killable"));
        assert_eq!(wait.source, Source::Proc);

        let unknown = ProcTask { stack: None, last_ran_ns: None, ..task };
        let wait = Wait::from_proc(&unknown, &now, &mut names);
        assert_eq!((wait.start, wait.duration_ns), (None, 0));
        assert_eq!(
            wait.blocked_in.as_deref(),
            Some("rpc_wait_bit_killable"),
            "wchan stands in for the stack"
        );
    }

    #[test]
    fn an_age_is_read_on_the_clock_that_stamped_it_and_never_above_it() {
        let now = |clocks: &[(u32, u64)]| ProcNow {
            wall: std::time::UNIX_EPOCH,
            task_clocks: clocks.iter().copied().collect(),
        };
        // CPU 0's clock 540 s ahead of CPU 1's, as seen on a busy virtual machine.
        let clocks = now(&[(0, 600_000), (1, 60_000)]);
        // Stamped on its own CPU: its own clock, whether ahead or behind.
        assert_eq!(clocks.age_since(Some(590_000), Some(0)), Some(10_000));
        assert_eq!(clocks.age_since(Some(50_000), Some(1)), Some(10_000));
        // Moved while asleep from CPU 0 to CPU 1: CPU 1's clock has not reached the
        // stamp, CPU 0's gives its age.
        assert_eq!(clocks.age_since(Some(590_000), Some(1)), Some(10_000));
        // A stamp the kernel reset, none, or one no clock passed: unknown.
        assert_eq!(clocks.age_since(Some(0), Some(0)), None);
        assert_eq!(clocks.age_since(None, Some(0)), None);
        assert_eq!(clocks.age_since(Some(700_000), Some(0)), None);
        // A CPU whose clock this process could not read: the least age on the others.
        assert_eq!(clocks.age_since(Some(50_000), Some(7)), Some(10_000));
    }
}
