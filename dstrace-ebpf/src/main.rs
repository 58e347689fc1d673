//! dstrace's eBPF programs: record every task that enters uninterruptible sleep.
//!
//! `sched_switch` runs on every context switch of the machine, so it is built for the
//! common case: a task that is not entering D costs one state test, and while no task
//! is tracked in D the switch-in side costs one load of `INFLIGHT_COUNT`.
//!
//! * switch-out of a task entering `TASK_UNINTERRUPTIBLE` (not preempted; `TASK_IDLE`
//!   only when asked; only wanted tasks when filters are set): its kernel stack goes
//!   to `STACKS`, its identity and start time to `INFLIGHT` under its tid;
//! * `sched_waking` of a tracked task: the waker (tid, comm, kernel stack) is noted in
//!   its `INFLIGHT` entry;
//! * switch-in of a tracked task: the wait is over. It is aggregated in `AGG` (count,
//!   total, max, log2 histogram by process, command, stack and cause), removed from
//!   `INFLIGHT` and, when it lasted at least `CONFIG.min_duration_ns`, streamed on
//!   `EVENTS`.
//!
//! Every failure increments a per-CPU counter in `COUNTERS` (see
//! `dstrace_common::Counter`); nothing is lost silently. No kernel struct offset is
//! compiled in: `task_struct` offsets arrive in `CONFIG`, read by userspace from the
//! running kernel's BTF.
//!
//! Hooks: `tp_btf/sched_switch` (`trace_sched_switch()` in `__schedule`,
//! kernel/sched/core.c) and `tp_btf/sched_waking` (`trace_sched_waking()` in
//! `try_to_wake_up`, same file). BTF-enabled tracepoints exist since Linux 5.5 and the
//! ring buffer since 5.8, the oldest kernel this object loads on. `sched_switch`
//! takes `prev_state` as its fourth argument since 5.18 (commit fa2c3254d7cf); the
//! `sched_switch_pre518` variant reads it from `task_struct` instead and userspace
//! loads whichever fits the running kernel.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so `AtomicU64::fetch_add` does not exist
// there; the intrinsic lowers to the BPF atomic add instruction (`lock +=`). The
// crate is built with `-Z build-std` and so with nightly features anyway.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::{
    intrinsics::{atomic_xadd, atomic_xsub, AtomicOrdering},
    sync::atomic::AtomicU64,
};

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task_btf,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        generated::bpf_probe_read_user_str, generated::bpf_task_pt_regs,
    },
    macros::{btf_tracepoint, fentry, fexit, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{
        tracing::StackIdContext as _, BtfTracePointContext, FEntryContext, FExitContext, TracePointContext,
    },
    EbpfContext as _,
};
use dstrace_common::{
    hist_bucket, limits, rpc_event, syscall_arg_indexes, AggKey, AggValue, Cause, Config, Counter, DentryKey,
    FuseKey, FuseRequest, InFlight, RpcCall, RpcKey, Target, TaskId, WaitEvent, Waker, CAUSE_DENTRY,
    CAUSE_HOLDER_KNOWN, CAUSE_HOLDER_READER_HINT, CAUSE_INODE_RWSEM, CAUSE_LOCK, COMM_LEN,
    CONFIG_FILTER_CGROUP, CONFIG_FILTER_COMM, CONFIG_FILTER_TGID, CONFIG_FILTER_TID, CONFIG_FUSE_REQUESTS,
    CONFIG_INCLUDE_IDLE, CONFIG_LOCK_OWNERS, CONFIG_RPC, CONFIG_SYSCALL_TARGET, CONFIG_USER_STACKS,
    LCB_F_MUTEX, LCB_F_PERCPU, LCB_F_READ, LCB_F_RT, LCB_F_SPIN, LCB_F_WRITE, NO_STACK, PATH_LEN,
    TASK_NOLOAD, TASK_UNINTERRUPTIBLE,
};

/// Settings, written by the loader into `.rodata` (frozen before the programs load).
#[no_mangle]
static CONFIG: Config = Config::UNSET;

/// Upper bound of the number of entries in `INFLIGHT` (see `dstrace_common::names`).
#[no_mangle]
static INFLIGHT_COUNT: AtomicU64 = AtomicU64::new(0);

#[map(name = "INFLIGHT")]
static INFLIGHT: HashMap<u32, InFlight> = HashMap::with_max_entries(limits::INFLIGHT_ENTRIES, 0);

