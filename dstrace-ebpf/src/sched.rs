//! The scheduler: a task enters D (`sched_switch`, switch-out), is woken
//! (`sched_waking`) and runs again (`sched_switch`, switch-in); and the two empty
//! programs the benchmarks measure the floor with.
//!
//! The path is written once, in [`try_sched_switch`]; the two `sched_switch`
//! programs differ only in where the state of the task switched out comes from.
//! Its fast path (a switch that does not enter D, while no task is tracked) is one
//! state test and one load of `INFLIGHT_COUNT`: nothing else may go before them.

use core::intrinsics::{atomic_xadd, atomic_xsub, AtomicOrdering};

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use dstrace_common::{
    hist_bucket, AggKey, Counter, InFlight, WaitEvent, Waker, Walk, COMM_LEN, CONFIG_FILTER_CGROUP,
    CONFIG_FILTER_COMM, CONFIG_FILTER_TGID, CONFIG_FILTER_TID, CONFIG_INCLUDE_IDLE, CONFIG_SYSCALL_TARGET,
    CONFIG_USER_STACKS, CONFIG_VFS, HIST_BUCKETS, NO_STACK, TASK_NOLOAD, TASK_UNINTERRUPTIBLE,
};

use crate::locks::dentry_cause;
use crate::maps::{
    count, counted, stack_id, AGG, AGG_ZERO, CONFIG, CONTENDING, EVENTS, FILTER_CGROUPS, FILTER_COMMS,
    FILTER_TGIDS, FILTER_TIDS, INFLIGHT, INFLIGHT_COUNT, SCRATCH,
};
use crate::read::{config_u32, config_u64, current_comm, now_ns, read_u32};
use crate::target::{record_syscall, record_walk};

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`, Linux 5.18 and later (`prev_state` since commit
/// fa2c3254d7cf): `trace_sched_switch()` in `__schedule()`, kernel/sched/core.c; the
/// event is in include/trace/events/sched.h.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    match try_sched_switch::<false>(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next)`,
/// Linux 5.8 (the ring buffer; BTF tracepoints since 5.5) to 5.17, same place: the
/// state is read from `prev` (the current task).
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_pre518(ctx: BtfTracePointContext) -> u32 {
    match try_sched_switch::<true>(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

/// A context switch from `prev` (the current task) to `next`. `PRE_5_18`: the
/// kernel's `sched_switch` has no `prev_state` (it is read from `prev`), nor
/// `bpf_task_pt_regs` (5.15+), so no syscall target is recorded (the program never
/// contains the call); the path walk is.
#[inline(always)]
fn try_sched_switch<const PRE_5_18: bool>(ctx: &BtfTracePointContext) -> Result<(), Counter> {
    let preempt: u64 = ctx.arg(0);
    if preempt & 1 == 0 {
        // Counted here: `next`'s switch-in is still to be handled.
        counted(switch_out::<PRE_5_18>(ctx));
    }
    switch_in(ctx)
}

/// `prev` (the current task) is switched out: if it enters D, its wait begins.
#[inline(always)]
fn switch_out<const PRE_5_18: bool>(ctx: &BtfTracePointContext) -> Result<(), Counter> {
    let state = if PRE_5_18 {
        let prev: *const u8 = ctx.arg(1);
        // `state` was a `long` before 5.14 and is an `unsigned int` since; the low
        // 32 bits hold every `TASK_*` bit on a little-endian machine either way.
        read_u32(prev, config_u32(&CONFIG.task_state_offset))?
    } else {
        let prev_state: u64 = ctx.arg(3);
        prev_state as u32
    };
    if state & TASK_UNINTERRUPTIBLE == 0 {
        return Ok(());
    }
    let flags = config_u32(&CONFIG.flags);
    if state & TASK_NOLOAD != 0 && flags & CONFIG_INCLUDE_IDLE == 0 {
        return Ok(());
    }
    record_wait_start::<PRE_5_18>(ctx, state, flags)
}

/// The slow path of a switch-out: the current task enters D.
#[inline(always)]
fn record_wait_start<const PRE_5_18: bool>(
    ctx: &BtfTracePointContext,
    state: u32,
    flags: u32,
) -> Result<(), Counter> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == config_u32(&CONFIG.self_tgid) {
        // dstrace's own waits (reading /proc, its maps) are not the machine's.
        return Ok(());
    }
    let comm = current_comm();
    // SAFETY: the helper takes no argument.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !wanted(flags, tid, tgid, cgroup_id, &comm) {
        return Ok(());
    }
    let wait = SCRATCH.get_ptr_mut(0).ok_or(Counter::DropSlotMissing)?;
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
    let target = &mut wait.target;
    target.syscall = -1;
    target.fd = -1;
    target.dev = 0;
    target.mnt_id = 0;
    target.ino = 0;
    target.walk = Walk::NONE;
    target.path[0] = 0;
    // `prev` is the current task.
    let prev: *const u8 = ctx.arg(1);
    // Counted here, each: a wait whose target could not be read is still recorded.
    if flags & CONFIG_VFS != 0 {
        counted(record_walk(prev, target));
    }
    if !PRE_5_18 && flags & CONFIG_SYSCALL_TARGET != 0 {
        counted(record_syscall(prev, target));
    }
    // By reference: the record stays in the scratch map; a copy would go through
    // the 512-byte BPF stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    INFLIGHT.insert(tid, &*wait, 0).map_err(|_| Counter::DropInflightFull)?;
    // SAFETY: an atomic add on a valid, aligned global; the result is unused, so it
    // is the plain `lock +=` that every BPF kernel accepts.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(INFLIGHT_COUNT.as_ptr(), 1) };
    count(Counter::WaitsStarted);
    Ok(())
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
fn switch_in(ctx: &BtfTracePointContext) -> Result<(), Counter> {
    if inflight_is_empty() {
        return Ok(());
    }
    record_wait_end(ctx)
}

/// The slow path of a switch-in, taken only while some task is tracked in D.
#[inline(always)]
fn record_wait_end(ctx: &BtfTracePointContext) -> Result<(), Counter> {
    let next: *const u8 = ctx.arg(2);
    let tid = read_u32(next, config_u32(&CONFIG.task_pid_offset))?;
    let Some(wait) = INFLIGHT.get_ptr(tid) else { return Ok(()) };
    let end_ns = now_ns();
    // SAFETY: a pointer from a successful lookup; only this task's switch-in
    // removes the entry, and it is read before the removal below.
    let wait = unsafe { &*wait };
    let duration_ns = end_ns.wrapping_sub(wait.start_ns);
    // Counted here, both: the wait is over either way, and leaves `INFLIGHT` below.
    counted(aggregate(wait, duration_ns));
    if duration_ns >= config_u64(&CONFIG.min_duration_ns) {
        counted(stream(wait, end_ns, tid));
    }
    count(Counter::WaitsEnded);
    if INFLIGHT.remove(tid).is_ok() {
        // SAFETY: as for the add in `record_wait_start`.
        unsafe { atomic_xsub::<u64, u64, { AtomicOrdering::Relaxed }>(INFLIGHT_COUNT.as_ptr(), 1) };
    }
    Ok(())
}

/// Sends a completed wait to userspace on `EVENTS`.
#[inline(always)]
fn stream(wait: &InFlight, end_ns: u64, tid: u32) -> Result<(), Counter> {
    let mut entry = EVENTS.reserve::<WaitEvent>(0).ok_or(Counter::DropRingFull)?;
    let event = entry.as_mut_ptr();
    // SAFETY: a reserved ring buffer entry of the right size; every field is written
    // before it is submitted. Copied field by field from the map entry, never through
    // the (too small) stack.
    unsafe {
        core::ptr::copy_nonoverlapping(wait, &raw mut (*event).wait, 1);
        (*event).end_ns = end_ns;
        (*event).tid = tid;
        (*event)._pad = 0;
    }
    entry.submit(0);
    count(Counter::WaitsStreamed);
    Ok(())
}

/// Adds a completed wait to its `AGG` entry, creating the entry if needed.
#[inline(always)]
fn aggregate(wait: &InFlight, duration_ns: u64) -> Result<(), Counter> {
    let key = AggKey::of(wait);
    let value = match AGG.get_ptr_mut(key) {
        Some(value) => value,
        None => {
            let zero = AGG_ZERO.get(0).ok_or(Counter::DropSlotMissing)?;
            // BPF_NOEXIST: another CPU may have created it meanwhile; either way the
            // lookup below finds the one entry, unless the map is full.
            let _ = AGG.insert(key, zero, u64::from(BPF_NOEXIST));
            AGG.get_ptr_mut(key).ok_or(Counter::DropAggFull)?
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
        if bucket < HIST_BUCKETS {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).hist[bucket], 1);
        }
        if duration_ns > (*value).max_ns {
            (*value).max_ns = duration_ns;
        }
    }
    Ok(())
}

