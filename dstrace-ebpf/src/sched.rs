//! The scheduler: a task enters D (`sched_switch`, switch-out), is woken
//! (`sched_waking`) and runs again (`sched_switch`, switch-in); and the two empty
//! programs the benchmarks measure the floor with.

use core::intrinsics::{atomic_xadd, atomic_xsub, AtomicOrdering};

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use dstrace_common::{
    hist_bucket, AggKey, Counter, InFlight, WaitEvent, Waker, COMM_LEN, CONFIG_FILTER_CGROUP,
    CONFIG_FILTER_COMM, CONFIG_FILTER_TGID, CONFIG_FILTER_TID, CONFIG_INCLUDE_IDLE, CONFIG_SYSCALL_TARGET,
    CONFIG_USER_STACKS, NO_STACK, TASK_NOLOAD, TASK_UNINTERRUPTIBLE,
};

use crate::locks::dentry_cause;
use crate::maps::{
    count, stack_id, AGG, AGG_ZERO, CONFIG, CONTENDING, EVENTS, FILTER_CGROUPS, FILTER_COMMS, FILTER_TGIDS,
    FILTER_TIDS, INFLIGHT, INFLIGHT_COUNT, SCRATCH,
};
use crate::read::{config_u32, config_u64, now_ns, read_u32};
use crate::target::record_target;

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

/// `prev` (the current task) is switched out in `state`. `TARGETS`: whether the
/// program may record the syscall target (`bpf_task_pt_regs` exists since 5.15, so
/// only the 5.18+ program has it: the other never contains the call).
#[inline(always)]
pub(crate) fn on_switch_out<const TARGETS: bool>(ctx: &BtfTracePointContext, state: u32) {
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
pub(crate) fn record_wait_start<const TARGETS: bool>(ctx: &BtfTracePointContext, state: u32, flags: u32) {
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

/// Whether the filters (`--pid`, `--tid`, `--cgroup`, `--comm`) let this task in.
#[inline(always)]
pub(crate) fn wanted(flags: u32, tid: u32, tgid: u32, cgroup_id: u64, comm: &[u8; COMM_LEN]) -> bool {
    (flags & CONFIG_FILTER_TGID == 0 || FILTER_TGIDS.get_ptr(tgid).is_some())
        && (flags & CONFIG_FILTER_TID == 0 || FILTER_TIDS.get_ptr(tid).is_some())
        && (flags & CONFIG_FILTER_CGROUP == 0 || FILTER_CGROUPS.get_ptr(cgroup_id).is_some())
        && (flags & CONFIG_FILTER_COMM == 0 || FILTER_COMMS.get_ptr(comm).is_some())
}

/// `next` is switched in: if it was tracked in D, its wait is over.
#[inline(always)]
pub(crate) fn on_switch_in(ctx: &BtfTracePointContext) {
    if inflight_is_empty() {
        return;
    }
    record_wait_end(ctx);
}

/// The slow path of a switch-in, taken only while some task is tracked in D.
#[inline(always)]
pub(crate) fn record_wait_end(ctx: &BtfTracePointContext) {
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
pub(crate) fn aggregate(wait: &InFlight, duration_ns: u64) {
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
pub(crate) fn inflight_is_empty() -> bool {
    // A plain aligned load (always atomic on BPF): LLVM's BPF backend cannot select
    // an `AtomicLoad` for the generic CPU.
    // SAFETY: a valid, aligned global.
    unsafe { core::ptr::read_volatile(INFLIGHT_COUNT.as_ptr()) == 0 }
}
