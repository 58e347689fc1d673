//! The kernel side's per-CPU counters (`COUNTERS`).

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
    /// Drop: `AGG` was full, a completed wait was not aggregated.
    DropAggFull = 7,
    /// Waits whose waker was recorded.
    WaitsWoken = 8,
    /// Drop: `CONTENDING` was full, a lock wait was not attributed.
    DropLockMapFull = 9,
    /// Drop: `FUSE_INFLIGHT` was full, a FUSE request was not tracked.
    DropFuseMapFull = 10,
    /// Drop: `RPC_INFLIGHT` was full, an RPC was not tracked.
    DropRpcMapFull = 11,
    /// Drop: `DLOOKUP_WAITING` or `DLOOKUP_OWNERS` was full, a name lookup was not
    /// tracked (a wait for that name cannot name the task looking it up).
    DropLookupMapFull = 12,
    /// Drop: a slot of an array map (`SCRATCH`, `AGG_ZERO`, `SYSCALL_ARGS`, the
    /// iterators' `ITER_TASK` and `ITER_FUSE`) could not
    /// be looked up, so a wait, its aggregation or its target was lost. Not expected
    /// (the slots exist from load time on), counted all the same.
    DropSlotMissing = 13,
    /// Task iterator records the read's buffer could not take (`bpf_seq_write`
    /// failed): not lost, the kernel runs the program again for that task or file at
    /// the start of the next read (the programs are idempotent), or fails the read.
    IterRecordRetried = 14,
}

impl Counter {
    /// Number of counters, the size of `COUNTERS`.
    pub const COUNT: u32 = 15;
    /// All counters, in index order.
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::WaitsStarted,
        Counter::WaitsEnded,
        Counter::WaitsStreamed,
        Counter::DropInflightFull,
        Counter::DropRingFull,
        Counter::DropStackLost,
        Counter::DropReadFailed,
        Counter::DropAggFull,
        Counter::WaitsWoken,
        Counter::DropLockMapFull,
        Counter::DropFuseMapFull,
        Counter::DropRpcMapFull,
        Counter::DropLookupMapFull,
        Counter::DropSlotMissing,
        Counter::IterRecordRetried,
    ];

    /// Whether this counter counts lost data.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Counter::DropInflightFull
                | Counter::DropRingFull
                | Counter::DropStackLost
                | Counter::DropReadFailed
                | Counter::DropAggFull
                | Counter::DropLockMapFull
                | Counter::DropFuseMapFull
                | Counter::DropRpcMapFull
                | Counter::DropLookupMapFull
                | Counter::DropSlotMissing
        )
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
            Counter::DropAggFull => "aggregation_map_full",
            Counter::WaitsWoken => "waits_woken",
            Counter::DropLockMapFull => "lock_map_full",
            Counter::DropFuseMapFull => "fuse_map_full",
            Counter::DropRpcMapFull => "rpc_map_full",
            Counter::DropLookupMapFull => "lookup_map_full",
            Counter::DropSlotMissing => "map_slot_missing",
            Counter::IterRecordRetried => "iter_record_retried",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_listed_once_in_index_order() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
        assert_eq!(Counter::ALL.len(), Counter::COUNT as usize);
    }

    #[test]
    fn counter_names_are_unique_and_snake_case() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            let name = counter.name();
            assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
            assert!(Counter::ALL[index + 1..].iter().all(|other| other.name() != name), "{name} twice");
        }
    }
}
