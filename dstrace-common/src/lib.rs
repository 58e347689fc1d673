//! Everything that crosses the kernel/user boundary, defined once.
//!
//! The eBPF programs (`dstrace-ebpf`) and the userspace collector (`dstrace`) both
//! compile this crate, so a record written by the kernel side is read by userspace
//! with the very same layout. Every type here is `#[repr(C)]`, `Copy`, has its
//! padding spelled out as named fields, and carries a compile-time size assertion:
//! a change of layout breaks the build instead of the decoding.
//!
//! Map and global names are constants here too, and a test in `tests/` asserts
//! that the loaded object has each of them.
#![no_std]

/// `TASK_UNINTERRUPTIBLE` (include/linux/sched.h): the `D` of `ps`.
pub const TASK_UNINTERRUPTIBLE: u32 = 0x0002;
/// `TASK_WAKEKILL`: with `TASK_UNINTERRUPTIBLE` it makes `TASK_KILLABLE`.
pub const TASK_WAKEKILL: u32 = 0x0100;
/// `TASK_NOLOAD`: with `TASK_UNINTERRUPTIBLE` it makes `TASK_IDLE`, the state idle
/// kernel threads sleep in all day; not counted in the load average.
pub const TASK_NOLOAD: u32 = 0x0400;

/// Length of `task_struct.comm` (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Names of the programs, maps and globals in the eBPF object.
pub mod names {
    /// The `tp_btf/sched_switch` program.
    pub const PROG_SCHED_SWITCH: &str = "sched_switch";
    /// The same for kernels before 5.18, whose `sched_switch` has no `prev_state`.
    pub const PROG_SCHED_SWITCH_PRE518: &str = "sched_switch_pre518";
    /// The `tp_btf/sched_waking` program: names the waker of a task in D.
    pub const PROG_SCHED_WAKING: &str = "sched_waking";
    /// A `tp_btf/sched_switch` program that does nothing: the floor of the
    /// benchmarks (`cargo xtask bench`), never attached by `dstrace run`.
    pub const PROG_SCHED_SWITCH_EMPTY: &str = "sched_switch_empty";
    /// The same for `sched_waking`.
    pub const PROG_SCHED_WAKING_EMPTY: &str = "sched_waking_empty";
    /// Tasks in D now: tid -> [`crate::InFlight`].
    pub const MAP_INFLIGHT: &str = "INFLIGHT";
    /// Kernel (and user) stacks, by the id stored in records.
    pub const MAP_STACKS: &str = "STACKS";
    /// Completed waits above the threshold, streamed as [`crate::WaitEvent`].
    pub const MAP_EVENTS: &str = "EVENTS";
    /// Per-CPU counters indexed by [`crate::Counter`].
    pub const MAP_COUNTERS: &str = "COUNTERS";
    /// Completed waits aggregated in the kernel: [`crate::AggKey`] -> [`crate::AggValue`].
    pub const MAP_AGG: &str = "AGG";
    /// One zeroed [`crate::AggValue`], the initial value of new `AGG` entries.
    pub const MAP_AGG_ZERO: &str = "AGG_ZERO";
    /// Filter sets (`--pid`, `--tid`, `--cgroup`, `--comm`): a key present = wanted.
    pub const MAP_FILTER_TGIDS: &str = "FILTER_TGIDS";
    /// See [`MAP_FILTER_TGIDS`].
    pub const MAP_FILTER_TIDS: &str = "FILTER_TIDS";
    /// See [`MAP_FILTER_TGIDS`].
    pub const MAP_FILTER_CGROUPS: &str = "FILTER_CGROUPS";
    /// See [`MAP_FILTER_TGIDS`].
    pub const MAP_FILTER_COMMS: &str = "FILTER_COMMS";
    /// The `tp_btf/contention_begin` program: a task is about to wait for a kernel lock.
    pub const PROG_CONTENTION_BEGIN: &str = "contention_begin";
    /// The `tp_btf/contention_end` program: it got the lock (or gave up).
    pub const PROG_CONTENTION_END: &str = "contention_end";
    /// `fentry/d_alloc_parallel`: a task looks a name up in the dcache.
    pub const PROG_DALLOC_ENTRY: &str = "d_alloc_parallel_entry";
    /// `fexit/d_alloc_parallel`: it got the dentry; if it is to look it up, it owns it.
    pub const PROG_DALLOC_EXIT: &str = "d_alloc_parallel_exit";
    /// `fentry/__d_lookup_unhash_wake`: the lookup of an in-lookup dentry is over.
    pub const PROG_DLOOKUP_DONE: &str = "d_lookup_done";
    /// `tp_btf/fuse_request_send`: a FUSE request goes to the daemon (6.13+).
    pub const PROG_FUSE_SEND: &str = "fuse_request_send";
    /// `tp_btf/fuse_request_end`: its answer came (or the connection ended).
    pub const PROG_FUSE_END: &str = "fuse_request_end";
    /// FUSE requests not answered yet: [`crate::FuseKey`] -> [`crate::FuseRequest`].
    pub const MAP_FUSE_INFLIGHT: &str = "FUSE_INFLIGHT";
    /// sunrpc: an RPC task begins (classic tracepoint `sunrpc/rpc_task_begin`).
    pub const PROG_RPC_BEGIN: &str = "rpc_task_begin";
    /// sunrpc: the call's program and procedure (`sunrpc/rpc_request`).
    pub const PROG_RPC_REQUEST: &str = "rpc_request";
    /// sunrpc: the request is (re)transmitted (`sunrpc/xprt_transmit`).
    pub const PROG_RPC_TRANSMIT: &str = "xprt_transmit";
    /// sunrpc: a major timeout, "server not responding" (`sunrpc/rpc_timeout_status`).
    pub const PROG_RPC_TIMEOUT: &str = "rpc_timeout_status";
    /// sunrpc: the RPC task is over (`sunrpc/rpc_task_end`).
    pub const PROG_RPC_END: &str = "rpc_task_end";
    /// RPC tasks in flight: [`crate::RpcKey`] -> [`crate::RpcCall`].
    pub const MAP_RPC_INFLIGHT: &str = "RPC_INFLIGHT";
    /// Tasks inside `d_alloc_parallel` now: tid -> [`crate::DentryKey`].
    pub const MAP_DLOOKUP_WAITING: &str = "DLOOKUP_WAITING";
    /// Dentries being looked up now: [`crate::DentryKey`] -> the owner's [`crate::TaskId`].
    pub const MAP_DLOOKUP_OWNERS: &str = "DLOOKUP_OWNERS";
    /// Tasks waiting for a kernel lock now: tid -> [`crate::Cause`].
    pub const MAP_CONTENDING: &str = "CONTENDING";
    /// Syscall number -> which arguments name a path and a file descriptor
    /// ([`crate::syscall_args`]), written by userspace for the running architecture.
    pub const MAP_SYSCALL_ARGS: &str = "SYSCALL_ARGS";
    /// Per-CPU scratch space where a wait record is built (too large for the stack).
    pub const MAP_SCRATCH: &str = "SCRATCH";
    /// The [`crate::Config`] global, set at load time.
    pub const GLOBAL_CONFIG: &str = "CONFIG";
    /// Number of entries in `INFLIGHT` (an upper bound), a `.bss` global that lets
    /// the hooks skip the map lookup while no task is in D.
    pub const GLOBAL_INFLIGHT_COUNT: &str = "INFLIGHT_COUNT";

