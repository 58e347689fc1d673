//! Prometheus metrics of `dstrace daemon`, in the text exposition format.
//!
//! What a fleet dashboard needs of each host: the tasks in D now (by mount and
//! kind of kernel lock), the age of the oldest wait by mount, a histogram of
//! completed waits (by mount, lock kind and blocking function), waits started,
//! drops, and the tracer's own CPU, memory and file descriptors as the standard
//! `process_*` metrics of the Prometheus client libraries' process collector
//! (same names, types and meanings, so the dashboards and alerts written for
//! every other exporter work on it). Everything is computed when
//! Prometheus scrapes: the in-kernel aggregation is read then (no per-wait work
//! in userspace), the tasks in D are looked at then.
//!
//! Label cardinality is bounded: the lock kind is one of a fixed set; mounts get
//! a label of their own first come, first served, up to `max-mounts`, and the
//! blocking functions of each mount label likewise up to `max-functions`; the
//! rest share the label `other`. First come rather than "top N now" because a
//! counter's series must never go down: a function that left the top N would
//! take its counts out of `other`. Functions are admitted per mount because on
//! a busy host the waits on no mount at all (page faults, `mmap_lock`, RCU, block
//! I/O) take 20 slots within minutes, and the NFS or FUSE mount that hangs later
//! must still show the function its tasks wait in. So the series are at most
//! (max-mounts + 2) x 8 x (max-functions + 1) histograms.
//!
//! Label values are written as dstrace writes names everywhere else
//! ([`crate::escape::escape`]: control characters as `\xNN`, a backslash doubled),
//! then escaped as the exposition format wants (`\` and `"` preceded by `\`): a
//! hostile process or mount name can neither break the format nor reach the
//! terminal of whoever reads a scrape with curl.
//!
//! Names are those `promtool check metrics` accepts. The tasks in D were once
//! `dstrace_tasks_in_d`, which it rejects (the `d` reads as the abbreviated unit
//! "days"), and the daemon's CPU and memory `dstrace_cpu_seconds_total` and
//! `dstrace_resident_memory_bytes`; [`RENAMED`] lists the old names.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::{Display, Write as _},
};

use dstrace_common::{hist_bucket_floor_ns, Counter, HIST_BUCKETS};

use crate::{
    escape::escape, model::aggregate::Totals, resolve::procfs::Usage, resolve::symbols::blocking_function,
    sinks::recording::RowData,
};

/// The label of a wait with no mount or no lock.
pub const NONE: &str = "none";
/// The label of the mounts and functions past the bounds.
pub const OTHER: &str = "other";

/// The metric of the tasks in D now.
pub const TASKS: &str = "dstrace_uninterruptible_tasks";

/// Names of earlier versions, and the names that replace them.
pub const RENAMED: [(&str, &str); 3] = [
    ("dstrace_tasks_in_d", TASKS),
    ("dstrace_cpu_seconds_total", "process_cpu_seconds_total"),
    ("dstrace_resident_memory_bytes", "process_resident_memory_bytes"),
];

/// The mount a wait is labelled with before the label bounds apply: its mount
/// point, or [`NONE`].
pub fn mount_label(wait: &crate::model::wait::Wait) -> String {
    wait.on.mount.as_ref().map_or_else(|| NONE.to_owned(), |m| m.mount_point.to_string_lossy().into_owned())
}

/// The kernel histogram buckets whose upper bounds are the `le` of the
/// Prometheus histogram: bucket `i` holds waits of 2^i to 2^(i+1) us, so the
/// waits below 2^(i+1) us are those of buckets 0 to i. Every other power of two
/// from 64 us to about 268 s.
const LE_BUCKETS: [usize; 12] = [5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27];

/// Values that get a label of their own, first come first served, up to a bound;
/// past it, [`OTHER`].
#[derive(Debug)]
pub struct Slots {
    max: usize,
    admitted: HashSet<String>,
}

impl Slots {
    /// At most `max` values of their own.
    pub fn new(max: usize) -> Slots {
        Slots { max, admitted: HashSet::new() }
    }

    /// The label of a value: itself, or [`OTHER`] once `max` others have theirs.
    pub fn label(&mut self, value: &str) -> String {
        if self.admitted.contains(value) {
            return value.to_owned();
        }
        if self.admitted.len() < self.max && value != OTHER {
            self.admitted.insert(value.to_owned());
            return value.to_owned();
        }
        OTHER.to_owned()
    }
}

