//! What the task iterator programs (`iter/task`, `iter/task_file`) write with
//! `bpf_seq_write`: one fixed-size record per task ([`TaskRecord`]) or per open
//! `/dev/fuse` file ([`FuseFileRecord`]), read back by userspace from the iterator's
//! file. Every field comes from kernel memory; none from a task's user memory.

use crate::{Walk, COMM_LEN};

/// Frames kept of a task's kernel stack (`bpf_get_task_stack`), innermost first.
pub const ITER_STACK_FRAMES: usize = 64;
/// Bytes kept of the path a task walks (`nameidata.name->name`, the kernel's copy).
pub const ITER_PATH_LEN: usize = 256;
/// Bytes kept of the component being looked up (`nameidata.last.name`).
pub const ITER_NAME_LEN: usize = 64;
/// Requests on a FUSE connection's `iq.pending` counted at most: a
/// [`FuseFileRecord::pending`] of `FUSE_PENDING_MAX + 1` means more.
pub const FUSE_PENDING_MAX: u32 = 64;
/// Requests described one by one in a [`FuseFileRecord`]: those queued on
/// `iq.pending` first, then those its daemon has read ([`FUSE_REQUEST_READ`]).
pub const FUSE_REQUESTS_KEPT: usize = 8;
/// `FUSE_PQ_HASH_SIZE` (fs/fuse/fuse_i.h: `1 << FUSE_PQ_HASH_BITS`, 8 bits, since
/// Linux 4.20 made the processing queue a hash of the requests' `unique`): the list
/// heads of the table `fuse_dev.pq.processing` points to. A `#define`, so not in
/// BTF: the kernel allocates exactly this many (`fuse_dev_alloc`).
pub const FUSE_PQ_HASH_SIZE: u32 = 256;
/// `sizeof(struct list_head)`: two pointers, the stride of that table.
pub const LIST_HEAD_SIZE: u32 = 16;

/// `BLOCKER_TYPE_MASK` (include/linux/hung_task.h, 6.16+): the low bits of
/// `task_struct.blocker` are the lock's type, the rest its address.
pub const BLOCKER_TYPE_MASK: u64 = 0x3;
/// `BLOCKER_TYPE_MUTEX`.
pub const BLOCKER_TYPE_MUTEX: u64 = 0x0;
/// `BLOCKER_TYPE_SEM`.
pub const BLOCKER_TYPE_SEM: u64 = 0x1;
/// `BLOCKER_TYPE_RWSEM_READER` (6.17+).
pub const BLOCKER_TYPE_RWSEM_READER: u64 = 0x2;
/// `BLOCKER_TYPE_RWSEM_WRITER` (6.17+).
pub const BLOCKER_TYPE_RWSEM_WRITER: u64 = 0x3;
/// The low bits of a mutex's or rwsem's `owner` word that are flags, not the
/// owner's `task_struct` address.
pub const OWNER_FLAGS_MASK: u64 = 0x7;
/// `RWSEM_READER_OWNED` in an rwsem's `owner` word: held by readers; the task named
/// is only the last reader to take it (a hint).
pub const RWSEM_READER_OWNED: u64 = 0x1;

/// Entries of an rwsem's `wait_list` looked at, at most, for the task itself: a
/// task further down the list is not said to wait there.
pub const ITER_RWSEM_WAITERS: u32 = 32;
/// [`TaskRecord::fd_waiting`], [`TaskRecord::walk_dir_waiting`]: the task is not on
/// that rwsem's wait list (or it was not read).
pub const WAIT_LIST_NONE: u32 = 0;
/// ... it is, to write (`RWSEM_WAITING_FOR_WRITE`).
pub const WAIT_LIST_WRITER: u32 = 1;
/// ... it is, to read (`RWSEM_WAITING_FOR_READ`).
pub const WAIT_LIST_READER: u32 = 2;

/// The bits of an rwsem's `count` that say it is held: `RWSEM_WRITER_LOCKED` (bit 0)
/// and the reader count (bits 8 to 62), kernel/locking/rwsem.c since 5.3; the other
/// bits are waiters' flags, set on a free rwsem too.
pub const RWSEM_HELD_MASK: u64 = 0x7fff_ffff_ffff_ff01;

/// `S_IFMT` of `inode.i_mode`.
pub const S_IFMT: u16 = 0o170000;
/// `S_IFCHR`: a character device.
pub const S_IFCHR: u16 = 0o020000;
/// `/dev/fuse`'s device number, `MKDEV(10, 229)`, in the kernel's encoding
/// (`MINORBITS` = 20), as `inode.i_rdev` holds it.
pub const FUSE_DEV_RDEV: u32 = (10 << 20) | 229;