    /// Every map the object must define.
    pub const MAPS: [&str; 17] = [
        MAP_RPC_INFLIGHT,
        MAP_FUSE_INFLIGHT,
        MAP_DLOOKUP_WAITING,
        MAP_DLOOKUP_OWNERS,
        MAP_CONTENDING,
        MAP_SYSCALL_ARGS,
        MAP_SCRATCH,
        MAP_INFLIGHT,
        MAP_STACKS,
        MAP_EVENTS,
        MAP_COUNTERS,
        MAP_AGG,
        MAP_AGG_ZERO,
        MAP_FILTER_TGIDS,
        MAP_FILTER_TIDS,
        MAP_FILTER_CGROUPS,
        MAP_FILTER_COMMS,
    ];
    /// Every program the object must define.
    pub const PROGRAMS: [&str; 17] = [
        PROG_RPC_BEGIN,
        PROG_RPC_REQUEST,
        PROG_RPC_TRANSMIT,
        PROG_RPC_TIMEOUT,
        PROG_RPC_END,
        PROG_FUSE_SEND,
        PROG_FUSE_END,
        PROG_DALLOC_ENTRY,
        PROG_DALLOC_EXIT,
        PROG_DLOOKUP_DONE,
        PROG_CONTENTION_BEGIN,
        PROG_CONTENTION_END,
        PROG_SCHED_SWITCH,
        PROG_SCHED_SWITCH_PRE518,
        PROG_SCHED_WAKING,
        PROG_SCHED_SWITCH_EMPTY,
        PROG_SCHED_WAKING_EMPTY,
    ];
}

