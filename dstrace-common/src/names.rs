//! Names of the programs, maps and globals in the eBPF object.

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
/// `iter/task`: every task in D now (`TASK_UNINTERRUPTIBLE`, not `TASK_NOLOAD` unless
/// `CONFIG_INCLUDE_IDLE`), dstrace's own excepted: one [`crate::TaskRecord`] each.
pub const PROG_ITER_IN_D: &str = "iter_in_d";
/// `iter/task`: the tasks whose tids are in `ITER_WANTED_TIDS`, whatever their state.
pub const PROG_ITER_WANTED: &str = "iter_wanted";
/// `iter/task`: the tasks whose path walk is in a directory (dentry) of
/// `ITER_WANTED_DIRS`, whatever their state: who looks a name up there.
pub const PROG_ITER_WALKING: &str = "iter_walking";
/// [`PROG_ITER_IN_D`] for kernels without `bpf_task_pt_regs` (before 5.15): no
/// syscall, no file descriptor's file.
pub const PROG_ITER_IN_D_PRE515: &str = "iter_in_d_pre515";
/// [`PROG_ITER_WANTED`], the same.
pub const PROG_ITER_WANTED_PRE515: &str = "iter_wanted_pre515";
/// [`PROG_ITER_WALKING`], the same.
pub const PROG_ITER_WALKING_PRE515: &str = "iter_walking_pre515";
/// `iter/task_file`: every open `/dev/fuse` file, its connection and its pending
/// requests: one [`crate::FuseFileRecord`] each.
pub const PROG_ITER_FUSE_FILES: &str = "iter_fuse_files";
/// Tids the [`PROG_ITER_WANTED`] pass reads: tid -> 1.
pub const MAP_ITER_WANTED_TIDS: &str = "ITER_WANTED_TIDS";
/// Directories (dentry addresses) the [`PROG_ITER_WALKING`] pass looks for: -> 1.
pub const MAP_ITER_WANTED_DIRS: &str = "ITER_WANTED_DIRS";
/// Per-CPU scratch space where a [`crate::TaskRecord`] is built.
pub const MAP_ITER_TASK: &str = "ITER_TASK";
/// Per-CPU scratch space where a [`crate::FuseFileRecord`] is built.
pub const MAP_ITER_FUSE: &str = "ITER_FUSE";
/// The [`crate::Config`] global, set at load time.
pub const GLOBAL_CONFIG: &str = "CONFIG";
/// Number of entries in `INFLIGHT` (an upper bound), a `.bss` global that lets
/// the hooks skip the map lookup while no task is in D.
pub const GLOBAL_INFLIGHT_COUNT: &str = "INFLIGHT_COUNT";

/// Every map the object must define.
pub const MAPS: [&str; 21] = [
    MAP_ITER_WANTED_TIDS,
    MAP_ITER_WANTED_DIRS,
    MAP_ITER_TASK,
    MAP_ITER_FUSE,
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
pub const PROGRAMS: [&str; 24] = [
    PROG_ITER_IN_D,
    PROG_ITER_WANTED,
    PROG_ITER_WALKING,
    PROG_ITER_IN_D_PRE515,
    PROG_ITER_WANTED_PRE515,
    PROG_ITER_WALKING_PRE515,
    PROG_ITER_FUSE_FILES,
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
