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
    /// Tasks in D now: tid -> [`crate::InFlight`].
    pub const MAP_INFLIGHT: &str = "INFLIGHT";
    /// Kernel stacks, by the id stored in records.
    pub const MAP_STACKS: &str = "STACKS";
    /// Completed waits above the threshold, streamed as [`crate::WaitEvent`].
    pub const MAP_EVENTS: &str = "EVENTS";
    /// Per-CPU counters indexed by [`crate::Counter`].
    pub const MAP_COUNTERS: &str = "COUNTERS";
    /// The [`crate::Config`] global, set at load time.
    pub const GLOBAL_CONFIG: &str = "CONFIG";
    /// Number of entries in `INFLIGHT` (an upper bound), a `.bss` global that lets
    /// `sched_switch` skip the map lookup while no task is in D.
    pub const GLOBAL_INFLIGHT_COUNT: &str = "INFLIGHT_COUNT";

    /// Every map the object must define.
    pub const MAPS: [&str; 4] = [MAP_INFLIGHT, MAP_STACKS, MAP_EVENTS, MAP_COUNTERS];
}

/// Capacity of the maps; userspace and the kernel side agree through these.
pub mod limits {
    /// Tasks that can be tracked in D at once.
    pub const INFLIGHT_ENTRIES: u32 = 32_768;
    /// Distinct kernel stacks kept.
    pub const STACK_ENTRIES: u32 = 8_192;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 20;
}

/// `Config::flags`: also record `TASK_IDLE` waits (idle kernel threads).
pub const CONFIG_INCLUDE_IDLE: u32 = 1 << 0;

/// Settings the kernel side reads, written once into `.rodata` at load time.
///
/// Offsets come from the running kernel's BTF, never from the build host.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Waits shorter than this are not streamed on the ring buffer.
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
}
const _: () = assert!(core::mem::size_of::<Config>() == 24);

impl Config {
    /// A configuration that records nothing useful; the loader replaces it.
    pub const UNSET: Config =
        Config { min_duration_ns: u64::MAX, task_pid_offset: 0, task_state_offset: 0, flags: 0, _pad: 0 };
}

/// A task in D now: the value of `INFLIGHT`, keyed by tid.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the task was switched out.
    pub start_ns: u64,
    /// Thread group id (the pid of `ps`).
    pub tgid: u32,
    /// Id in `STACKS`, or a negative errno when the stack was lost.
    pub kstack_id: i32,
    /// The task state it slept in (`TASK_*` bits).
    pub state: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<InFlight>() == 40);

/// A completed D wait, as streamed on `EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitEvent {
    /// When the task entered D (`bpf_ktime_get_ns()`).
    pub start_ns: u64,
    /// When the task ran again.
    pub end_ns: u64,
    /// Thread id.
    pub tid: u32,
    /// Thread group id.
    pub tgid: u32,
    /// Id in `STACKS`, or a negative errno when the stack was lost.
    pub kstack_id: i32,
    /// The task state it slept in (`TASK_*` bits).
    pub state: u32,
    /// `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<WaitEvent>() == 48);

impl WaitEvent {
    /// Builds the record of a wait that ended at `end_ns`.
    #[inline(always)]
    pub fn completed(tid: u32, wait: &InFlight, end_ns: u64) -> Self {
        WaitEvent {
            start_ns: wait.start_ns,
            end_ns,
            tid,
            tgid: wait.tgid,
            kstack_id: wait.kstack_id,
            state: wait.state,
            comm: wait.comm,
        }
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
}

impl Counter {
    /// Number of counters, the size of `COUNTERS`.
    pub const COUNT: u32 = 7;
    /// All counters, in index order.
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::WaitsStarted,
        Counter::WaitsEnded,
        Counter::WaitsStreamed,
        Counter::DropInflightFull,
        Counter::DropRingFull,
        Counter::DropStackLost,
        Counter::DropReadFailed,
    ];

    /// Whether this counter counts lost data.
    pub const fn is_drop(self) -> bool {
        (self as u32) >= Counter::DropInflightFull as u32
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
        }
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
}