#[map(name = "STACKS")]
static STACKS: StackTrace = StackTrace::with_max_entries(limits::STACK_ENTRIES, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(limits::EVENTS_BYTES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map(name = "AGG")]
static AGG: HashMap<AggKey, AggValue> = HashMap::with_max_entries(limits::AGG_ENTRIES, 0);

/// FUSE requests not answered yet (`fuse_request_send`/`_end`).
#[map(name = "FUSE_INFLIGHT")]
static FUSE_INFLIGHT: HashMap<FuseKey, FuseRequest> = HashMap::with_max_entries(limits::FUSE_ENTRIES, 0);

/// sunrpc tasks in flight, by client and task id (see `rpc_task_begin`).
#[map(name = "RPC_INFLIGHT")]
static RPC_INFLIGHT: HashMap<RpcKey, RpcCall> = HashMap::with_max_entries(limits::RPC_ENTRIES, 0);

/// Tasks inside `d_alloc_parallel` now, and the name they look up.
#[map(name = "DLOOKUP_WAITING")]
static DLOOKUP_WAITING: HashMap<u32, DentryKey> = HashMap::with_max_entries(limits::DLOOKUP_ENTRIES, 0);

/// Names being looked up now, and by whom. LRU: an end of lookup missed (another
/// kernel's function name) ages out instead of filling the map.
#[map(name = "DLOOKUP_OWNERS")]
static DLOOKUP_OWNERS: LruHashMap<DentryKey, TaskId> =
    LruHashMap::with_max_entries(limits::DLOOKUP_ENTRIES, 0);

/// Tasks waiting for a kernel lock now, and which (`contention_begin`/`_end`).
#[map(name = "CONTENDING")]
static CONTENDING: HashMap<u32, Cause> = HashMap::with_max_entries(limits::CONTENDING_ENTRIES, 0);

/// Syscall number -> `dstrace_common::syscall_args` (path and fd argument indexes).
#[map(name = "SYSCALL_ARGS")]
static SYSCALL_ARGS: Array<u8> = Array::with_max_entries(limits::SYSCALLS, 0);

/// Where a wait record is built before it is inserted (too large for the stack).
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<InFlight> = PerCpuArray::with_max_entries(1, 0);

/// A zeroed value to create `AGG` entries from (too large for the BPF stack).
#[map(name = "AGG_ZERO")]
static AGG_ZERO: Array<AggValue> = Array::with_max_entries(1, 0);

#[map(name = "FILTER_TGIDS")]
static FILTER_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(limits::FILTER_ENTRIES, 0);

#[map(name = "FILTER_TIDS")]
static FILTER_TIDS: HashMap<u32, u8> = HashMap::with_max_entries(limits::FILTER_ENTRIES, 0);

#[map(name = "FILTER_CGROUPS")]
static FILTER_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(limits::FILTER_ENTRIES, 0);

#[map(name = "FILTER_COMMS")]
static FILTER_COMMS: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(limits::FILTER_ENTRIES, 0);

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`, Linux 5.18 and later.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    let preempt: u64 = ctx.arg(0);
    if preempt & 1 == 0 {
        let prev_state: u64 = ctx.arg(3);
        on_switch_out::<true>(&ctx, prev_state as u32);
    }
    on_switch_in(&ctx);
    0
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next)`,
/// Linux 5.5 to 5.17: the state is read from `prev` (the current task).
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_pre518(ctx: BtfTracePointContext) -> u32 {
    let preempt: u64 = ctx.arg(0);
    if preempt & 1 == 0 {
        let prev: *const u8 = ctx.arg(1);
        // `state` was a `long` before 5.14 and is an `unsigned int` since; the low
        // 32 bits hold every `TASK_*` bit on a little-endian machine either way.
        match read_u32(prev, config_u32(&CONFIG.task_state_offset)) {
            Some(state) => on_switch_out::<false>(&ctx, state),
            None => count(Counter::DropReadFailed),
        }
    }
    on_switch_in(&ctx);
    0
}

/// Does nothing: attached beside `sched_switch` by the benchmarks, it measures the
/// cost of being called at all (the floor).
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_empty(_ctx: BtfTracePointContext) -> u32 {
    0
}

/// Does nothing: the floor of `sched_waking` in the benchmarks.
#[btf_tracepoint(function = "sched_waking")]
pub fn sched_waking_empty(_ctx: BtfTracePointContext) -> u32 {
    0
}

/// `sched_waking(struct task_struct *p)`: the current task (or interrupt) wakes
/// `p`; if `p` is tracked in D, note who woke it.
#[btf_tracepoint(function = "sched_waking")]
pub fn sched_waking(ctx: BtfTracePointContext) -> u32 {
    if inflight_is_empty() {
        return 0;
    }
    let task: *const u8 = ctx.arg(0);
    let Some(tid) = read_u32(task, config_u32(&CONFIG.task_pid_offset)) else {
        count(Counter::DropReadFailed);
        return 0;
    };
    let Some(wait) = INFLIGHT.get_ptr_mut(tid) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let at_ns = now_ns();
    // A kernel stack walk is most of what a wait costs here. The waker's is shown
    // only with a streamed wait, one of at least `min_duration`: a wait woken
    // sooner (nearly always) ends sooner too, save for a task that then waits for
    // a CPU past it, which keeps its waker but not the waker's stack.
    // SAFETY: a pointer from a successful lookup; the task is asleep, so nothing
    // else writes its entry now.
    let waited_ns = at_ns.wrapping_sub(unsafe { (*wait).start_ns });
    let kstack_id =
        if waited_ns >= config_u64(&CONFIG.min_duration_ns) { stack_id(&ctx, 0) } else { NO_STACK };
    let waker = Waker {
        at_ns,
        tid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        kstack_id,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    // SAFETY: a pointer from a successful lookup; the task is asleep, so nothing
    // else writes its entry now.
    unsafe { (*wait).waker = waker };
    count(Counter::WaitsWoken);
    0
}

/// `fuse_request_send(const struct fuse_req *req)` (fs/fuse/fuse_trace.h, 6.13+):
/// a request goes to the FUSE daemon; it is in flight until `fuse_request_end`.
/// How long the oldest has waited says how long the daemon has been silent.
#[btf_tracepoint(function = "fuse_request_send")]
pub fn fuse_request_send(ctx: BtfTracePointContext) -> u32 {
    if config_u32(&CONFIG.flags) & CONFIG_FUSE_REQUESTS == 0 {
        return 0;
    }
    let req: *const u8 = ctx.arg(0);
    let Some(key) = fuse_key(req) else { return 0 };
    let fuse = &CONFIG.fuse;
    let request = FuseRequest {
        sent_ns: now_ns(),
        nodeid: read_u64(req, config_u32(&fuse.req_nodeid)).unwrap_or(0),
        opcode: read_u32(req, config_u32(&fuse.req_opcode)).unwrap_or(0),
        _pad: 0,
        task: current_task(),
    };
    if FUSE_INFLIGHT.insert(key, request, 0).is_err() {
        count(Counter::DropFuseMapFull);
    }
    0
}

/// `fuse_request_end(const struct fuse_req *req)`: the request is over.
#[btf_tracepoint(function = "fuse_request_end")]
pub fn fuse_request_end(ctx: BtfTracePointContext) -> u32 {
    if config_u32(&CONFIG.flags) & CONFIG_FUSE_REQUESTS == 0 {
        return 0;
    }
    let req: *const u8 = ctx.arg(0);
    if let Some(key) = fuse_key(req) {
        let _ = FUSE_INFLIGHT.remove(key);
    }
    0
}

/// `sunrpc:rpc_task_begin` (`rpc_set_active`, net/sunrpc/sched.c; the record has
/// had `task_id` and `client_id` since 4.18): an RPC task starts. It fires in the
/// task that starts the RPC, synchronous or not, so the call is noted under it; the
/// other sunrpc events may run in `rpciod`.
#[tracepoint(category = "sunrpc", name = "rpc_task_begin")]
pub fn rpc_task_begin(ctx: TracePointContext) -> u32 {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return 0;
    }
    let Some(key) = rpc_key(&ctx, rpc_event::BEGIN) else { return 0 };
    let call = RpcCall::new(current_task(), now_ns());
    // BPF_NOEXIST: an entry made by a later event of a task begun before tracing
    // started is kept as it is.
    if RPC_INFLIGHT.insert(key, call, u64::from(BPF_NOEXIST)).is_err()
        && RPC_INFLIGHT.get_ptr_mut(key).is_none()
    {
        count(Counter::DropRpcMapFull);
    }
    0
}

/// `sunrpc:rpc_request` (`call_start`, net/sunrpc/clnt.c; 5.2+): the call's RPC
/// program, version and procedure.
#[tracepoint(category = "sunrpc", name = "rpc_request")]
pub fn rpc_request(ctx: TracePointContext) -> u32 {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return 0;
    }
    let Some(call) = rpc_call(&ctx, rpc_event::REQUEST) else { return 0 };
    let offsets = &CONFIG.rpc;
    // SAFETY: `call` points to a value of `RPC_INFLIGHT`, valid for this program's
    // run; the record is read through the probe helpers only.
    unsafe {
        if let Some(version) = read_field::<u32>(&ctx, config_u32(&offsets.request_version)) {
            (*call).version = version;
        }
        read_data_loc(&ctx, config_u32(&offsets.request_progname), &mut (*call).progname);
        read_data_loc(&ctx, config_u32(&offsets.request_procname), &mut (*call).procname);
    }
    0
}