/// The labels of a histogram series.
type HistKey = (String, &'static str, String);

/// What the metrics remember between scrapes.
#[derive(Debug)]
pub struct Metrics {
    mounts: Slots,
    /// The functions admitted on each mount label, `max_functions` each.
    functions: BTreeMap<String, Slots>,
    max_functions: usize,
    /// Completed waits since start, by (mount, lock kind, function).
    histograms: BTreeMap<HistKey, Totals>,
    /// Ring buffer records that could not be decoded.
    pub bad_records: u64,
    /// Sampling (`--sample`): no hook sees a wait begin or end.
    sampling: bool,
}

/// What `--sample` cannot give, in the HELP of what it leaves empty.
const NOT_SAMPLED: &str = " Empty when sampling (--sample): no hook sees a wait begin or end.";

/// What is read afresh at each scrape.
pub struct Now<'a> {
    /// The tasks in D now (at least `min-duration`).
    pub in_d: &'a [crate::model::wait::Wait],
    /// The kernel side's counters.
    pub counters: &'a [(Counter, u64)],
    /// The daemon's own CPU, memory and file descriptors (`None`: unreadable).
    pub usage: Option<Usage>,
}

impl Metrics {
    /// Metrics with these label bounds.
    pub fn new(max_mounts: usize, max_functions: usize) -> Metrics {
        Metrics {
            mounts: Slots::new(max_mounts),
            functions: BTreeMap::new(),
            max_functions,
            histograms: BTreeMap::new(),
            bad_records: 0,
            sampling: false,
        }
    }

    /// The same, saying in the HELP of the completed waits' metrics whether they
    /// stay empty because the daemon samples.
    pub fn sampling(self, sampling: bool) -> Metrics {
        Metrics { sampling, ..self }
    }

    /// A HELP text, with what sampling leaves empty.
    fn help(&self, text: &str) -> String {
        if self.sampling {
            format!("{text}{NOT_SAMPLED}")
        } else {
            text.to_owned()
        }
    }

    /// Adds completed waits (an aggregated row, labelled) to the histogram.
    pub fn add(&mut self, row: &RowData, lock_kind: Option<&'static str>) {
        let mount = self.mounts.label(row.mount.as_deref().unwrap_or(NONE));
        let function = blocking_function(row.stack.iter().map(String::as_str)).unwrap_or("?");
        let max_functions = self.max_functions;
        let slots = self.functions.entry(mount.clone()).or_insert_with(|| Slots::new(max_functions));
        let function = slots.label(function);
        self.histograms.entry((mount, lock_kind.unwrap_or(NONE), function)).or_default().add(&row.totals);
    }

