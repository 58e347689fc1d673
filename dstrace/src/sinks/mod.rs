//! Where the waits go: a [`Sink`] per line format (plain text for people, JSON
//! lines for scripts), the full-screen view, recordings and the reports drawn from
//! them, pprof profiles, Prometheus metrics and their endpoint, Pyroscope pushes.
//!
//! Every sink is handed the same things ([`Summary`], [`Snapshot`], [`Update`],
//! waits from [`crate::model`]) and decides only how they look. Names from the
//! kernel (commands, paths, symbols) are any bytes: text sinks escape them
//! ([`crate::escape`]), JSON escapes as JSON does.
//!
//! * [`text`], [`json`] (schema version 1 and every wire type), [`tree`] (the
//!   waits in words: tree rows, chains, drops), [`crate::escape`];
//! * [`tui`]: the full-screen view of `dstrace run`;
//! * [`recording`]: the recording file and the recorder that writes it;
//! * [`report`] and [`pprof`]: recordings as folded stacks, SVG, pprof, JSON;
//! * [`metrics`], [`endpoint`], [`pyroscope`]: what `dstrace daemon` serves and
//!   pushes; [`journal`]: the lines it writes when a mount's tasks stay in D.

pub mod endpoint;
pub mod journal;
pub mod json;
pub mod metrics;
pub mod pprof;
pub mod pyroscope;
pub mod recording;
pub mod report;
pub mod text;
pub mod tree;
pub mod tui;

use std::{io, time::SystemTime};

use dstrace_common::Counter;

use crate::model::{aggregate::Group, board::BoardGroup, wait::Wait};

/// What a run saw, printed at its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Waits printed.
    pub shown: u64,
    /// The threshold for printing, in nanoseconds.
    pub min_duration_ns: u64,
    /// Kernel-side counters, in [`Counter::ALL`] order.
    pub counters: Vec<(Counter, u64)>,
    /// Records userspace could not decode.
    pub bad_records: u64,
    /// Every completed wait (of any length) by process and blocking function,
    /// largest total first (the in-kernel aggregation).
    pub by_process: Vec<Group>,
    /// Waits still going on at the end.
    pub ongoing: Vec<Wait>,
    /// Waits (shown and ongoing) by mount, lock and function ([`crate::model::board`]).
    pub groups: Vec<BoardGroup>,
    /// What to do about the waits still going on ([`crate::model::advice`]).
    pub advice: Vec<String>,
}

impl Summary {
    /// The value of one kernel-side counter.
    pub fn counter(&self, which: Counter) -> u64 {
        self.counters.iter().find(|&&(counter, _)| counter == which).map_or(0, |&(_, n)| n)
    }
}

/// One look at the tasks in D now (`dstrace snapshot`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// When it was taken.
    pub time: SystemTime,
    /// The tasks in D, the longest first.
    pub waits: Vec<Wait>,
    /// The same, by mount, lock and function.
    pub groups: Vec<BoardGroup>,
    /// What it could not see, one sentence each.
    pub cannot_see: Vec<String>,
    /// Where the tasks were read: `iterator` (kernel memory) or `proc`.
    pub source: &'static str,
    /// What to do about them ([`crate::model::advice`]).
    pub advice: Vec<String>,
}

/// A periodic update of `dstrace run` ([`Sink::update`]).
pub struct Update<'a> {
    /// When.
    pub time: SystemTime,
    /// The length of the interval, in seconds.
    pub seconds: f64,
    /// The tasks in D now.
    pub ongoing: &'a [Wait],
    /// The groups, with those tasks.
    pub groups: &'a [BoardGroup],
    /// The completed waits of the interval by process and function.
    pub by_process: &'a [Group],
    /// What to do about the tasks in D.
    pub advice: &'a [String],
}

/// What tracing is, once it is live ([`Sink::start`]).
pub struct Start<'a> {
    /// The `sched_switch` program variant attached.
    pub program: &'a str,
    /// Waits at least this long are shown, in nanoseconds.
    pub min_duration_ns: u64,
    /// What this kernel cannot record, one sentence each.
    pub skipped: &'a [String],
}