/// `sunrpc:xprt_transmit` (`xprt_transmit`, net/sunrpc/xprt.c; 5.2+): the request goes
/// on the wire, once more each time it is retransmitted.
#[tracepoint(category = "sunrpc", name = "xprt_transmit")]
pub fn xprt_transmit(ctx: TracePointContext) -> u32 {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return 0;
    }
    let Some(call) = rpc_call(&ctx, rpc_event::TRANSMIT) else { return 0 };
    let xid = read_field::<u32>(&ctx, config_u32(&CONFIG.rpc.transmit_xid));
    // SAFETY: as in `rpc_request`.
    unsafe {
        (*call).transmits += 1;
        if let Some(xid) = xid {
            (*call).xid = xid;
        }
    }
    0
}

/// `sunrpc:rpc_timeout_status` (`rpc_check_timeout`, net/sunrpc/clnt.c; 5.2+): a major
/// timeout, after which the kernel logs "server ... not responding, still trying"
/// (hard mounts) or fails the call (soft ones).
#[tracepoint(category = "sunrpc", name = "rpc_timeout_status")]
pub fn rpc_timeout_status(ctx: TracePointContext) -> u32 {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return 0;
    }
    let Some(call) = rpc_call(&ctx, rpc_event::TIMEOUT) else { return 0 };
    // SAFETY: as in `rpc_request`.
    unsafe {
        if (*call).first_timeout_ns == 0 {
            (*call).first_timeout_ns = now_ns();
        }
        (*call).timeouts += 1;
    }
    0
}

