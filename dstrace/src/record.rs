//! One D wait as dstrace shows it: who, when, how long, where.

use std::time::SystemTime;

use dstrace_common::{WaitEvent, COMM_LEN, TASK_NOLOAD, TASK_WAKEKILL};

use crate::clock::Clock;

/// A completed D wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    /// When the task entered D.
    pub start: SystemTime,
    /// When it ran again.
    pub end: SystemTime,
    /// How long it was off the CPU, in nanoseconds.
    pub duration_ns: u64,
    /// Thread id.
    pub tid: u32,
    /// Process id (thread group id).
    pub pid: u32,
    /// Command name, as the kernel has it (any bytes; the sinks escape them).
    pub comm: String,
    /// The state it slept in: `D` (`TASK_UNINTERRUPTIBLE`), `D+K` (`TASK_KILLABLE`),
    /// `D+I` (`TASK_IDLE`).
    pub state: TaskState,
    /// The kernel function it blocked in, when the stack is known.
    pub blocked_in: Option<String>,
    /// The kernel stack, innermost frame first (empty when lost).
    pub stack: std::rc::Rc<[String]>,
}

/// The kind of uninterruptible sleep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// `TASK_UNINTERRUPTIBLE`: no signal wakes it.
    Uninterruptible,
    /// `TASK_KILLABLE`: only a fatal signal wakes it.
    Killable,
    /// `TASK_IDLE`: an idle kernel thread, not counted in the load average.
    Idle,
}

impl TaskState {
    /// From the kernel's `TASK_*` bits.
    pub fn from_bits(state: u32) -> TaskState {
        if state & TASK_NOLOAD != 0 {
            TaskState::Idle
        } else if state & TASK_WAKEKILL != 0 {
            TaskState::Killable
        } else {
            TaskState::Uninterruptible
        }
    }

    /// A short name: `D`, `D+killable`, `D+idle`.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Uninterruptible => "D",
            TaskState::Killable => "D+killable",
            TaskState::Idle => "D+idle",
        }
    }
}

/// `comm` bytes up to the first NUL, invalid UTF-8 replaced.
pub fn comm_string(comm: &[u8; COMM_LEN]) -> String {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&comm[..len]).into_owned()
}

impl Wait {
    /// Builds a wait from its kernel record, its symbolized stack and the clock.
    pub fn from_event(event: &WaitEvent, stack: std::rc::Rc<[String]>, clock: &Clock) -> Wait {
        let blocked_in =
            crate::symbols::blocking_function(stack.iter().map(String::as_str)).map(str::to_owned);
        Wait {
            start: clock.wall(event.start_ns),
            end: clock.wall(event.end_ns),
            duration_ns: event.end_ns.saturating_sub(event.start_ns),
            tid: event.tid,
            pid: event.tgid,
            comm: comm_string(&event.comm),
            state: TaskState::from_bits(event.state),
            blocked_in,
            stack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        assert_eq!(TaskState::from_bits(0x2), TaskState::Uninterruptible);
        assert_eq!(TaskState::from_bits(0x102), TaskState::Killable);
        assert_eq!(TaskState::from_bits(0x402), TaskState::Idle);
    }

    #[test]
    fn comm_is_cut_at_nul_and_lossy() {
        assert_eq!(comm_string(b"stat\0\0\0\0\0\0\0\0\0\0\0\0"), "stat");
        assert_eq!(comm_string(b"0123456789abcdef"), "0123456789abcdef");
        assert_eq!(comm_string(b"a\xffb\0\0\0\0\0\0\0\0\0\0\0\0\0"), "a\u{fffd}b");
    }

    #[test]
    fn from_event_picks_the_blocking_function() {
        let mut comm = [0u8; COMM_LEN];
        comm[..2].copy_from_slice(b"df");
        let event = WaitEvent {
            start_ns: 1_000,
            end_ns: 2_000_001_000,
            tid: 7,
            tgid: 6,
            kstack_id: 1,
            state: 0x2,
            comm,
        };
        let stack: std::rc::Rc<[String]> =
            ["__schedule", "schedule", "d_alloc_parallel"].map(String::from).into();
        let wait = Wait::from_event(&event, stack, &Clock::with_offset(0));
        assert_eq!(wait.duration_ns, 2_000_000_000);
        assert_eq!((wait.pid, wait.tid, wait.comm.as_str()), (6, 7, "df"));
        assert_eq!(wait.blocked_in.as_deref(), Some("d_alloc_parallel"));
    }
}
