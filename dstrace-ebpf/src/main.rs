//! dstrace's eBPF programs: record every task that enters uninterruptible sleep.
//!
//! `sched_switch` runs on every context switch of the machine, so it is built for the
//! common case: a task that is not entering D costs one state test, and while no task
//! is tracked in D the switch-in side costs one load of `INFLIGHT_COUNT`.
//!
//! * switch-out of a task entering `TASK_UNINTERRUPTIBLE` (not preempted; `TASK_IDLE`
//!   only when asked): its kernel stack goes to `STACKS`, its start time and identity
//!   to `INFLIGHT` under its tid;
//! * switch-in of a tracked task: the wait is over; it is removed from `INFLIGHT` and,
//!   when it lasted at least `CONFIG.min_duration_ns`, streamed on `EVENTS`.
//!
//! Every failure increments a per-CPU counter in `COUNTERS` (see
//! `dstrace_common::Counter`); nothing is lost silently. No kernel struct offset is
//! compiled in: `task_struct` offsets arrive in `CONFIG`, read by userspace from the
//! running kernel's BTF.
//!
//! Hook: `tp_btf/sched_switch`, `trace_sched_switch()` in `kernel/sched/core.c`
//! (`__schedule`). BTF-enabled tracepoints exist since Linux 5.5 and the ring buffer
//! since 5.8, the oldest kernel this object loads on. `sched_switch` takes
//! `prev_state` as its fourth argument since 5.18 (commit fa2c3254d7cf); the
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
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{tracing::StackIdContext as _, BtfTracePointContext},
};
use dstrace_common::{
    limits, Config, Counter, InFlight, WaitEvent, COMM_LEN, CONFIG_INCLUDE_IDLE, TASK_NOLOAD,
    TASK_UNINTERRUPTIBLE,
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

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`, Linux 5.18 and later.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    let preempt: u64 = ctx.arg(0);
    if preempt & 1 == 0 {
        let prev_state: u64 = ctx.arg(3);
        on_switch_out(&ctx, prev_state as u32);
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
        let offset = config_u32(&CONFIG.task_state_offset);
        // `state` was a `long` before 5.14 and is an `unsigned int` since; the low
        // 32 bits hold every `TASK_*` bit on a little-endian machine either way.
        // SAFETY: a read of kernel memory through the probe helper, which checks it.
        match unsafe { bpf_probe_read_kernel(prev.wrapping_add(offset as usize).cast::<u32>()) } {
            Ok(state) => on_switch_out(&ctx, state),
            Err(_) => count(Counter::DropReadFailed),
        }
    }
    on_switch_in(&ctx);
    0
}

/// `prev` (the current task) is switched out in `state`.
#[inline(always)]
fn on_switch_out(ctx: &BtfTracePointContext, state: u32) {
    if state & TASK_UNINTERRUPTIBLE == 0 {
        return;
    }
    if state & TASK_NOLOAD != 0 && config_u32(&CONFIG.flags) & CONFIG_INCLUDE_IDLE == 0 {
        return;
    }
    record_wait_start(ctx, state);
}

/// The slow path of a switch-out: the current task enters D.
#[inline(always)]
fn record_wait_start(ctx: &BtfTracePointContext, state: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let kstack_id = match ctx.get_stackid(&STACKS, 0) {
        Ok(id) => id as i32,
        Err(err) => {
            count(Counter::DropStackLost);
            err
        }
    };
    let wait = InFlight {
        start_ns: now_ns(),
        tgid: (pid_tgid >> 32) as u32,
        kstack_id,
        state,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    match INFLIGHT.insert(tid, wait, 0) {
        Ok(()) => {
            // SAFETY: an atomic add on a valid, aligned global; the result is unused,
            // so it is the plain `lock +=` that every BPF kernel accepts.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(INFLIGHT_COUNT.as_ptr(), 1) };
            count(Counter::WaitsStarted);
        }
        Err(_) => count(Counter::DropInflightFull),
    }
}

/// `next` is switched in: if it was tracked in D, its wait is over.
#[inline(always)]
fn on_switch_in(ctx: &BtfTracePointContext) {
    // A plain aligned load (always atomic on BPF): LLVM's BPF backend cannot select
    // an `AtomicLoad` for the generic CPU.
    // SAFETY: a valid, aligned global.
    if unsafe { core::ptr::read_volatile(INFLIGHT_COUNT.as_ptr()) } == 0 {
        return;
    }
    record_wait_end(ctx);
}

/// The slow path of a switch-in, taken only while some task is tracked in D.
#[inline(always)]
fn record_wait_end(ctx: &BtfTracePointContext) {
    let next: *const u8 = ctx.arg(2);
    let offset = config_u32(&CONFIG.task_pid_offset);
    // SAFETY: a read of kernel memory through the probe helper, which checks it.
    let tid = match unsafe { bpf_probe_read_kernel(next.wrapping_add(offset as usize).cast::<u32>()) } {
        Ok(tid) => tid,
        Err(_) => {
            count(Counter::DropReadFailed);
            return;
        }
    };
    let Some(wait) = INFLIGHT.get_ptr(tid) else {
        return;
    };
    // SAFETY: the pointer comes from a successful lookup; the entry is copied out
    // before it is removed, and only this task's switch-in removes it.
    let wait = unsafe { *wait };
    let end_ns = now_ns();
    if INFLIGHT.remove(tid).is_ok() {
        // SAFETY: as for the add in `record_wait_start`.
        unsafe { atomic_xsub::<u64, u64, { AtomicOrdering::Relaxed }>(INFLIGHT_COUNT.as_ptr(), 1) };
    }
    count(Counter::WaitsEnded);
    if end_ns.wrapping_sub(wait.start_ns) < config_u64(&CONFIG.min_duration_ns) {
        return;
    }
    match EVENTS.reserve::<WaitEvent>(0) {
        Some(mut entry) => {
            entry.write(WaitEvent::completed(tid, &wait, end_ns));
            entry.submit(0);
            count(Counter::WaitsStreamed);
        }
        None => count(Counter::DropRingFull),
    }
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
        // nest on one CPU for this hook.
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