/// `sunrpc:rpc_task_end` (`rpc_release_task`... `rpc_final_put_task`, net/sunrpc/sched.c):
/// the RPC task is over.
#[tracepoint(category = "sunrpc", name = "rpc_task_end")]
pub fn rpc_task_end(ctx: TracePointContext) -> u32 {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return 0;
    }
    if let Some(key) = rpc_key(&ctx, rpc_event::END) {
        let _ = RPC_INFLIGHT.remove(key);
    }
    0
}

/// The RPC task a sunrpc record is about.
#[inline(always)]
fn rpc_key(ctx: &TracePointContext, event: usize) -> Option<RpcKey> {
    let offsets = &CONFIG.rpc;
    let task_id = read_field::<u32>(ctx, config_u32(offsets.task_id.get(event)?))?;
    let client_id = read_field::<u32>(ctx, config_u32(offsets.client_id.get(event)?))?;
    Some(RpcKey { client_id, task_id })
}

/// The entry of the RPC task a sunrpc record is about, made if the task began
/// before tracing did (its begin time and starter unknown: the current task is
/// noted, which for a synchronous RPC is the caller).
#[inline(always)]
fn rpc_call(ctx: &TracePointContext, event: usize) -> Option<*mut RpcCall> {
    let key = rpc_key(ctx, event)?;
    if let Some(call) = RPC_INFLIGHT.get_ptr_mut(key) {
        return Some(call);
    }
    if RPC_INFLIGHT.insert(key, RpcCall::new(current_task(), 0), u64::from(BPF_NOEXIST)).is_err() {
        count(Counter::DropRpcMapFull);
    }
    RPC_INFLIGHT.get_ptr_mut(key)
}

/// The task running now.
#[inline(always)]
fn current_task() -> TaskId {
    let pid_tgid = bpf_get_current_pid_tgid();
    TaskId {
        tid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    }
}

/// Reads a field of a classic tracepoint's record; `u32::MAX` marks a field the
/// event does not have.
#[inline(always)]
fn read_field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == u32::MAX {
        return None;
    }
    // SAFETY: a read of the record through the probe helper, which checks it.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// Copies a `__data_loc char[]` field of a classic tracepoint's record (a `u32`:
/// the string's offset in the record in the low half, its length in the high half)
/// into `out`, NUL-terminated; leaves `out` as it is when the field is missing.
#[inline(always)]
fn read_data_loc(ctx: &TracePointContext, offset: u32, out: &mut [u8]) {
    let Some(loc) = read_field::<u32>(ctx, offset) else { return };
    let start = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    // SAFETY: a read of the record through the probe helper, which checks it and
    // stops at `out`'s length.
    let _ = unsafe { bpf_probe_read_kernel_str_bytes(start, out) };
}

/// The connection and unique id of a request: `req->fm->fc->dev`, `req->in.h.unique`.
#[inline(always)]
fn fuse_key(req: *const u8) -> Option<FuseKey> {
    let fuse = &CONFIG.fuse;
    let unique = read_u64(req, config_u32(&fuse.req_unique))?;
    let fm = read_ptr(req, config_u32(&fuse.req_fm))?;
    let fc = read_ptr(fm, config_u32(&fuse.fm_fc))?;
    let dev = read_u32(fc, config_u32(&fuse.fc_dev))?;
    Some(FuseKey { dev, _pad: 0, unique })
}

/// `d_alloc_parallel(struct dentry *parent, const struct qstr *name,
/// wait_queue_head_t *wq)` (fs/dcache.c): the current task looks `name` up in
/// `parent`. If another task is already looking the same name up, this one waits
/// for it in D; the name is noted so that the wait can name that task.
#[fentry(function = "d_alloc_parallel")]
pub fn d_alloc_parallel_entry(ctx: FEntryContext) -> u32 {
    let parent: *const u8 = ctx.arg(0);
    let name: *const u8 = ctx.arg(1);
    if let Some(hash_len) = read_u64(name, config_u32(&CONFIG.locks.qstr_hash_len)) {
        let key = DentryKey { parent: parent as u64, hash_len };
        let _ = DLOOKUP_WAITING.insert(bpf_get_current_pid_tgid() as u32, key, 0);
    }
    0
}

