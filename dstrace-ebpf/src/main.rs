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
//! `dstrace_common::Counter`); nothing is lost silently. Each program is the same
//! three lines, `match try_prog(&ctx) { Ok(()) => 0, Err(counter) => { count(counter);
//! 0 } }`, around a `try_prog` that returns `Result<(), Counter>`: "nothing to do" (a
//! task not tracked, a spinning lock) is `Ok(())`, a failed read or a full map an
//! `Err`, and a step the program goes on after anyway (a detail of a record, the
//! switch-in half of a switch) is counted where it fails (`maps::counted`).
//!
//! No kernel struct offset is compiled in: `task_struct` offsets arrive in `CONFIG`,
//! read by userspace from the running kernel's BTF.
//!
//! Hooks: `tp_btf/sched_switch` (`trace_sched_switch()` in `__schedule`,
//! kernel/sched/core.c) and `tp_btf/sched_waking` (`trace_sched_waking()` in
//! `try_to_wake_up`, same file). BTF-enabled tracepoints exist since Linux 5.5 and the
//! ring buffer since 5.8, the oldest kernel this object loads on. `sched_switch`
//! takes `prev_state` as its fourth argument since 5.18 (commit fa2c3254d7cf); the
//! `sched_switch_pre518` variant reads it from `task_struct` instead and userspace
//! loads whichever fits the running kernel.
//!
//! One module per hooked area, each program with the kernel source of its hook and
//! the oldest kernel it supports: `sched` (the scheduler path above), `locks` (kernel
//! locks and name lookups a wait is on), `fuse` (FUSE requests in flight), `rpc`
//! (sunrpc tasks in flight); `target` (what the syscall and path walk of a task
//! entering D name); `iter` (the task iterators: every task in D now, for waits that
//! began before dstrace did, and the `/dev/fuse` files);
//! what they share: `maps` (every map and global, the counters) and `read` (kernel
//! memory, tracepoint records, `CONFIG`, the clock).
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so `AtomicU64::fetch_add` does not exist
// there; the intrinsic lowers to the BPF atomic add instruction (`lock +=`). The
// crate is built with `-Z build-std` and so with nightly features anyway.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod fuse;
mod iter;
mod locks;
mod maps;
mod read;
mod rpc;
mod sched;
mod target;

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
