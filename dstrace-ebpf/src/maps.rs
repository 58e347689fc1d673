//! Every map and global of the object (their names are `dstrace_common::names`), and
//! the writes all hooks share: a counter (`COUNTERS`) and a stack (`STACKS`).

use core::{
    intrinsics::{atomic_xadd, AtomicOrdering},
    sync::atomic::AtomicU64,
};

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{tracing::StackIdContext as _, BtfTracePointContext},
};
use dstrace_common::{
    limits, AggKey, AggValue, Cause, Config, Counter, DentryKey, FuseFileRecord, FuseKey, FuseRequest,
    InFlight, RpcCall, RpcKey, TaskId, TaskRecord, COMM_LEN, FUSE_PQ_HASH_SIZE, FUSE_REQUESTS_KEPT,
};

/// Settings, written by the loader into `.rodata` (frozen before the programs load).
#[no_mangle]
pub(crate) static CONFIG: Config = Config::UNSET;

/// Upper bound of the number of entries in `INFLIGHT` (see `dstrace_common::names`).
#[no_mangle]
pub(crate) static INFLIGHT_COUNT: AtomicU64 = AtomicU64::new(0);

/// Tasks in D now, by tid: what the wait is (`sched_switch` switch-out) until it ends
/// (switch-in).
#[map(name = "INFLIGHT")]
pub(crate) static INFLIGHT: HashMap<u32, InFlight> = HashMap::with_max_entries(limits::INFLIGHT_ENTRIES, 0);

/// Kernel and user stacks, by the id the records carry.
#[map(name = "STACKS")]
pub(crate) static STACKS: StackTrace = StackTrace::with_max_entries(limits::STACK_ENTRIES, 0);

/// Completed waits of at least `CONFIG.min_duration_ns`, streamed to userspace.
#[map(name = "EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(limits::EVENTS_BYTES, 0);

/// Per-CPU counters, indexed by `Counter`: what happened and what was lost.
#[map(name = "COUNTERS")]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Completed waits, every one, aggregated by process, command, stack and cause.
#[map(name = "AGG")]
pub(crate) static AGG: HashMap<AggKey, AggValue> = HashMap::with_max_entries(limits::AGG_ENTRIES, 0);

/// FUSE requests not answered yet (`fuse_request_send`/`_end`).
#[map(name = "FUSE_INFLIGHT")]
pub(crate) static FUSE_INFLIGHT: HashMap<FuseKey, FuseRequest> =
    HashMap::with_max_entries(limits::FUSE_ENTRIES, 0);

/// sunrpc tasks in flight, by client and task id (see `rpc_task_begin`).
#[map(name = "RPC_INFLIGHT")]
pub(crate) static RPC_INFLIGHT: HashMap<RpcKey, RpcCall> = HashMap::with_max_entries(limits::RPC_ENTRIES, 0);

/// Tasks inside `d_alloc_parallel` now, and the name they look up.
#[map(name = "DLOOKUP_WAITING")]
pub(crate) static DLOOKUP_WAITING: HashMap<u32, DentryKey> =
    HashMap::with_max_entries(limits::DLOOKUP_ENTRIES, 0);

/// Names being looked up now, and by whom. LRU: an end of lookup missed (another
/// kernel's function name) ages out instead of filling the map.
#[map(name = "DLOOKUP_OWNERS")]
pub(crate) static DLOOKUP_OWNERS: LruHashMap<DentryKey, TaskId> =
    LruHashMap::with_max_entries(limits::DLOOKUP_ENTRIES, 0);

/// Tasks waiting for a kernel lock now, and which (`contention_begin`/`_end`).
#[map(name = "CONTENDING")]
pub(crate) static CONTENDING: HashMap<u32, Cause> = HashMap::with_max_entries(limits::CONTENDING_ENTRIES, 0);

/// Syscall number -> `dstrace_common::syscall_args` (path and fd argument indexes).
#[map(name = "SYSCALL_ARGS")]
pub(crate) static SYSCALL_ARGS: Array<u8> = Array::with_max_entries(limits::SYSCALLS, 0);

/// Where a wait record is built before it is inserted (too large for the stack).
#[map(name = "SCRATCH")]
pub(crate) static SCRATCH: PerCpuArray<InFlight> = PerCpuArray::with_max_entries(1, 0);