/// `d_alloc_parallel` returns: if the dentry is in lookup (`DCACHE_PAR_LOOKUP`),
/// the current task is the one to look it up: it owns the name until the lookup
/// ends.
#[fexit(function = "d_alloc_parallel")]
pub fn d_alloc_parallel_exit(ctx: FExitContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let Some(key) = DLOOKUP_WAITING.get_ptr(tid) else { return 0 };
    // SAFETY: a pointer from a successful lookup of this task's own entry.
    let key = unsafe { *key };
    let _ = DLOOKUP_WAITING.remove(tid);
    let dentry: *const u8 = ctx.arg(3);
    // An ERR_PTR is in the last page of the address space.
    if dentry.is_null() || dentry as u64 >= u64::MAX - 4095 {
        return 0;
    }
    let locks = &CONFIG.locks;
    let Some(flags) = read_u32(dentry, config_u32(&locks.dentry_flags)) else { return 0 };
    if flags & config_u32(&locks.dcache_par_lookup) != 0 {
        let _ = DLOOKUP_OWNERS.insert(key, current_task(), 0);
    }
    0
}

/// `__d_lookup_unhash_wake(struct dentry *dentry)` (6.x; the end of an in-lookup
/// dentry's lookup, which wakes its waiters): the name has no owner any more.
#[fentry(function = "__d_lookup_unhash_wake")]
pub fn d_lookup_done(ctx: FEntryContext) -> u32 {
    let dentry: *const u8 = ctx.arg(0);
    let locks = &CONFIG.locks;
    let Some(parent) = read_u64(dentry, config_u32(&locks.dentry_parent)) else { return 0 };
    let name = dentry.wrapping_add(config_u32(&locks.dentry_name) as usize);
    let Some(hash_len) = read_u64(name, config_u32(&locks.qstr_hash_len)) else { return 0 };
    let _ = DLOOKUP_OWNERS.remove(DentryKey { parent, hash_len });
    0
}