/// `sched_waking(struct task_struct *p)`, Linux 5.8+ (as old as this object loads):
/// `trace_sched_waking()` in `try_to_wake_up()`, kernel/sched/core.c. The current
/// task (or interrupt) wakes `p`; if `p` is tracked in D, note who woke it.
#[btf_tracepoint(function = "sched_waking")]
pub fn sched_waking(ctx: BtfTracePointContext) -> u32 {
    match try_sched_waking(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

/// `p` is woken: if it is tracked in D, the current task is its waker.
#[inline(always)]
fn try_sched_waking(ctx: &BtfTracePointContext) -> Result<(), Counter> {
    if inflight_is_empty() {
        return Ok(());
    }
    let task: *const u8 = ctx.arg(0);
    let tid = read_u32(task, config_u32(&CONFIG.task_pid_offset))?;
    let Some(wait) = INFLIGHT.get_ptr_mut(tid) else { return Ok(()) };
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
        if waited_ns >= config_u64(&CONFIG.min_duration_ns) { stack_id(ctx, 0) } else { NO_STACK };
    let waker = Waker {
        at_ns,
        tid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        kstack_id,
        _pad: 0,
        comm: current_comm(),
    };
    // SAFETY: a pointer from a successful lookup; the task is asleep, so nothing
    // else writes its entry now.
    unsafe { (*wait).waker = waker };
    count(Counter::WaitsWoken);
    Ok(())
}

/// Whether no task is tracked in D (the fast path of both hooks).
#[inline(always)]
fn inflight_is_empty() -> bool {
    // A plain aligned load (always atomic on BPF): LLVM's BPF backend cannot select
    // an `AtomicLoad` for the generic CPU.
    // SAFETY: a valid, aligned global.
    unsafe { core::ptr::read_volatile(INFLIGHT_COUNT.as_ptr()) == 0 }
}

/// Does nothing: attached beside `sched_switch` by the benchmarks, it measures the
/// cost of being called at all (the floor). Nothing can fail, so it has no `try_`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_empty(_ctx: BtfTracePointContext) -> u32 {
    0
}

/// Does nothing: the floor of `sched_waking` in the benchmarks.
#[btf_tracepoint(function = "sched_waking")]
pub fn sched_waking_empty(_ctx: BtfTracePointContext) -> u32 {
    0
}