/// Capacity of the maps; userspace and the kernel side agree through these.
pub mod limits {
    /// Tasks that can be tracked in D at once.
    pub const INFLIGHT_ENTRIES: u32 = 32_768;
    /// Distinct stacks kept (each entry holds 127 frames: about 1 KiB).
    pub const STACK_ENTRIES: u32 = 8_192;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 21;
    /// Distinct aggregation keys.
    pub const AGG_ENTRIES: u32 = 10_240;
    /// Entries of each filter set.
    pub const FILTER_ENTRIES: u32 = 64;
    /// FUSE requests tracked at once.
    pub const FUSE_ENTRIES: u32 = 8_192;
    /// sunrpc tasks tracked at once.
    pub const RPC_ENTRIES: u32 = 8_192;
    /// Name lookups tracked at once (tasks in `d_alloc_parallel`, dentries in lookup).
    pub const DLOOKUP_ENTRIES: u32 = 8_192;
    /// Tasks waiting for a kernel lock at once.
    pub const CONTENDING_ENTRIES: u32 = 8_192;
    /// Syscall numbers described in `SYSCALL_ARGS`.
    pub const SYSCALLS: u32 = 1024;
}

/// `Config::flags`: also record `TASK_IDLE` waits (idle kernel threads).
pub const CONFIG_INCLUDE_IDLE: u32 = 1 << 0;
/// `Config::flags`: also record the user stack of each wait.
pub const CONFIG_USER_STACKS: u32 = 1 << 1;
/// `Config::flags`: only tasks whose tgid is in `FILTER_TGIDS`.
pub const CONFIG_FILTER_TGID: u32 = 1 << 2;
/// `Config::flags`: only tasks whose tid is in `FILTER_TIDS`.
pub const CONFIG_FILTER_TID: u32 = 1 << 3;
/// `Config::flags`: only tasks whose cgroup (v2 id) is in `FILTER_CGROUPS`.
pub const CONFIG_FILTER_CGROUP: u32 = 1 << 4;
/// `Config::flags`: only tasks whose comm is in `FILTER_COMMS`.
pub const CONFIG_FILTER_COMM: u32 = 1 << 5;

/// `Config::flags`: `Config::offsets` are set: record what the syscall in
/// progress names (Linux 5.18+ program only: it needs `bpf_task_pt_regs`).
pub const CONFIG_SYSCALL_TARGET: u32 = 1 << 6;

/// `Config::flags`: `Config::locks` are set: the lock contention programs name
/// the lock's owner and, for an inode's `i_rwsem`, the inode.
pub const CONFIG_LOCK_OWNERS: u32 = 1 << 7;

