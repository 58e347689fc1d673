//! Completed waits grouped: the in-kernel aggregation, read on an interval and
//! summed by what a person asks about (which process, blocked where).
//!
//! The kernel side keeps one counter set per (process, command, kernel stack,
//! cause) and only ever adds to it (`dstrace_common::AggValue`); userspace keeps
//! the last read as a baseline and takes differences, so reading never races with
//! the kernel's updates and nothing is deleted under its feet.

use std::collections::HashMap;

use dstrace_common::{hist_bucket_floor_ns, AggKey, AggValue, HIST_BUCKETS};

/// Counters of a set of completed waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    /// Number of waits.
    pub count: u64,
    /// Sum of durations, in nanoseconds.
    pub total_ns: u64,
    /// The longest, in nanoseconds.
    pub max_ns: u64,
    /// Log2 histogram of durations (see `dstrace_common::hist_bucket`).
    pub hist: [u64; HIST_BUCKETS],
}

impl Default for Totals {
    fn default() -> Self {
        Totals { count: 0, total_ns: 0, max_ns: 0, hist: [0; HIST_BUCKETS] }
    }
}

impl Totals {
    /// From a kernel value.
    pub fn of(value: &AggValue) -> Totals {
        Totals { count: value.count, total_ns: value.total_ns, max_ns: value.max_ns, hist: value.hist }
    }

    /// Adds `other` in.
    pub fn add(&mut self, other: &Totals) {
        self.count += other.count;
        self.total_ns += other.total_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
        for (mine, theirs) in self.hist.iter_mut().zip(other.hist.iter()) {
            *mine += theirs;
        }
    }

    /// Adds one wait of this duration.
    pub fn record(&mut self, duration_ns: u64) {
        self.count += 1;
        self.total_ns += duration_ns;
        self.max_ns = self.max_ns.max(duration_ns);
        self.hist[dstrace_common::hist_bucket(duration_ns)] += 1;
    }

    /// What `self` (a later read) has more than `earlier`. The maximum is the
    /// later one's: a maximum cannot be subtracted, so an interval's maximum is an
    /// upper bound.
    pub fn since(&self, earlier: &Totals) -> Totals {
        let mut hist = [0; HIST_BUCKETS];
        for (i, slot) in hist.iter_mut().enumerate() {
            *slot = self.hist[i].saturating_sub(earlier.hist[i]);
        }
        Totals {
            count: self.count.saturating_sub(earlier.count),
            total_ns: self.total_ns.saturating_sub(earlier.total_ns),
            max_ns: self.max_ns,
            hist,
        }
    }

    /// A duration below which about `quantile` (0..=1) of the waits fall, from the
    /// histogram: the upper bound of the bucket holding that rank.
    pub fn quantile_ns(&self, quantile: f64) -> u64 {
        let total: u64 = self.hist.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * quantile.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, n) in self.hist.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return hist_bucket_floor_ns(bucket + 1).min(self.max_ns.max(1));
            }
        }
        self.max_ns
    }
}

/// Reads of the aggregation map turned into what happened since the previous read.
#[derive(Default)]
pub struct Aggregator {
    baseline: HashMap<AggKey, Totals>,
}

impl Aggregator {
    /// Returns what `now` (a full read of the map) adds to the previous read, and
    /// makes `now` the baseline. Keys without new waits are left out.
    pub fn delta(&mut self, now: Vec<(AggKey, AggValue)>) -> Vec<(AggKey, Totals)> {
        let mut out = Vec::new();
        for (key, value) in now {
            let totals = Totals::of(&value);
            let earlier = self.baseline.get(&key).copied().unwrap_or_default();
            let new = totals.since(&earlier);
            if new.count > 0 {
                out.push((key, new));
            }
            self.baseline.insert(key, totals);
        }
        out
    }

    /// Forgets a key (removed from the kernel's map: if it comes back, it counts
    /// from zero).
    pub fn forget(&mut self, key: &AggKey) {
        self.baseline.remove(key);
    }

    /// The keys of the last read.
    pub fn keys(&self) -> impl Iterator<Item = &AggKey> {
        self.baseline.keys()
    }
}

/// Completed waits of one process in one blocking function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// The blocking function (`?` when the stack was lost).
    pub blocked_in: String,
    /// Their counters.
    pub totals: Totals,
}

/// Groups aggregated entries by (process, command, blocking function), the
/// largest total blocked time first. `blocked_in` names the blocking function of
/// a kernel stack id.
pub fn group(entries: &[(AggKey, Totals)], mut blocked_in: impl FnMut(i32) -> Option<String>) -> Vec<Group> {
    groups_of(entries.iter().map(|(key, totals)| {
        let function = blocked_in(key.kstack_id);
        (key.tgid, crate::kernel::decode::comm_string(&key.comm), function, totals)
    }))
}