/// A sink of lines: what `dstrace run` and `dstrace snapshot` print when they do
/// not take over the terminal.
pub trait Sink {
    /// The first output once tracing is live: the column header for text, a
    /// `start` record for JSON (with what this kernel cannot record).
    fn start(&mut self, start: &Start<'_>) -> io::Result<()>;

    /// A titled list of ongoing waits (text), or one record each (JSON); nothing
    /// when there are none.
    fn ongoing(&mut self, title: &str, waits: &[Wait]) -> io::Result<()>;

    /// One wait, completed or still going on. Not flushed: a batch of waits is
    /// written at once by [`Sink::flush`].
    fn wait(&mut self, wait: &Wait) -> io::Result<()>;

    /// Writes out what is buffered (after a batch of [`Sink::wait`]s).
    fn flush(&mut self) -> io::Result<()>;

    /// A periodic update (`--interval`): the tasks in D now and the groups, the
    /// completed waits of the interval by process and function, and the advice.
    fn update(&mut self, update: &Update<'_>) -> io::Result<()>;

    /// The end-of-run summary.
    fn summary(&mut self, summary: &Summary) -> io::Result<()>;

    /// One look at the tasks in D (`dstrace snapshot`).
    fn snapshot(&mut self, snapshot: &Snapshot) -> io::Result<()>;
}

/// The line formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns ([`text::TextSink`]); with `stacks`, the kernel stacks
    /// under each wait.
    Text {
        /// Print whole stacks.
        stacks: bool,
    },
    /// One JSON object per line ([`json::JsonSink`]).
    Json,
}

/// The sink of `format`, writing to `out`.
pub fn lines<'a>(out: impl io::Write + 'a, format: Format) -> Box<dyn Sink + 'a> {
    match format {
        Format::Text { stacks } => Box::new(text::TextSink::new(out, stacks)),
        Format::Json => Box::new(json::JsonSink::new(out)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::{
        escape::escape,
        model::wait::{Source, TaskState, WakerInfo},
        resolve::attribution::Attribution,
        sinks::text::summary_line,
    };

    fn wait(comm: &str) -> Wait {
        Wait {
            start: Some(UNIX_EPOCH + Duration::from_secs(100)),
            end: Some(UNIX_EPOCH + Duration::from_secs(102)),
            duration_ns: 2_000_000_000,
            tid: 11,
            pid: 10,
            comm: comm.to_owned(),
            cgroup_id: 1234,
            cgroup: None,
            state: TaskState::Killable,
            blocked_in: Some("d_alloc_parallel".to_owned()),
            stack: ["__schedule", "d_alloc_parallel"].map(String::from).into(),
            user_stack: [].into(),
            waker: Some(WakerInfo {
                tid: 9,
                pid: 9,
                comm: "fuse-server".into(),
                interrupt: false,
                stack: ["try_to_wake_up", "fuse_dev_write"].map(String::from).into(),
            }),
            on: Attribution {
                syscall: Some("statx"),
                mount: crate::resolve::mounts::parse(
                    "92 22 0:55 / /tmp/fuse rw - fuse.dstrace-test dstrace-test rw\n",
                )
                .pop(),
                file: Some(crate::resolve::attribution::FileRef {
                    path: Some("/tmp/fuse/missing".into()),
                    inode: None,
                }),
                file_locks: Vec::new(),
            },
            lock: None,
            chain: Vec::new(),
            source: Source::Traced,
        }
    }

    fn summary() -> Summary {
        Summary {
            shown: 3,
            min_duration_ns: 1_000_000,
            counters: Counter::ALL.iter().map(|&c| (c, 0)).collect(),
            bad_records: 0,
            by_process: Vec::new(),
            ongoing: Vec::new(),
            groups: Vec::new(),
            advice: Vec::new(),
        }
    }

    fn printed(format: Format, f: impl FnOnce(&mut dyn Sink)) -> String {
        let mut out = Vec::new();
        f(&mut *lines(&mut out, format));
        String::from_utf8(out).unwrap()
    }

    /// A cgroup id the record does not know (a task seen in `/proc`) is `null`,
    /// not the 0 no cgroup has.
    #[test]
    fn json_cgroup_id_unknown_is_null() {
        assert_eq!(json::json_wait(&wait("stat"))["cgroup_id"], 1234);
        let unknown = Wait { cgroup_id: 0, source: Source::Proc, ..wait("stat") };
        assert_eq!(json::json_wait(&unknown)["cgroup_id"], serde_json::Value::Null);
    }

    #[test]
    fn text_line_has_every_column() {
        let text = printed(Format::Text { stacks: true }, |p| p.wait(&wait("stat")).unwrap());
        let first = text.lines().next().unwrap();
        assert!(first.contains("10/11") && first.contains("stat") && first.contains("D+killable"), "{first}");
        assert!(first.contains("2.000s  d_alloc_parallel"), "{first}");
        assert!(first.contains("fuse-server[9]"), "{first}");
        assert!(first.ends_with("fuse.dstrace-test /tmp/fuse: /tmp/fuse/missing (statx)"), "{first}");
        assert_eq!(text.lines().nth(1), Some("    __schedule"));
        assert!(text.contains("    -- woken by fuse-server[9]\n    try_to_wake_up\n"), "{text}");
    }

    #[test]
    fn text_escapes_terminal_sequences() {
        let text = printed(Format::Text { stacks: false }, |p| p.wait(&wait("\x1b[2Jevil\n")).unwrap());
        assert!(!text.contains('\x1b'));
        assert!(text.contains("\\x1b[2Jevil\\x0a"), "{text}");
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn text_escapes_bidirectional_overrides() {
        // "evil\u{202e}fdp.exe" would show as "evilexe.pdf".
        let text =
            printed(Format::Text { stacks: false }, |p| p.wait(&wait("evil\u{202e}fdp\u{200b}")).unwrap());
        assert!(!text.contains('\u{202e}') && !text.contains('\u{200b}'), "{text}");
        assert!(text.contains("evil\\u{202e}fdp\\u{200b}"), "{text}");
        assert_eq!(escape("é ü ß"), "é ü ß", "other non-ASCII text is left as it is");
    }

    #[test]
    fn json_lines_parse_back() {
        let text = printed(Format::Json, |p| p.wait(&wait("a\"b\n")).unwrap());
        assert_eq!(text.lines().count(), 1);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["comm"], "a\"b\n");
        assert_eq!(value["blocked_ms"], 2000.0);
        assert_eq!(value["function"], "d_alloc_parallel");
        assert_eq!((value["tid"].as_u64(), value["tgid"].as_u64()), (Some(11), Some(10)));
        assert_eq!(value["start"], "1970-01-01T00:01:40.000000Z");
        assert_eq!(value["stack"][1], "d_alloc_parallel");
        assert_eq!(value["type"], "wait");
        assert_eq!(value["waker"]["comm"], "fuse-server");
        assert_eq!(value["cgroup_id"], 1234);
        assert!(value.get("user_stack").is_none(), "empty user stacks are left out");
        assert_eq!(value["mount"]["mountpoint"], "/tmp/fuse");
        assert_eq!(value["mount"]["fstype"], "fuse.dstrace-test");
        assert_eq!(value["mount"]["dev"], "0:55");
        assert_eq!(value["file"]["path"], "/tmp/fuse/missing");
        assert_eq!(value["syscall"], "statx");
    }

    /// A mount whose only wait is still going on: the table by mount does not say
    /// it was blocked 0us. Its blocked-time columns are those of the waits that
    /// ended (none here), labelled so; its oldest wait is there as an age so far.
    #[test]
    fn the_table_by_mount_says_its_blocked_time_is_of_ended_waits() {
        let mut ongoing = wait("dd");
        ongoing.end = None;
        ongoing.duration_ns = 86_000_000_000;
        let groups = crate::model::board::Board::default()
            .groups(std::slice::from_ref(&ongoing), crate::model::board::SortBy::InD);
        let text =
            printed(Format::Text { stacks: false }, |p| p.summary(&Summary { groups, ..summary() }).unwrap());
        let table = text.split("Waits by mount").nth(1).unwrap();
        let header = table.lines().nth(1).unwrap();
        assert!(header.contains("DONE TIME") && header.contains("DONE MAX"), "{text}");
        let row = table.lines().find(|line| line.contains("/tmp/fuse")).unwrap();
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[1..5], ["1", "1m26s+", "0", "0us"], "{text}");
    }

    #[test]
    fn ongoing_waits_say_so() {
        let mut ongoing = wait("df");
        ongoing.end = None;
        let text = printed(Format::Text { stacks: false }, |p| p.wait(&ongoing).unwrap());
        assert!(text.contains("2.000s+"), "{text}");
        ongoing.source = Source::Proc;
        let text = printed(Format::Text { stacks: false }, |p| p.wait(&ongoing).unwrap());
        assert!(text.contains(">=2.000s"), "{text}");
        let json = printed(Format::Json, |p| p.wait(&ongoing).unwrap());
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!((value["type"].as_str(), value["end"].as_str()), (Some("ongoing"), None));
        assert_eq!(value["source"], "proc");
    }

    #[test]
    fn summary_shows_drops() {
        let mut summary = summary();
        assert!(summary_line(&summary).ends_with("drops: none"));
        summary.counters[Counter::DropRingFull as usize].1 = 5;
        assert!(summary_line(&summary).ends_with("drops: ring_buffer_full=5"), "{}", summary_line(&summary));
        let json = printed(Format::Json, |p| p.summary(&summary).unwrap());
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["counters"]["ring_buffer_full"], 5);
    }
}
