//! A wait: a task in D ([`InFlight`]), its end ([`WaitEvent`]), who woke it, what it
//! waits on ([`Cause`]) and what its syscall and path walk name ([`Target`], [`Walk`]).

/// `TASK_UNINTERRUPTIBLE` (include/linux/sched.h): the `D` of `ps`.
pub const TASK_UNINTERRUPTIBLE: u32 = 0x0002;
/// `TASK_WAKEKILL`: with `TASK_UNINTERRUPTIBLE` it makes `TASK_KILLABLE`.
pub const TASK_WAKEKILL: u32 = 0x0100;
/// `TASK_NOLOAD`: with `TASK_UNINTERRUPTIBLE` it makes `TASK_IDLE`, the state idle
/// kernel threads sleep in all day; not counted in the load average.
pub const TASK_NOLOAD: u32 = 0x0400;

/// `TASK_DEAD`: the task has exited (its last switch-out).
pub const TASK_DEAD: u32 = 0x0080;
/// `PF_KTHREAD` in `task_struct.flags`: a kernel thread, which has no syscall.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Length of `task_struct.comm` (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Who woke a task out of D (set by `sched_waking`; zero until then).
///
/// A wake-up from interrupt context names whatever task the interrupt came in on
/// (often the idle task, tid 0), as offwaketime does.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waker {
    /// When the wake-up happened (`bpf_ktime_get_ns`); 0 = not woken yet.
    pub at_ns: u64,
    /// The waker's thread id.
    pub tid: u32,
    /// The waker's thread group id.
    pub tgid: u32,
    /// The waker's kernel stack in `STACKS`, or a negative errno.
    pub kstack_id: i32,
    /// Explicit padding.
    pub _pad: u32,
    /// The waker's `comm`.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<Waker>() == 40);

/// What a wait is on: filled by the attribution hooks (a kernel lock, ...);
/// `kind == CAUSE_NONE` when none applies.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cause {
    /// `CAUSE_*`.
    pub kind: u32,
    /// Kind-specific flags: for a lock the `LCB_F_*` bits of `lock:contention_begin`
    /// and the `CAUSE_*` bits above them.
    pub flags: u32,
    /// The identity of the cause within its kind (a lock address, a request id).
    pub key: u64,
    /// Device number (`s_dev`) of the filesystem concerned, or 0.
    pub dev: u32,
    /// The holder's thread id (a lock's owner when it began to wait), or 0.
    pub holder_tid: u32,
    /// Inode number concerned, or 0.
    pub ino: u64,
    /// The holder's thread group id, or 0.
    pub holder_tgid: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The holder's `comm`.
    pub holder_comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<Cause>() == 56);

/// [`Cause::kind`]: nothing known.
pub const CAUSE_NONE: u32 = 0;
/// [`Cause::kind`]: a kernel lock (`lock:contention_begin`); `key` is its address.
pub const CAUSE_LOCK: u32 = 1;
/// [`Cause::kind`]: a name another task is looking up (`d_alloc_parallel`); `key`
/// is the parent dentry's address, the holder the task doing the lookup.
pub const CAUSE_DENTRY: u32 = 2;

/// A name being looked up: the parent dentry and the name's hash and length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DentryKey {
    /// The parent dentry's address.
    pub parent: u64,
    /// `qstr.hash_len` of the name.
    pub hash_len: u64,
}
const _: () = assert!(core::mem::size_of::<DentryKey>() == 16);

/// A task, named.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskId {
    /// Thread id.
    pub tid: u32,
    /// Thread group id.
    pub tgid: u32,
    /// `comm`.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<TaskId>() == 24);

impl Cause {
    /// No cause known.
    pub const NONE: Cause = Cause {
        kind: CAUSE_NONE,
        flags: 0,
        key: 0,
        dev: 0,
        holder_tid: 0,
        ino: 0,
        holder_tgid: 0,
        _pad: 0,
        holder_comm: [0; COMM_LEN],
    };
}

/// Bytes kept of the path a task walks (the kernel's copy, `nameidata.name->name`).
pub const PATH_LEN: usize = 128;

/// A path walk in progress (`task_struct.nameidata`, fs/namei.c): the directory the
/// walk is in. All zero when the task is not walking a path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    /// Mount ID of the directory's mount (`struct mount.mnt_id`: the first field of
    /// `/proc/PID/mountinfo`), or 0.
    pub mnt_id: u32,
    /// Device number (`s_dev`, kernel encoding) of that mount's superblock, or 0.
    pub dev: u32,
    /// Inode number of the directory (`nd->path.dentry->d_inode->i_ino`), or 0.
    pub dir_ino: u64,
}
const _: () = assert!(core::mem::size_of::<Walk>() == 16);