/// `contention_begin(void *lock, unsigned int flags)` (include/trace/events/lock.h,
/// Linux 5.19+): the current task is about to wait for a kernel lock. Spinning
/// waits are left out (they never sleep); for the others the lock, its kind, its
/// owner and, for an inode's `i_rwsem`, the inode are noted until the wait ends.
#[btf_tracepoint(function = "contention_begin")]
pub fn contention_begin(ctx: BtfTracePointContext) -> u32 {
    let flags: u64 = ctx.arg(1);
    let flags = flags as u32;
    if flags & LCB_F_SPIN != 0 {
        return 0;
    }
    let lock: *const u8 = ctx.arg(0);
    let mut cause = Cause::NONE;
    cause.kind = CAUSE_LOCK;
    cause.flags = flags;
    cause.key = lock as u64;
    if config_u32(&CONFIG.flags) & CONFIG_LOCK_OWNERS != 0 {
        lock_details(lock, &mut cause);
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    if CONTENDING.insert(tid, cause, 0).is_err() {
        count(Counter::DropLockMapFull);
    }
    0
}

/// `contention_end(void *lock, int ret)`: the wait for the lock is over.
#[btf_tracepoint(function = "contention_end")]
pub fn contention_end(_ctx: BtfTracePointContext) -> u32 {
    let _ = CONTENDING.remove(bpf_get_current_pid_tgid() as u32);
    0
}

/// The owner of a mutex or rwsem (its `owner` word: a `task_struct` pointer with
/// flags in the low bits; for a reader-owned rwsem only the last reader, a hint),
/// and the inode whose `i_rwsem` it is, if it is one: `sb->s_root->d_sb == sb`
/// for the superblock of the would-be inode holds only for a real inode.
#[inline(always)]
fn lock_details(lock: *const u8, cause: &mut Cause) {
    let locks = &CONFIG.locks;
    let flags = cause.flags;
    let rwsem =
        flags & (LCB_F_READ | LCB_F_WRITE) != 0 && flags & (LCB_F_RT | LCB_F_PERCPU | LCB_F_MUTEX) == 0;
    let owner_offset = if flags & LCB_F_MUTEX != 0 {
        Some(config_u32(&locks.mutex_owner))
    } else if rwsem {
        Some(config_u32(&locks.rwsem_owner))
    } else {
        None
    };
    if let Some(owner) = owner_offset.and_then(|offset| read_u64(lock, offset)) {
        let task = (owner & !7) as *const u8;
        if !task.is_null() {
            if let (Some(tid), Some(tgid)) = (
                read_u32(task, config_u32(&CONFIG.task_pid_offset)),
                read_u32(task, config_u32(&locks.task_tgid)),
            ) {
                cause.holder_tid = tid;
                cause.holder_tgid = tgid;
                // SAFETY: a read of kernel memory through the probe helper.
                if let Ok(comm) = unsafe {
                    bpf_probe_read_kernel(
                        task.wrapping_add(config_u32(&locks.task_comm) as usize).cast::<[u8; COMM_LEN]>(),
                    )
                } {
                    cause.holder_comm = comm;
                }
                cause.flags |= CAUSE_HOLDER_KNOWN;
                if rwsem && owner & 1 != 0 {
                    cause.flags |= CAUSE_HOLDER_READER_HINT;
                }
            }
        }
    }
    if rwsem {
        let inode = lock.wrapping_sub(config_u32(&locks.inode_rwsem) as usize);
        let offsets = &CONFIG.offsets;
        let Some(sb) = read_ptr(inode, config_u32(&offsets.inode_sb)) else { return };
        let Some(root) = read_ptr(sb, config_u32(&locks.sb_root)) else { return };
        if read_ptr(root, config_u32(&locks.dentry_sb)) != Some(sb) {
            return;
        }
        if let (Some(dev), Some(ino)) =
            (read_u32(sb, config_u32(&offsets.sb_dev)), read_u64(inode, config_u32(&offsets.inode_ino)))
        {
            cause.dev = dev;
            cause.ino = ino;
            cause.flags |= CAUSE_INODE_RWSEM;
        }
    }
}

/// `prev` (the current task) is switched out in `state`. `TARGETS`: whether the
/// program may record the syscall target (`bpf_task_pt_regs` exists since 5.15, so
/// only the 5.18+ program has it: the other never contains the call).
#[inline(always)]
fn on_switch_out<const TARGETS: bool>(ctx: &BtfTracePointContext, state: u32) {
    if state & TASK_UNINTERRUPTIBLE == 0 {
        return;
    }
    let flags = config_u32(&CONFIG.flags);
    if state & TASK_NOLOAD != 0 && flags & CONFIG_INCLUDE_IDLE == 0 {
        return;
    }
    record_wait_start::<TARGETS>(ctx, state, flags);
}

/// The slow path of a switch-out: the current task enters D.
#[inline(always)]
fn record_wait_start<const TARGETS: bool>(ctx: &BtfTracePointContext, state: u32, flags: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    // SAFETY: the helper takes no argument.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !wanted(flags, tid, tgid, cgroup_id, &comm) {
        return;
    }
    let Some(wait) = SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's scratch slot; nothing else runs on this CPU meanwhile.
    let wait = unsafe { &mut *wait };
    wait.start_ns = now_ns();
    wait.cgroup_id = cgroup_id;
    wait.tgid = tgid;
    wait.kstack_id = stack_id(ctx, 0);
    wait.ustack_id =
        if flags & CONFIG_USER_STACKS != 0 { stack_id(ctx, u64::from(BPF_F_USER_STACK)) } else { NO_STACK };
    wait.state = state;
    wait.comm = comm;
    wait.waker = Waker { at_ns: 0, tid: 0, tgid: 0, kstack_id: NO_STACK, _pad: 0, comm: [0; COMM_LEN] };
    wait.cause = match CONTENDING.get_ptr(tid) {
        // SAFETY: a pointer from a successful lookup of this task's own entry,
        // which only this task's contention hooks change, and it is running here.
        Some(cause) => unsafe { *cause },
        None => dentry_cause(tid),
    };
    wait.target.syscall = -1;
    wait.target.fd = -1;
    wait.target.dev = 0;
    wait.target.ino = 0;
    wait.target.path[0] = 0;
    if TARGETS && flags & CONFIG_SYSCALL_TARGET != 0 {
        record_target(&mut wait.target);
    }
    // By reference: the record stays in the scratch map; a copy would go through
    // the 512-byte BPF stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let inserted = INFLIGHT.insert(tid, &*wait, 0);
    match inserted {
        Ok(()) => {
            // SAFETY: an atomic add on a valid, aligned global; the result is unused,
            // so it is the plain `lock +=` that every BPF kernel accepts.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(INFLIGHT_COUNT.as_ptr(), 1) };
            count(Counter::WaitsStarted);
        }
        Err(_) => count(Counter::DropInflightFull),
    }
}

/// If the task waits inside `d_alloc_parallel` for a name another task is looking
/// up, that name and that task.
#[inline(always)]
fn dentry_cause(tid: u32) -> Cause {
    let mut cause = Cause::NONE;
    let Some(key) = DLOOKUP_WAITING.get_ptr(tid) else { return cause };
    // SAFETY: a pointer from a successful lookup of this task's own entry.
    let key = unsafe { *key };
    cause.kind = CAUSE_DENTRY;
    cause.key = key.parent;
    if let Some(owner) = DLOOKUP_OWNERS.get_ptr(key) {
        // SAFETY: a pointer from a successful lookup; the entry is copied at once.
        let owner = unsafe { *owner };
        if owner.tid != tid {
            cause.holder_tid = owner.tid;
            cause.holder_tgid = owner.tgid;
            cause.holder_comm = owner.comm;
            cause.flags |= CAUSE_HOLDER_KNOWN;
        }
    }
    cause
}