/// Byte offsets for the lock contention programs, from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockOffsets {
    /// `rw_semaphore.owner`.
    pub rwsem_owner: u32,
    /// `mutex.owner`.
    pub mutex_owner: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.comm`.
    pub task_comm: u32,
    /// `inode.i_rwsem`.
    pub inode_rwsem: u32,
    /// `super_block.s_root`.
    pub sb_root: u32,
    /// `dentry.d_sb`.
    pub dentry_sb: u32,
    /// `dentry.d_flags`.
    pub dentry_flags: u32,
    /// `dentry.d_parent`.
    pub dentry_parent: u32,
    /// `dentry.d_name` (a `qstr`).
    pub dentry_name: u32,
    /// `qstr.hash_len`.
    pub qstr_hash_len: u32,
    /// The value of `DCACHE_PAR_LOOKUP` (a dentry being looked up).
    pub dcache_par_lookup: u32,
}
const _: () = assert!(core::mem::size_of::<LockOffsets>() == 48);

impl LockOffsets {
    /// All zero: unknown.
    pub const UNSET: LockOffsets = LockOffsets {
        rwsem_owner: 0,
        mutex_owner: 0,
        task_tgid: 0,
        task_comm: 0,
        inode_rwsem: 0,
        sb_root: 0,
        dentry_sb: 0,
        dentry_flags: 0,
        dentry_parent: 0,
        dentry_name: 0,
        qstr_hash_len: 0,
        dcache_par_lookup: 0,
    };
}

/// `Config::flags`: `Config::fuse` is set: the FUSE request programs are attached.
pub const CONFIG_FUSE_REQUESTS: u32 = 1 << 8;

/// Byte offsets for the FUSE request programs, from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuseOffsets {
    /// `fuse_req.in.h.opcode`.
    pub req_opcode: u32,
    /// `fuse_req.in.h.unique`.
    pub req_unique: u32,
    /// `fuse_req.in.h.nodeid`.
    pub req_nodeid: u32,
    /// `fuse_req.fm`.
    pub req_fm: u32,
    /// `fuse_mount.fc`.
    pub fm_fc: u32,
    /// `fuse_conn.dev`.
    pub fc_dev: u32,
}
const _: () = assert!(core::mem::size_of::<FuseOffsets>() == 24);

impl FuseOffsets {
    /// All zero: unknown.
    pub const UNSET: FuseOffsets =
        FuseOffsets { req_opcode: 0, req_unique: 0, req_nodeid: 0, req_fm: 0, fm_fc: 0, fc_dev: 0 };
}

/// `Config::flags`: `Config::rpc` is set: the sunrpc programs are attached.
pub const CONFIG_RPC: u32 = 1 << 9;

/// Where a field is in a sunrpc tracepoint's record: byte offsets read at start-up
/// from the event's `format` file in tracefs (`u32::MAX`: the event lacks it).
///
/// Classic tracepoints rather than BTF ones: their records are described by tracefs
/// on every kernel, including those whose sunrpc module has no BTF (Debian 5.10), and
/// they carry the strings (program and procedure names) already copied.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcOffsets {
    /// `task_id` (the RPC task's debug id, `tk_pid`) in each of the five events,
    /// in the order begin, request, transmit, timeout, end.
    pub task_id: [u32; 5],
    /// `client_id` (`cl_clid`) in each of the five events, in the same order.
    pub client_id: [u32; 5],
    /// `rpc_request.version`.
    pub request_version: u32,
    /// `rpc_request.progname` (a `__data_loc char[]`).
    pub request_progname: u32,
    /// `rpc_request.procname` (a `__data_loc char[]`).
    pub request_procname: u32,
    /// `xprt_transmit.xid`.
    pub transmit_xid: u32,
}
const _: () = assert!(core::mem::size_of::<RpcOffsets>() == 56);

/// Index of each sunrpc event in [`RpcOffsets::task_id`] and [`RpcOffsets::client_id`].
pub mod rpc_event {
    /// `rpc_task_begin`.
    pub const BEGIN: usize = 0;
    /// `rpc_request`.
    pub const REQUEST: usize = 1;
    /// `xprt_transmit`.
    pub const TRANSMIT: usize = 2;
    /// `rpc_timeout_status`.
    pub const TIMEOUT: usize = 3;
    /// `rpc_task_end`.
    pub const END: usize = 4;
}

impl RpcOffsets {
    /// Unknown.
    pub const UNSET: RpcOffsets = RpcOffsets {
        task_id: [u32::MAX; 5],
        client_id: [u32::MAX; 5],
        request_version: u32::MAX,
        request_progname: u32::MAX,
        request_procname: u32::MAX,
        transmit_xid: u32::MAX,
    };
}

/// An RPC task: its client and its debug id, as the sunrpc tracepoints name it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RpcKey {
    /// `rpc_clnt.cl_clid`.
    pub client_id: u32,
    /// `rpc_task.tk_pid`.
    pub task_id: u32,
}
const _: () = assert!(core::mem::size_of::<RpcKey>() == 8);

/// Length of the program name kept for an RPC (`nfs`, `lockd`, `mount`, ...).
pub const RPC_PROGNAME_LEN: usize = 16;
/// Length of the procedure name kept for an RPC (`GETATTR`, `LOCK`, `WRITE`, ...).
pub const RPC_PROCNAME_LEN: usize = 24;

/// An RPC task in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcCall {
    /// When the task began (`bpf_ktime_get_ns`); 0 when it began before tracing.
    pub started_ns: u64,
    /// When the first major timeout was seen ("server not responding"); 0 = none.
    pub first_timeout_ns: u64,
    /// The task that began it (a synchronous RPC runs in the caller; an
    /// asynchronous one begins there and runs in `rpciod`).
    pub task: TaskId,
    /// The transaction id of the last transmission (host order).
    pub xid: u32,
    /// The program's version (`rpc_request.version`, 0 = not seen).
    pub version: u32,
    /// Transmissions seen (more than one: retransmitted).
    pub transmits: u32,
    /// Major timeouts seen.
    pub timeouts: u32,
    /// The RPC program (`nfs`, `lockd`, ...), NUL-padded.
    pub progname: [u8; RPC_PROGNAME_LEN],
    /// The procedure (`GETATTR`, `LOCK`, ...), NUL-padded.
    pub procname: [u8; RPC_PROCNAME_LEN],
}
const _: () = assert!(core::mem::size_of::<RpcCall>() == 96);

impl RpcCall {
    /// A call first seen now, begun by `task`.
    pub const fn new(task: TaskId, started_ns: u64) -> RpcCall {
        RpcCall {
            started_ns,
            first_timeout_ns: 0,
            task,
            xid: 0,
            version: 0,
            transmits: 0,
            timeouts: 0,
            progname: [0; RPC_PROGNAME_LEN],
            procname: [0; RPC_PROCNAME_LEN],
        }
    }
}

/// A FUSE request: the connection (the mount's device) and its unique id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FuseKey {
    /// `fuse_conn.dev` (kernel encoding).
    pub dev: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// `fuse_in_header.unique`.
    pub unique: u64,
}
const _: () = assert!(core::mem::size_of::<FuseKey>() == 16);

/// A FUSE request not answered yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuseRequest {
    /// When it was sent (`bpf_ktime_get_ns`).
    pub sent_ns: u64,
    /// The inode it is about (`fuse_in_header.nodeid`).
    pub nodeid: u64,
    /// `fuse_in_header.opcode` (`FUSE_LOOKUP` = 1, ...).
    pub opcode: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The task that sent it.
    pub task: TaskId,
}
const _: () = assert!(core::mem::size_of::<FuseRequest>() == 48);

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

/// Byte offsets of the kernel fields the kernel side reads to learn what a task's
/// syscall names, all from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// `pt_regs` field holding the syscall number (`orig_ax` on x86-64).
    pub regs_syscall_nr: u32,
    /// `pt_regs` fields holding the six syscall arguments.
    pub regs_args: [u32; 6],
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.max_fds`.
    pub fdt_max_fds: u32,
    /// `fdtable.fd`.
    pub fdt_fd: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `inode.i_sb`.
    pub inode_sb: u32,
    /// `inode.i_ino`.
    pub inode_ino: u32,
    /// `super_block.s_dev`.
    pub sb_dev: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Offsets>() == 64);

