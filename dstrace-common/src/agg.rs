//! In-kernel aggregation of completed waits: [`AggKey`] -> [`AggValue`], with a log2
//! histogram of durations.

use crate::{InFlight, COMM_LEN};

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
    /// [`Cause::kind`](crate::Cause::kind).
    pub cause_kind: u32,
    /// [`Cause::dev`](crate::Cause::dev).
    pub cause_dev: u32,
    /// [`Cause::key`](crate::Cause::key).
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
}