/// [`PeerRecord::flags`]: the peer was read.
pub const PEER_KNOWN: u32 = 1 << 0;
/// [`PeerRecord::flags`]: the lock is held for reading (or is a semaphore): the
/// task named is only the last to take it, a hint.
pub const PEER_READER_HINT: u32 = 1 << 1;

/// A task another task waits for: the owner named by a lock's owner word.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    /// Thread id.
    pub tid: u32,
    /// Thread group id.
    pub tgid: u32,
    /// `__state` (`state` before 5.14: its low 32 bits), raw `TASK_*` bits.
    pub state: u32,
    /// `PEER_*` bits; 0: none named.
    pub flags: u32,
    /// `comm`.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<PeerRecord>() == 32);

impl PeerRecord {
    /// None named.
    pub const NONE: PeerRecord = PeerRecord { tid: 0, tgid: 0, state: 0, flags: 0, comm: [0; COMM_LEN] };
}

/// [`TaskRecord::have`]: `cgroup_id` was read.
pub const HAVE_CGROUP: u32 = 1 << 0;
/// [`TaskRecord::have`]: `cpu` was read.
pub const HAVE_CPU: u32 = 1 << 1;
/// [`TaskRecord::have`]: `exec_start_ns` was read.
pub const HAVE_EXEC_START: u32 = 1 << 2;
/// [`TaskRecord::have`]: `syscall_nr` and `args` were read (`bpf_task_pt_regs`).
pub const HAVE_SYSCALL: u32 = 1 << 3;
/// [`TaskRecord::have`]: the `fd_*` fields describe the file of the syscall's fd.
pub const HAVE_FD_FILE: u32 = 1 << 4;
/// [`TaskRecord::have`]: the task walks a path: `walk*` fields are set.
pub const HAVE_WALK: u32 = 1 << 5;
/// [`TaskRecord::have`]: `blocker` was read and is not zero.
pub const HAVE_BLOCKER: u32 = 1 << 6;
/// [`TaskRecord::have`]: `blocker` is a `blocker_mutex` pointer (6.15), no type bits.
pub const HAVE_BLOCKER_MUTEX_ONLY: u32 = 1 << 7;

/// One task, as the `iter/task` programs write it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    /// Thread id.
    pub tid: u32,
    /// Thread group id.
    pub tgid: u32,
    /// `__state` (`state` before 5.14: its low 32 bits), raw `TASK_*` bits.
    pub state: u32,
    /// `task_struct.flags` (`PF_KTHREAD`: a kernel thread).
    pub flags: u32,
    /// The CPU it last ran on.
    pub cpu: u32,
    /// `HAVE_*` bits: which parts were read.
    pub have: u32,
    /// `se.exec_start`: when it last began to run, on its runqueue's task clock (ns).
    pub exec_start_ns: u64,
    /// Its cgroup v2 id.
    pub cgroup_id: u64,
    /// `comm`.
    pub comm: [u8; COMM_LEN],
    /// What `bpf_get_task_stack` returned: bytes written, or a negative errno.
    pub stack_bytes: i64,
    /// Its kernel stack, innermost first.
    pub stack: [u64; ITER_STACK_FRAMES],
    /// The syscall number in its saved user registers (-1: not in a syscall).
    pub syscall_nr: i64,
    /// The syscall's six arguments.
    pub args: [u64; 6],
    /// The syscall's file descriptor argument, or -1.
    pub fd: i32,
    /// Mount ID of the mount that file was opened through.
    pub fd_mnt_id: u32,
    /// `s_dev` of the file's superblock.
    pub fd_dev: u32,
    /// Whether the task is on the wait list of the file's inode's `i_rwsem`, and
    /// for what: `WAIT_LIST_*`.
    pub fd_waiting: u32,
    /// Inode number of the file.
    pub fd_ino: u64,
    /// Address of the file's inode's `i_rwsem` (compare with `blocker`).
    pub fd_rwsem: u64,
    /// Who holds that `i_rwsem`, if anyone.
    pub fd_owner: PeerRecord,
    /// The directory the path walk is in.
    pub walk: Walk,
    /// Address of that directory's dentry (`nameidata.path.dentry`).
    pub walk_dir_dentry: u64,
    /// Address of that directory inode's `i_rwsem` (compare with `blocker`).
    pub walk_dir_rwsem: u64,
    /// Whether the task is on that `i_rwsem`'s wait list, and for what:
    /// `WAIT_LIST_*`.
    pub walk_dir_waiting: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Who holds that `i_rwsem`, if anyone.
    pub walk_dir_owner: PeerRecord,
    /// `task_struct.blocker` (the lock's type in the low bits), or the
    /// `blocker_mutex` pointer ([`HAVE_BLOCKER_MUTEX_ONLY`]).
    pub blocker: u64,
    /// The blocking lock's owner (a mutex's or rwsem's, a semaphore's last holder).
    pub blocker_owner: PeerRecord,
    /// The component being looked up (`nameidata.last.name`), NUL-terminated.
    pub walk_last: [u8; ITER_NAME_LEN],
    /// The path walked, as the kernel copied it (`nameidata.name->name`),
    /// NUL-terminated.
    pub walk_path: [u8; ITER_PATH_LEN],
}
const _: () = assert!(
    core::mem::size_of::<TaskRecord>()
        == 64 + 8 * ITER_STACK_FRAMES + 56 + 32 + 32 + 72 + 8 + 32 + ITER_NAME_LEN + ITER_PATH_LEN
);