impl Offsets {
    /// All zero: unknown.
    pub const UNSET: Offsets = Offsets {
        regs_syscall_nr: 0,
        regs_args: [0; 6],
        task_files: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        file_inode: 0,
        inode_sb: 0,
        inode_ino: 0,
        sb_dev: 0,
        _pad: 0,
    };
}

/// A `SYSCALL_ARGS` entry: which argument (0-5) of a syscall is a path and which a
/// file descriptor. Each is stored plus one, so that 0 (a syscall not described)
/// means neither.
pub const fn syscall_args(path_arg: Option<u8>, fd_arg: Option<u8>) -> u8 {
    let path = match path_arg {
        Some(i) => (i & 0x7) + 1,
        None => 0,
    };
    let fd = match fd_arg {
        Some(i) => (i & 0x7) + 1,
        None => 0,
    };
    path | (fd << 4)
}

/// The path and fd argument indexes of a [`syscall_args`] entry.
#[inline(always)]
pub const fn syscall_arg_indexes(entry: u8) -> (Option<u8>, Option<u8>) {
    (arg_index(entry & 0xf), arg_index(entry >> 4))
}

#[inline(always)]
const fn arg_index(stored: u8) -> Option<u8> {
    if stored == 0 {
        None
    } else {
        Some(stored - 1)
    }
}