impl Walk {
    /// Not in a walk.
    pub const NONE: Walk = Walk { mnt_id: 0, dev: 0, dir_ino: 0 };
}

/// What the task waits on, named by kernel objects, read when it enters D: the
/// syscall and the file behind its file descriptor argument, and the path walk in
/// progress. Nothing here comes from the task's user memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The syscall number, or -1 when unknown (not recorded, not in a syscall, or a
    /// kernel thread, which has none).
    pub syscall: i32,
    /// Its file descriptor argument, or -1.
    pub fd: i32,
    /// Device number (`s_dev`, kernel encoding) of that file's filesystem, or 0.
    pub dev: u32,
    /// Mount ID of the mount that file was opened through (`file->f_path.mnt`), or 0.
    pub mnt_id: u32,
    /// Inode number of that file, or 0.
    pub ino: u64,
    /// The path walk in progress, whatever the syscall (an fd syscall may walk too).
    pub walk: Walk,
    /// The path being walked as the kernel copied it (`nd->name->name`, maybe
    /// relative), NUL-terminated; empty when not in a walk.
    pub path: [u8; PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<Target>() == 40 + PATH_LEN);

impl Target {
    /// Nothing known.
    pub const NONE: Target =
        Target { syscall: -1, fd: -1, dev: 0, mnt_id: 0, ino: 0, walk: Walk::NONE, path: [0; PATH_LEN] };
}

/// A task in D now: the value of `INFLIGHT`, keyed by tid; also the body of a
/// completed wait ([`WaitEvent`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the task was switched out.
    pub start_ns: u64,
    /// The task's cgroup v2 id.
    pub cgroup_id: u64,
    /// Thread group id (the pid of `ps`).
    pub tgid: u32,
    /// Id of the kernel stack in `STACKS`, or a negative errno when it was lost.
    pub kstack_id: i32,
    /// Id of the user stack in `STACKS`, a negative errno, or [`NO_STACK`] when
    /// user stacks are not recorded.
    pub ustack_id: i32,
    /// The task state it slept in (`TASK_*` bits).
    pub state: u32,
    /// `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// Who woke it, once woken.
    pub waker: Waker,
    /// What it waits on.
    pub cause: Cause,
    /// What its syscall and path walk name.
    pub target: Target,
}
const _: () = assert!(core::mem::size_of::<InFlight>() == 144 + 40 + PATH_LEN);

/// A stack id that means "not recorded" (distinct from every negative errno).
pub const NO_STACK: i32 = i32::MIN;

/// A completed D wait, as streamed on `EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitEvent {
    /// The wait as it was recorded, waker and cause included.
    pub wait: InFlight,
    /// When the task ran again.
    pub end_ns: u64,
    /// Thread id.
    pub tid: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<WaitEvent>() == core::mem::size_of::<InFlight>() + 16);

/// `lock:contention_begin` flags (include/trace/events/lock.h): a spinning wait.
pub const LCB_F_SPIN: u32 = 1 << 0;
/// A read (shared) acquisition.
pub const LCB_F_READ: u32 = 1 << 1;
/// A write (exclusive) acquisition.
pub const LCB_F_WRITE: u32 = 1 << 2;
/// An rt-mutex.
pub const LCB_F_RT: u32 = 1 << 3;
/// A percpu rwsem.
pub const LCB_F_PERCPU: u32 = 1 << 4;
/// A mutex.
pub const LCB_F_MUTEX: u32 = 1 << 5;

/// [`Cause::flags`] bit (above the `LCB_F_*` bits): the lock is an inode's
/// `i_rwsem`; `Cause::dev` and `Cause::ino` name the inode.
pub const CAUSE_INODE_RWSEM: u32 = 1 << 16;
/// [`Cause::flags`] bit: the owner was read (`Cause::holder_*` are set).
pub const CAUSE_HOLDER_KNOWN: u32 = 1 << 17;
/// [`Cause::flags`] bit: the rwsem is held for reading; the holder named is only
/// the last reader to take it (a hint).
pub const CAUSE_HOLDER_READER_HINT: u32 = 1 << 18;