    /// The exposition text.
    pub fn render(&mut self, now: &Now<'_>) -> String {
        let mut out = Exposition::default();

        let mut in_d: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        let mut oldest: BTreeMap<String, u64> = BTreeMap::new();
        for wait in now.in_d {
            let mount = self.mounts.label(&mount_label(wait));
            let kind = wait.lock.as_ref().map_or(NONE, |lock| lock.kind);
            *in_d.entry((mount.clone(), kind)).or_default() += 1;
            let age = oldest.entry(mount).or_default();
            *age = (*age).max(wait.duration_ns);
        }
        out.family(
            TASKS,
            "gauge",
            "Tasks in uninterruptible sleep (D) for at least min-duration now, by mount and lock kind.",
        );
        for ((mount, kind), n) in &in_d {
            out.sample(TASKS, &[("mount", mount), ("lock_kind", kind)], n);
        }
        out.family("dstrace_oldest_wait_seconds", "gauge", "Age of the oldest ongoing D wait, by mount.");
        for (mount, ns) in &oldest {
            out.sample("dstrace_oldest_wait_seconds", &[("mount", mount)], seconds(*ns));
        }

        let name = "dstrace_wait_duration_seconds";
        out.family(
            name,
            "histogram",
            &self.help("Completed D waits by mount, lock kind and blocking function."),
        );
        for ((mount, kind, function), totals) in &self.histograms {
            let labels = [("mount", mount.as_str()), ("lock_kind", kind), ("function", function.as_str())];
            let mut below = 0;
            let mut next = 0;
            for bucket in LE_BUCKETS {
                while next <= bucket && next < HIST_BUCKETS {
                    below += totals.hist[next];
                    next += 1;
                }
                let le = seconds(hist_bucket_floor_ns(bucket + 1)).to_string();
                out.sample(&format!("{name}_bucket"), &with(&labels, ("le", &le)), below);
            }
            out.sample(&format!("{name}_bucket"), &with(&labels, ("le", "+Inf")), totals.count);
            out.sample(&format!("{name}_sum"), &labels, seconds(totals.total_ns));
            out.sample(&format!("{name}_count"), &labels, totals.count);
        }

        let counter =
            |wanted: Counter| now.counters.iter().find(|(c, _)| *c == wanted).map_or(0, |&(_, n)| n);
        let help = self.help("D waits the kernel side began to track.");
        out.family("dstrace_waits_started_total", "counter", &help);
        out.sample("dstrace_waits_started_total", &[], counter(Counter::WaitsStarted));
        out.family(
            "dstrace_drops_total",
            "counter",
            "Data lost, by reason (each is also in dstrace's output).",
        );
        for &(c, n) in now.counters.iter().filter(|(c, _)| c.is_drop()) {
            out.sample("dstrace_drops_total", &[("reason", c.name())], n);
        }
        out.sample("dstrace_drops_total", &[("reason", "undecodable_record")], self.bad_records);
        if let Some(usage) = &now.usage {
            process_metrics(&mut out, usage);
        }
        out.family("dstrace_build_info", "gauge", "The dstrace version running.");
        out.sample("dstrace_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
        out.0
    }
}

/// The process collector's metrics (client_golang's `NewProcessCollector`, the
/// Python and Java clients' alike), those Linux gives without reading anything
/// but the process's own `/proc` files. A value that could not be read is left
/// out, as the collector leaves it out.
fn process_metrics(out: &mut Exposition, usage: &Usage) {
    out.family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
    out.sample("process_cpu_seconds_total", &[], seconds(usage.cpu_ns));
    if let Some(open) = usage.open_fds {
        out.family("process_open_fds", "gauge", "Number of open file descriptors.");
        out.sample("process_open_fds", &[], open);
    }
    if let Some(max) = usage.max_fds {
        out.family("process_max_fds", "gauge", "Maximum number of open file descriptors.");
        out.sample("process_max_fds", &[], max as f64);
    }
    out.family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
    out.sample("process_virtual_memory_bytes", &[], usage.virtual_bytes);
    out.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    out.sample("process_resident_memory_bytes", &[], usage.rss_bytes);
    if let Some(start) = usage.start_time_seconds {
        out.family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        );
        out.sample("process_start_time_seconds", &[], start);
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn with<'a>(labels: &[(&'a str, &'a str)], more: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut all = labels.to_vec();
    all.push(more);
    all
}

/// Text in the Prometheus exposition format (version 0.0.4).
#[derive(Default)]
pub struct Exposition(pub String);

impl Exposition {
    /// The `# HELP` and `# TYPE` lines of a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"{}\"", label_value(value));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value as written in a scrape: [`escape`]d as in dstrace's other
/// outputs, then `\` and `"` escaped for the exposition format (no line feed is
/// left to escape).
pub fn label_value(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in escape(raw).chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use dstrace_common::hist_bucket;

    use super::*;

    fn row(mount: Option<&str>, function: &str, durations_ms: &[u64]) -> RowData {
        let mut totals = Totals::default();
        for &ms in durations_ms {
            totals.record(ms * 1_000_000);
        }
        RowData {
            pid: 1,
            comm: "x".into(),
            stack: ["__schedule".to_owned(), function.to_owned()].into(),
            mount: mount.map(str::to_owned),
            lock: None,
            totals,
        }
    }

    #[test]
    fn label_values_cannot_break_the_format_or_a_terminal() {
        assert_eq!(label_value("/mnt/plain"), "/mnt/plain");
        // " is escaped; \ is doubled by escape() and each half again; control
        // characters (the line feed among them) become \xNN.
        assert_eq!(label_value("a\"b\\c\n\x1b[1m"), r#"a\"b\\\\c\\x0a\\x1b[1m"#);
        let mut out = Exposition::default();
        out.sample("m", &[("mount", "dst;at \n\x1b[1m\"")], 1);
        assert_eq!(out.0, "m{mount=\"dst;at \\\\x0a\\\\x1b[1m\\\"\"} 1\n");
        assert_eq!(out.0.lines().count(), 1);
    }

    #[test]
    fn slots_are_first_come_and_bounded() {
        let mut slots = Slots::new(2);
        assert_eq!(slots.label("a"), "a");
        assert_eq!(slots.label("b"), "b");
        assert_eq!(slots.label("c"), OTHER);
        assert_eq!(slots.label("a"), "a");
        assert_eq!(slots.label(OTHER), OTHER);
    }

    #[test]
    fn histogram_is_cumulative_with_sum_and_count() {
        let mut metrics = Metrics::new(8, 8);
        metrics.add(&row(Some("/mnt/nfs"), "d_alloc_parallel", &[1, 3000]), Some("dentry-lookup"));
        metrics.add(&row(Some("/mnt/nfs"), "d_alloc_parallel", &[2]), Some("dentry-lookup"));
        let text = metrics.render(&Now { in_d: &[], counters: &[], usage: None });
        let labels = r#"mount="/mnt/nfs",lock_kind="dentry-lookup",function="d_alloc_parallel""#;
        assert!(text.contains(&format!("dstrace_wait_duration_seconds_count{{{labels}}} 3\n")), "{text}");
        assert!(text.contains(&format!("dstrace_wait_duration_seconds_sum{{{labels}}} 3.003\n")), "{text}");
        // 1 ms and 2 ms are below 4.096 ms; 3 s is not below 1.048576 s.
        assert_eq!(hist_bucket(2_000_000), 10);
        assert!(text.contains(&format!("_bucket{{{labels},le=\"0.001024\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("_bucket{{{labels},le=\"0.004096\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("_bucket{{{labels},le=\"1.048576\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("_bucket{{{labels},le=\"4.194304\"}} 3\n")), "{text}");
        assert!(text.contains(&format!("_bucket{{{labels},le=\"+Inf\"}} 3\n")), "{text}");
        assert!(text.contains("# TYPE dstrace_wait_duration_seconds histogram\n"));
    }

    #[test]
    fn functions_past_the_bound_are_other() {
        let mut metrics = Metrics::new(8, 1);
        metrics.add(&row(None, "f1", &[1]), None);
        metrics.add(&row(None, "f2", &[1]), None);
        metrics.add(&row(None, "f3", &[1]), None);
        let text = metrics.render(&Now { in_d: &[], counters: &[], usage: None });
        let count = |function: &str| {
            let series = format!(
                "dstrace_wait_duration_seconds_count{{mount=\"none\",lock_kind=\"none\",function=\"{function}\"}} "
            );
            text.lines().find_map(|line| line.strip_prefix(&series)).map(str::to_owned)
        };
        assert_eq!(count("f1").as_deref(), Some("1"));
        assert_eq!(count(OTHER).as_deref(), Some("2"));
        assert_eq!(count("f2"), None);
    }

    /// The waits on no mount, many on a busy host, do not take the slots of a
    /// mount whose tasks hang later.
    #[test]
    fn each_mount_has_its_own_function_slots() {
        let mut metrics = Metrics::new(8, 2);
        for function in ["f1", "f2", "f3"] {
            metrics.add(&row(None, function, &[1]), None);
        }
        metrics.add(&row(Some("/mnt/nfs"), "rpc_wait_bit_killable", &[1]), None);
        let text = metrics.render(&Now { in_d: &[], counters: &[], usage: None });
        let series = r#"dstrace_wait_duration_seconds_count{mount="/mnt/nfs",lock_kind="none",function="rpc_wait_bit_killable"} 1"#;
        assert!(text.lines().any(|line| line == series), "{text}");
        assert!(text.contains(r#"{mount="none",lock_kind="none",function="other"} 1"#), "{text}");
    }

    /// The names promtool accepts, the old ones gone, and the process
    /// collector's metrics with its types.
    #[test]
    fn names_are_the_standard_ones_and_the_old_ones_are_gone() {
        let mut metrics = Metrics::new(8, 8);
        let fuse = "92 22 0:55 / /mnt/x rw - fuse.sshfs sshfs rw\n";
        use crate::model::wait::fake::ongoing;
        let waits =
            [ongoing(1, fuse, 3_000_000_000), ongoing(2, fuse, 2_000_000_000), ongoing(3, "", 5_000_000_000)];
        let usage = Usage {
            cpu_ns: 1_500_000_000,
            rss_bytes: 4096,
            virtual_bytes: 8192,
            start_time_seconds: Some(1_764_640_000.5),
            open_fds: Some(12),
            max_fds: Some(1024),
        };
        let text = metrics.render(&Now { in_d: &waits, counters: &[], usage: Some(usage) });
        for line in [
            "# TYPE dstrace_uninterruptible_tasks gauge",
            r#"dstrace_uninterruptible_tasks{mount="/mnt/x",lock_kind="none"} 2"#,
            r#"dstrace_uninterruptible_tasks{mount="none",lock_kind="none"} 1"#,
            r#"dstrace_oldest_wait_seconds{mount="/mnt/x"} 3"#,
            "# TYPE process_cpu_seconds_total counter",
            "process_cpu_seconds_total 1.5",
            "# TYPE process_resident_memory_bytes gauge",
            "process_resident_memory_bytes 4096",
            "# TYPE process_virtual_memory_bytes gauge",
            "process_virtual_memory_bytes 8192",
            "# TYPE process_start_time_seconds gauge",
            "process_start_time_seconds 1764640000.5",
            "# TYPE process_open_fds gauge",
            "process_open_fds 12",
            "# TYPE process_max_fds gauge",
            "process_max_fds 1024",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        for (old, new) in RENAMED {
            assert!(!text.contains(old), "{old} is still there:\n{text}");
            assert!(text.contains(&format!("# TYPE {new} ")), "{new} is not there:\n{text}");
        }
        // What could not be read is left out, not given as 0.
        let text = metrics.render(&Now { in_d: &[], counters: &[], usage: Some(Usage::default()) });
        assert!(text.contains("process_cpu_seconds_total 0\n"));
        assert!(!text.contains("process_open_fds") && !text.contains("process_start_time_seconds"));
    }
}