/// Notes what the current task's syscall names: its file descriptor argument (and
/// that file's device and inode) and its path argument.
#[inline(always)]
fn record_target(target: &mut Target) {
    let offsets = &CONFIG.offsets;
    // SAFETY: the helpers take the current task, a trusted BTF pointer.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    if regs.is_null() {
        return;
    }
    let Some(nr) = read_u64(regs, config_u32(&offsets.regs_syscall_nr)) else { return };
    let nr = nr as i64;
    if nr < 0 || nr >= i64::from(limits::SYSCALLS) {
        return;
    }
    target.syscall = nr as i32;
    let Some(&args) = SYSCALL_ARGS.get(nr as u32) else { return };
    let (path_arg, fd_arg) = syscall_arg_indexes(args);
    if let Some(fd) = arg(regs, fd_arg) {
        let fd = fd as i32;
        target.fd = fd;
        if fd >= 0 {
            if let Some((dev, ino)) = file_of(fd as u32) {
                target.dev = dev;
                target.ino = ino;
            }
        }
    }
    if let Some(path) = arg(regs, path_arg) {
        // SAFETY: a read of the current task's memory through the helper, which
        // never faults and stops at the end of the buffer.
        unsafe {
            bpf_probe_read_user_str(
                target.path.as_mut_ptr().cast(),
                PATH_LEN as u32,
                path as *const core::ffi::c_void,
            )
        };
    }
}

/// Syscall argument `index` (0-5) from the saved user registers; `None` for no
/// argument or a failed read.
#[inline(always)]
fn arg(regs: *const u8, index: Option<u8>) -> Option<u64> {
    let offsets = &CONFIG.offsets.regs_args;
    let offset = match index? {
        0 => config_u32(&offsets[0]),
        1 => config_u32(&offsets[1]),
        2 => config_u32(&offsets[2]),
        3 => config_u32(&offsets[3]),
        4 => config_u32(&offsets[4]),
        5 => config_u32(&offsets[5]),
        _ => return None,
    };
    read_u64(regs, offset)
}

/// Device and inode of the current task's file descriptor `fd`:
/// `current->files->fdt->fd[fd]->f_inode->{i_sb->s_dev, i_ino}`.
#[inline(always)]
fn file_of(fd: u32) -> Option<(u32, u64)> {
    let offsets = &CONFIG.offsets;
    // SAFETY: the helper takes no argument.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    let files = read_ptr(task, config_u32(&offsets.task_files))?;
    let fdt = read_ptr(files, config_u32(&offsets.files_fdt))?;
    let max_fds = read_u32(fdt, config_u32(&offsets.fdt_max_fds))?;
    if fd >= max_fds {
        return None;
    }
    let fds = read_ptr(fdt, config_u32(&offsets.fdt_fd))?;
    let file = read_ptr(fds, fd * 8)?;
    let inode = read_ptr(file, config_u32(&offsets.file_inode))?;
    let sb = read_ptr(inode, config_u32(&offsets.inode_sb))?;
    let dev = read_u32(sb, config_u32(&offsets.sb_dev))?;
    let ino = read_u64(inode, config_u32(&offsets.inode_ino))?;
    Some((dev, ino))
}

/// Whether the filters (`--pid`, `--tid`, `--cgroup`, `--comm`) let this task in.
#[inline(always)]
fn wanted(flags: u32, tid: u32, tgid: u32, cgroup_id: u64, comm: &[u8; COMM_LEN]) -> bool {
    (flags & CONFIG_FILTER_TGID == 0 || FILTER_TGIDS.get_ptr(tgid).is_some())
        && (flags & CONFIG_FILTER_TID == 0 || FILTER_TIDS.get_ptr(tid).is_some())
        && (flags & CONFIG_FILTER_CGROUP == 0 || FILTER_CGROUPS.get_ptr(cgroup_id).is_some())
        && (flags & CONFIG_FILTER_COMM == 0 || FILTER_COMMS.get_ptr(comm).is_some())
}

/// `next` is switched in: if it was tracked in D, its wait is over.
#[inline(always)]
fn on_switch_in(ctx: &BtfTracePointContext) {
    if inflight_is_empty() {
        return;
    }
    record_wait_end(ctx);
}