/// Settings the kernel side reads, written once into `.rodata` at load time.
///
/// Offsets come from the running kernel's BTF, never from the build host.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Waits shorter than this are not streamed on the ring buffer (they are
    /// still aggregated).
    pub min_duration_ns: u64,
    /// Byte offset of `task_struct.pid` (the thread id).
    pub task_pid_offset: u32,
    /// Byte offset of `task_struct.__state` (`state` before 5.14); read only by
    /// the program for kernels whose `sched_switch` has no `prev_state` (< 5.18).
    pub task_state_offset: u32,
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Offsets for [`CONFIG_SYSCALL_TARGET`].
    pub offsets: Offsets,
    /// Offsets for [`CONFIG_LOCK_OWNERS`].
    pub locks: LockOffsets,
    /// Offsets for [`CONFIG_FUSE_REQUESTS`].
    pub fuse: FuseOffsets,
    /// Offsets for [`CONFIG_RPC`].
    pub rpc: RpcOffsets,
}
const _: () = assert!(core::mem::size_of::<Config>() == 216);

impl Config {
    /// A configuration that records nothing useful; the loader replaces it.
    pub const UNSET: Config = Config {
        min_duration_ns: u64::MAX,
        task_pid_offset: 0,
        task_state_offset: 0,
        flags: 0,
        _pad: 0,
        offsets: Offsets::UNSET,
        locks: LockOffsets::UNSET,
        fuse: FuseOffsets::UNSET,
        rpc: RpcOffsets::UNSET,
    };
}

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

/// Bytes of a path kept from a syscall argument.
pub const PATH_LEN: usize = 128;

/// What the syscall in progress names, read when the task enters D.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The syscall number, or -1 when unknown (not recorded, or not in a syscall).
    pub syscall: i32,
    /// Its file descriptor argument, or -1.
    pub fd: i32,
    /// Device number (`s_dev`, kernel encoding) of that file's filesystem, or 0.
    pub dev: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Inode number of that file, or 0.
    pub ino: u64,
    /// Its path argument as the task passed it (maybe relative), NUL-terminated;
    /// empty when none or unreadable.
    pub path: [u8; PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<Target>() == 24 + PATH_LEN);