/// A zeroed value to create `AGG` entries from (too large for the BPF stack).
#[map(name = "AGG_ZERO")]
pub(crate) static AGG_ZERO: Array<AggValue> = Array::with_max_entries(1, 0);

/// The filters (`--pid`, `--tid`, `--cgroup`, `--comm`): a key present is wanted.
#[map(name = "FILTER_TGIDS")]
pub(crate) static FILTER_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(limits::FILTER_ENTRIES, 0);

/// See `FILTER_TGIDS`.
#[map(name = "FILTER_TIDS")]
pub(crate) static FILTER_TIDS: HashMap<u32, u8> = HashMap::with_max_entries(limits::FILTER_ENTRIES, 0);

/// See `FILTER_TGIDS`.
#[map(name = "FILTER_CGROUPS")]
pub(crate) static FILTER_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(limits::FILTER_ENTRIES, 0);

/// See `FILTER_TGIDS`.
#[map(name = "FILTER_COMMS")]
pub(crate) static FILTER_COMMS: HashMap<[u8; COMM_LEN], u8> =
    HashMap::with_max_entries(limits::FILTER_ENTRIES, 0);

/// The tids the task iterator's "wanted" pass reads, whatever their state.
#[map(name = "ITER_WANTED_TIDS")]
pub(crate) static ITER_WANTED_TIDS: HashMap<u32, u8> =
    HashMap::with_max_entries(limits::ITER_WANTED_ENTRIES, 0);

/// The directories (dentry addresses) whose walkers the task iterator's
/// "walking" pass reads.
#[map(name = "ITER_WANTED_DIRS")]
pub(crate) static ITER_WANTED_DIRS: HashMap<u64, u8> =
    HashMap::with_max_entries(limits::ITER_WANTED_ENTRIES, 0);

/// Where the task iterator builds a record (too large for the stack).
#[map(name = "ITER_TASK")]
pub(crate) static ITER_TASK: PerCpuArray<TaskRecord> = PerCpuArray::with_max_entries(1, 0);

/// Where the `/dev/fuse` file iterator builds a record.
#[map(name = "ITER_FUSE")]
pub(crate) static ITER_FUSE: PerCpuArray<FuseFileRecord> = PerCpuArray::with_max_entries(1, 0);

/// A `/dev/fuse` file's processing queue as the iterator reads it: its
/// `FUSE_PQ_HASH_SIZE` list heads copied in one read (4 KiB), and the first
/// request of each bucket that is not empty, up to the slots a record has.
#[repr(C)]
pub(crate) struct FuseQueueScratch {
    /// `next`, `prev` of each list head.
    pub(crate) heads: [u64; 2 * FUSE_PQ_HASH_SIZE as usize],
    /// The `list` member of each bucket's first request, by record slot.
    pub(crate) firsts: [u64; FUSE_REQUESTS_KEPT],
}

/// Where the `/dev/fuse` file iterator reads a processing queue.
#[map(name = "ITER_FUSE_QUEUE")]
pub(crate) static ITER_FUSE_QUEUE: PerCpuArray<FuseQueueScratch> = PerCpuArray::with_max_entries(1, 0);

/// Adds one to a per-CPU counter.
///
/// A program's entry point counts the failure its `try_` function returns; a step
/// that the program goes on after, failed or not, is counted with [`counted`].
#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a valid, aligned per-CPU array slot. The add is atomic (the plain
        // `lock +=` every BPF kernel accepts): an iterator program runs preemptibly
        // (migration disabled only), so a `sched_switch` on its CPU can count in the
        // middle of its own increment.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, 1) };
    }
}

/// The value of a step the program goes on after whether it worked or not (a part of
/// a record, an independent second half): `None`, the failure counted, if it failed.
#[inline(always)]
pub(crate) fn counted<T>(result: Result<T, Counter>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(counter) => {
            count(counter);
            None
        }
    }
}

/// The id of the current stack in `STACKS` (kernel, or user with
/// `BPF_F_USER_STACK`), or a negative errno, counted as a drop.
#[inline(always)]
pub(crate) fn stack_id(ctx: &BtfTracePointContext, flags: u64) -> i32 {
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(err) => {
            count(Counter::DropStackLost);
            err
        }
    }
}