/// Groups `(pid, comm, blocking function, totals)` by their first three, the
/// largest total blocked time first (`?` for an unknown function).
pub fn groups_of<'a>(
    items: impl IntoIterator<Item = (u32, String, Option<String>, &'a Totals)>,
) -> Vec<Group> {
    let mut groups: HashMap<(u32, String, String), Totals> = HashMap::new();
    for (pid, comm, function, totals) in items {
        let function = function.unwrap_or_else(|| "?".to_owned());
        groups.entry((pid, comm, function)).or_default().add(totals);
    }
    let mut groups: Vec<Group> = groups
        .into_iter()
        .map(|((pid, comm, blocked_in), totals)| Group { pid, comm, blocked_in, totals })
        .collect();
    groups.sort_by(|a, b| b.totals.total_ns.cmp(&a.totals.total_ns).then(a.pid.cmp(&b.pid)));
    groups
}

#[cfg(test)]
mod tests {
    use dstrace_common::{hist_bucket, COMM_LEN};

    use super::*;

    fn key(tgid: u32, stack: i32, comm: &str) -> AggKey {
        let mut c = [0u8; COMM_LEN];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        AggKey { tgid, kstack_id: stack, comm: c, cause_kind: 0, cause_dev: 0, cause_key: 0 }
    }

    fn value(durations_ns: &[u64]) -> AggValue {
        let mut value = AggValue { count: 0, total_ns: 0, max_ns: 0, hist: [0; HIST_BUCKETS] };
        for &d in durations_ns {
            value.count += 1;
            value.total_ns += d;
            value.max_ns = value.max_ns.max(d);
            value.hist[hist_bucket(d)] += 1;
        }
        value
    }

    #[test]
    fn deltas_between_reads() {
        let mut agg = Aggregator::default();
        let first = agg.delta(vec![(key(1, 5, "a"), value(&[1_000_000, 3_000_000]))]);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].1.count, first[0].1.total_ns), (2, 4_000_000));

        // Same counters again: nothing new.
        assert!(agg.delta(vec![(key(1, 5, "a"), value(&[1_000_000, 3_000_000]))]).is_empty());

        // One more wait of 2 s.
        let later = agg.delta(vec![(key(1, 5, "a"), value(&[1_000_000, 3_000_000, 2_000_000_000]))]);
        assert_eq!((later[0].1.count, later[0].1.total_ns), (1, 2_000_000_000));
        assert_eq!(later[0].1.hist[hist_bucket(2_000_000_000)], 1);
        assert_eq!(later[0].1.hist.iter().sum::<u64>(), 1);
    }

    #[test]
    fn groups_by_process_and_blocking_function() {
        let entries = vec![
            (key(1, 5, "df"), Totals::of(&value(&[2_000_000_000]))),
            (key(1, 6, "df"), Totals::of(&value(&[1_000_000_000]))), // other stack, same function
            (key(2, 7, "jbd2"), Totals::of(&value(&[5_000_000]))),
            (key(3, -14, "x"), Totals::of(&value(&[1_000]))),
        ];
        let groups = group(&entries, |stack| match stack {
            5 | 6 => Some("d_alloc_parallel".into()),
            7 => Some("jbd2_journal_commit_transaction".into()),
            _ => None,
        });
        assert_eq!(groups.len(), 3);
        assert_eq!((groups[0].pid, groups[0].blocked_in.as_str()), (1, "d_alloc_parallel"));
        assert_eq!((groups[0].totals.count, groups[0].totals.total_ns), (2, 3_000_000_000));
        assert_eq!(groups[0].totals.max_ns, 2_000_000_000);
        assert_eq!(groups[2].blocked_in, "?");
    }

    #[test]
    fn quantiles_from_the_histogram() {
        let totals = Totals::of(&value(&[1_000_000; 99]));
        let mut totals = {
            let mut t = totals;
            t.add(&Totals::of(&value(&[2_000_000_000])));
            t
        };
        // 99 waits of 1 ms (bucket 9: 512..1024 us) and one of 2 s.
        assert_eq!(totals.quantile_ns(0.5), 1_024_000);
        assert_eq!(totals.quantile_ns(1.0), 2_000_000_000);
        totals.hist = [0; HIST_BUCKETS];
        assert_eq!(totals.quantile_ns(0.5), 0);
    }
}