impl Target {
    /// Nothing known.
    pub const NONE: Target = Target { syscall: -1, fd: -1, dev: 0, _pad: 0, ino: 0, path: [0; PATH_LEN] };
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
    /// What its syscall names.
    pub target: Target,
}
const _: () = assert!(core::mem::size_of::<InFlight>() == 144 + 24 + PATH_LEN);

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

/// The key of in-kernel aggregation: completed waits with the same process,
/// command, kernel stack and cause are counted together.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AggKey {
    /// Thread group id.
    pub tgid: u32,
    /// Kernel stack id (negative when lost).
    pub kstack_id: i32,
    /// `comm`.
    pub comm: [u8; COMM_LEN],
    /// [`Cause::kind`].
    pub cause_kind: u32,
    /// [`Cause::dev`].
    pub cause_dev: u32,
    /// [`Cause::key`].
    pub cause_key: u64,
}
const _: () = assert!(core::mem::size_of::<AggKey>() == 40);

impl AggKey {
    /// The key a wait is aggregated under.
    #[inline(always)]
    pub fn of(wait: &InFlight) -> AggKey {
        AggKey {
            tgid: wait.tgid,
            kstack_id: wait.kstack_id,
            comm: wait.comm,
            cause_kind: wait.cause.kind,
            cause_dev: wait.cause.dev,
            cause_key: wait.cause.key,
        }
    }
}

/// Log2 buckets of [`AggValue::hist`].
pub const HIST_BUCKETS: usize = 32;

/// Completed waits of one [`AggKey`]: counters only ever grow, so userspace takes
/// differences between two reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggValue {
    /// Number of waits.
    pub count: u64,
    /// Sum of their durations, in nanoseconds.
    pub total_ns: u64,
    /// The longest, in nanoseconds.
    pub max_ns: u64,
    /// Waits by duration: bucket `i` counts durations `d` (microseconds) with
    /// `2^i <= d < 2^(i+1)`; bucket 0 also takes `d < 1 us`, the last everything
    /// longer (see [`hist_bucket`]).
    pub hist: [u64; HIST_BUCKETS],
}
const _: () = assert!(core::mem::size_of::<AggValue>() == 24 + 8 * HIST_BUCKETS);

/// The histogram bucket of a duration in nanoseconds: floor(log2(microseconds)),
/// clamped to the buckets. Branch-free enough for the verifier: a fixed binary
/// search over the bits, no loop.
#[inline(always)]
pub fn hist_bucket(duration_ns: u64) -> usize {
    let mut us = duration_ns / 1000;
    if us == 0 {
        return 0;
    }
    let mut log = 0usize;
    if us >= 1 << 32 {
        us >>= 32;
        log += 32;
    }
    if us >= 1 << 16 {
        us >>= 16;
        log += 16;
    }
    if us >= 1 << 8 {
        us >>= 8;
        log += 8;
    }
    if us >= 1 << 4 {
        us >>= 4;
        log += 4;
    }
    if us >= 1 << 2 {
        us >>= 2;
        log += 2;
    }
    if us >= 1 << 1 {
        log += 1;
    }
    if log >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        log
    }
}

/// The lower bound, in nanoseconds, of histogram bucket `i`.
pub const fn hist_bucket_floor_ns(bucket: usize) -> u64 {
    if bucket == 0 {
        0
    } else {
        (1u64 << bucket) * 1000
    }
}