/// The slow path of a switch-in, taken only while some task is tracked in D.
#[inline(always)]
fn record_wait_end(ctx: &BtfTracePointContext) {
    let next: *const u8 = ctx.arg(2);
    let Some(tid) = read_u32(next, config_u32(&CONFIG.task_pid_offset)) else {
        count(Counter::DropReadFailed);
        return;
    };
    let Some(wait) = INFLIGHT.get_ptr(tid) else {
        return;
    };
    let end_ns = now_ns();
    // SAFETY: a pointer from a successful lookup; only this task's switch-in
    // removes the entry, and it is read before the removal below.
    let wait = unsafe { &*wait };
    let duration_ns = end_ns.wrapping_sub(wait.start_ns);
    aggregate(wait, duration_ns);
    if duration_ns >= config_u64(&CONFIG.min_duration_ns) {
        match EVENTS.reserve::<WaitEvent>(0) {
            Some(mut entry) => {
                let event = entry.as_mut_ptr();
                // SAFETY: a reserved ring buffer entry of the right size; every field
                // is written before it is submitted. Copied field by field from the
                // map entry, never through the (too small) stack.
                unsafe {
                    core::ptr::copy_nonoverlapping(wait, &raw mut (*event).wait, 1);
                    (*event).end_ns = end_ns;
                    (*event).tid = tid;
                    (*event)._pad = 0;
                }
                entry.submit(0);
                count(Counter::WaitsStreamed);
            }
            None => count(Counter::DropRingFull),
        }
    }
    count(Counter::WaitsEnded);
    if INFLIGHT.remove(tid).is_ok() {
        // SAFETY: as for the add in `record_wait_start`.
        unsafe { atomic_xsub::<u64, u64, { AtomicOrdering::Relaxed }>(INFLIGHT_COUNT.as_ptr(), 1) };
    }
}

/// Adds a completed wait to its `AGG` entry, creating the entry if needed.
#[inline(always)]
fn aggregate(wait: &InFlight, duration_ns: u64) {
    let key = AggKey::of(wait);
    let value = match AGG.get_ptr_mut(key) {
        Some(value) => value,
        None => {
            let Some(zero) = AGG_ZERO.get(0) else { return };
            // BPF_NOEXIST: another CPU may have created it meanwhile; either way the
            // lookup below finds the one entry.
            let _ = AGG.insert(key, zero, u64::from(BPF_NOEXIST));
            match AGG.get_ptr_mut(key) {
                Some(value) => value,
                None => {
                    count(Counter::DropAggFull);
                    return;
                }
            }
        }
    };
    let bucket = hist_bucket(duration_ns);
    // SAFETY: `value` points into a live map entry; the adds are atomic because
    // several CPUs can end waits of the same key at once. `max_ns` is a plain
    // read-compare-write: a concurrent larger value can be lost, never a smaller
    // one recorded.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).count, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).total_ns, duration_ns);
        if bucket < dstrace_common::HIST_BUCKETS {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).hist[bucket], 1);
        }
        if duration_ns > (*value).max_ns {
            (*value).max_ns = duration_ns;
        }
    }
}

/// Whether no task is tracked in D (the fast path of both hooks).
#[inline(always)]
fn inflight_is_empty() -> bool {
    // A plain aligned load (always atomic on BPF): LLVM's BPF backend cannot select
    // an `AtomicLoad` for the generic CPU.
    // SAFETY: a valid, aligned global.
    unsafe { core::ptr::read_volatile(INFLIGHT_COUNT.as_ptr()) == 0 }
}

/// The id of the current stack in `STACKS` (kernel, or user with
/// `BPF_F_USER_STACK`), or a negative errno, counted as a drop.
#[inline(always)]
fn stack_id(ctx: &BtfTracePointContext, flags: u64) -> i32 {
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(err) => {
            count(Counter::DropStackLost);
            err
        }
    }
}

/// Reads a `u32` at `offset` bytes into a kernel object.
#[inline(always)]
fn read_u32(base: *const u8, offset: u32) -> Option<u32> {
    // SAFETY: a read of kernel memory through the probe helper, which checks it.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<u32>()) }.ok()
}

/// Reads a `u64` at `offset` bytes into a kernel object.
#[inline(always)]
fn read_u64(base: *const u8, offset: u32) -> Option<u64> {
    // SAFETY: as in `read_u32`.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<u64>()) }.ok()
}

/// Reads a non-null pointer at `offset` bytes into a kernel object.
#[inline(always)]
fn read_ptr(base: *const u8, offset: u32) -> Option<*const u8> {
    read_u64(base, offset).filter(|&ptr| ptr != 0).map(|ptr| ptr as *const u8)
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of every timestamp in the records.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: the helper takes no argument and cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

/// Adds one to a per-CPU counter.
#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU array slot: only this CPU writes it, and programs do not
        // nest on one CPU for these hooks.
        unsafe { *slot += 1 };
    }
}

/// Reads a `CONFIG` field as set by the loader, not as seen by the compiler.
#[inline(always)]
fn config_u32(field: &u32) -> u32 {
    // SAFETY: a valid reference; the volatile read stops the compiler from folding
    // the build-time placeholder into the code.
    unsafe { core::ptr::read_volatile(field) }
}

/// As [`config_u32`], for a `u64` field.
#[inline(always)]
fn config_u64(field: &u64) -> u64 {
    // SAFETY: as in `config_u32`.
    unsafe { core::ptr::read_volatile(field) }
}

/// The kernel requires a GPL-compatible license for the probe and stack helpers.
#[no_mangle]
#[link_section = "license"]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// eBPF code cannot unwind; the verifier rejects a program that could reach this
/// loop, so a panic path shows up as a load error, never at run time.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