/// [`FuseRequestRecord::flags`]: the daemon has read the request (it is on a
/// `/dev/fuse` file's processing queue) and not answered it.
pub const FUSE_REQUEST_READ: u32 = 1 << 0;

/// A request of a FUSE connection not answered yet: queued (`fc->iq.pending`), or
/// read by the daemon ([`FUSE_REQUEST_READ`], `fud->pq.processing`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuseRequestRecord {
    /// `in.h.opcode` (`FUSE_LOOKUP` = 1, ...).
    pub opcode: u32,
    /// `in.h.pid`: the thread that sent it, as the connection's pid namespace
    /// numbers it.
    pub pid: u32,
    /// `in.h.unique`.
    pub unique: u64,
    /// `in.h.nodeid`.
    pub nodeid: u64,
    /// `create_time` (jiffies, 6.14+), 0 if unknown.
    pub create_jiffies: u64,
    /// `FUSE_REQUEST_*` bits.
    pub flags: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FuseRequestRecord>() == 40);

impl FuseRequestRecord {
    /// None described.
    pub const NONE: FuseRequestRecord =
        FuseRequestRecord { opcode: 0, pid: 0, unique: 0, nodeid: 0, create_jiffies: 0, flags: 0, _pad: 0 };
}

/// [`FuseFileRecord::have`]: the file is mounted: `dev`, `connected`, `num_waiting`
/// were read from its connection.
pub const HAVE_CONNECTION: u32 = 1 << 0;
/// [`FuseFileRecord::have`]: `pending` and `requests` were read.
pub const HAVE_PENDING: u32 = 1 << 1;
/// [`FuseFileRecord::have`]: the requests' `create_jiffies` were read.
pub const HAVE_CREATE_TIME: u32 = 1 << 2;
/// [`FuseFileRecord::have`]: `processing` was read (the file's processing queue).
pub const HAVE_PROCESSING: u32 = 1 << 3;

/// One open `/dev/fuse` file, as `iter/task_file` writes it (once per process: the
/// iterator skips threads that share their group leader's files).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuseFileRecord {
    /// Thread group id of the process holding it.
    pub tgid: u32,
    /// The thread the iterator met it in.
    pub tid: u32,
    /// Its file descriptor there.
    pub fd: u32,
    /// That thread's `__state`.
    pub state: u32,
    /// That thread's `comm`.
    pub comm: [u8; COMM_LEN],
    /// `fuse_conn.dev`: the FUSE mount's `s_dev` (its minor is the connection's
    /// number in /sys/fs/fuse/connections).
    pub dev: u32,
    /// `fuse_conn.connected`.
    pub connected: u32,
    /// `fuse_conn.num_waiting`: requests sent and not answered.
    pub num_waiting: u32,
    /// Requests on `iq.pending`, at most [`FUSE_PENDING_MAX`] (+1: more).
    pub pending: u32,
    /// `HAVE_*` bits of this record.
    pub have: u32,
    /// Requests this file's daemon has read and not answered: the buckets of its
    /// processing queue (`fud->pq.processing`, [`FUSE_PQ_HASH_SIZE`] lists) that are
    /// not empty. A lower bound: two requests in one bucket count once.
    pub processing: u32,
    /// How many of `requests` are filled.
    pub kept: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The address of its `struct fuse_dev` (`file->private_data`): the same for
    /// every process holding this open file, its own for a cloned one.
    pub fuse_dev: u64,
    /// `bpf_jiffies64()` when it was read.
    pub now_jiffies: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the same moment.
    pub now_ns: u64,
    /// The first `kept` requests: the first of `iq.pending`, then the first of each
    /// bucket of the processing queue that is not empty.
    pub requests: [FuseRequestRecord; FUSE_REQUESTS_KEPT],
}
const _: () = assert!(core::mem::size_of::<FuseFileRecord>() == 88 + 40 * FUSE_REQUESTS_KEPT);