/// Per-CPU counters of the kernel side: what happened and what was lost.
///
/// Nothing is dropped silently: every failure on the kernel side increments one of
/// these, and userspace shows the drops.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Waits recorded in `INFLIGHT`.
    WaitsStarted = 0,
    /// Waits that ended while tracked.
    WaitsEnded = 1,
    /// Waits streamed on `EVENTS`.
    WaitsStreamed = 2,
    /// Drop: `INFLIGHT` was full, the wait was not tracked.
    DropInflightFull = 3,
    /// Drop: `EVENTS` was full, a completed wait was not streamed.
    DropRingFull = 4,
    /// Drop: the kernel stack could not be stored (`STACKS` full or a collision).
    DropStackLost = 5,
    /// Drop: a read of kernel memory failed.
    DropReadFailed = 6,
    /// Drop: `AGG` was full, a completed wait was not aggregated.
    DropAggFull = 7,
    /// Waits whose waker was recorded.
    WaitsWoken = 8,
    /// Drop: `CONTENDING` was full, a lock wait was not attributed.
    DropLockMapFull = 9,
    /// Drop: `FUSE_INFLIGHT` was full, a FUSE request was not tracked.
    DropFuseMapFull = 10,
    /// Drop: `RPC_INFLIGHT` was full, an RPC was not tracked.
    DropRpcMapFull = 11,
}

impl Counter {
    /// Number of counters, the size of `COUNTERS`.
    pub const COUNT: u32 = 12;
    /// All counters, in index order.
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::WaitsStarted,
        Counter::WaitsEnded,
        Counter::WaitsStreamed,
        Counter::DropInflightFull,
        Counter::DropRingFull,
        Counter::DropStackLost,
        Counter::DropReadFailed,
        Counter::DropAggFull,
        Counter::WaitsWoken,
        Counter::DropLockMapFull,
        Counter::DropFuseMapFull,
        Counter::DropRpcMapFull,
    ];

    /// Whether this counter counts lost data.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Counter::DropInflightFull
                | Counter::DropRingFull
                | Counter::DropStackLost
                | Counter::DropReadFailed
                | Counter::DropAggFull
                | Counter::DropLockMapFull
                | Counter::DropFuseMapFull
                | Counter::DropRpcMapFull
        )
    }

    /// A short name, for output.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::WaitsStarted => "waits_started",
            Counter::WaitsEnded => "waits_ended",
            Counter::WaitsStreamed => "waits_streamed",
            Counter::DropInflightFull => "inflight_map_full",
            Counter::DropRingFull => "ring_buffer_full",
            Counter::DropStackLost => "stack_lost",
            Counter::DropReadFailed => "kernel_read_failed",
            Counter::DropAggFull => "aggregation_map_full",
            Counter::WaitsWoken => "waits_woken",
            Counter::DropLockMapFull => "lock_map_full",
            Counter::DropFuseMapFull => "fuse_map_full",
            Counter::DropRpcMapFull => "rpc_map_full",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_log2_of_microseconds() {
        assert_eq!(hist_bucket(0), 0);
        assert_eq!(hist_bucket(999), 0);
        assert_eq!(hist_bucket(1_000), 0);
        assert_eq!(hist_bucket(2_000), 1);
        assert_eq!(hist_bucket(3_999), 1);
        assert_eq!(hist_bucket(1_000_000), 9); // 1 ms = 1000 us, 2^9 = 512
        assert_eq!(hist_bucket(2_000_000_000), 20); // 2 s
        assert_eq!(hist_bucket(u64::MAX), HIST_BUCKETS - 1);
        for bucket in 1..HIST_BUCKETS {
            let floor = hist_bucket_floor_ns(bucket);
            assert_eq!(hist_bucket(floor), bucket);
            assert_eq!(hist_bucket(floor - 1000), bucket - 1);
        }
    }

    #[test]
    fn syscall_arg_entries_round_trip() {
        for path in [None, Some(0), Some(1), Some(5)] {
            for fd in [None, Some(0), Some(4)] {
                assert_eq!(syscall_arg_indexes(syscall_args(path, fd)), (path, fd));
            }
        }
        assert_eq!(syscall_arg_indexes(0), (None, None));
    }

    #[test]
    fn every_counter_is_listed_once_in_index_order() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
        assert_eq!(Counter::ALL.len(), Counter::COUNT as usize);
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no pointers; every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InFlight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WaitEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AggKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AggValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FuseKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FuseRequest {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RpcKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RpcCall {}
}
