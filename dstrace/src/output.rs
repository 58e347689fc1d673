//! The sinks of `dstrace run`: aligned text lines for people, JSON lines for scripts.
//!
//! Process names and symbols are bytes the kernel got from elsewhere: text output
//! escapes control characters (no terminal escape sequence gets through), JSON
//! output escapes as JSON does.

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use dstrace_common::Counter;
use serde::Serialize;

use crate::{
    clock::{human_duration, local_time_of_day, rfc3339_utc},
    record::Wait,
};

/// How waits are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns; with `stacks`, the kernel stack under each wait.
    Text {
        /// Print whole stacks.
        stacks: bool,
    },
    /// One JSON object per line.
    Json,
}

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
}

impl Summary {
    /// The drop counters that are not zero.
    pub fn drops(&self) -> Vec<(Counter, u64)> {
        self.counters.iter().copied().filter(|&(counter, n)| counter.is_drop() && n > 0).collect()
    }

    fn counter(&self, which: Counter) -> u64 {
        self.counters.iter().find(|&&(counter, _)| counter == which).map_or(0, |&(_, n)| n)
    }
}

/// Writes waits and the summary in one [`Format`].
pub struct Printer<W: Write> {
    out: W,
    format: Format,
}

impl<W: Write> Printer<W> {
    /// A printer writing to `out`.
    pub fn new(out: W, format: Format) -> Self {
        Printer { out, format }
    }

    /// The first output once tracing is live: the column header for text, a
    /// `start` record for JSON.
    pub fn header(&mut self, program: &str, min_duration_ns: u64) -> io::Result<()> {
        match self.format {
            Format::Text { .. } => writeln!(
                self.out,
                "{:<15}  {:<15}  {:<16}  {:<10}  {:>9}  BLOCKED IN",
                "TIME", "PID/TID", "COMM", "STATE", "DURATION"
            )?,
            Format::Json => {
                let record = serde_json::json!({
                    "type": "start",
                    "program": program,
                    "min_duration_ns": min_duration_ns,
                });
                serde_json::to_writer(&mut self.out, &record)?;
                writeln!(self.out)?;
            }
        }
        self.out.flush()
    }

    /// One completed wait.
    pub fn wait(&mut self, wait: &Wait) -> io::Result<()> {
        match self.format {
            Format::Text { stacks } => {
                let blocked_in = wait.blocked_in.as_deref().unwrap_or("?");
                writeln!(
                    self.out,
                    "{:<15}  {:<15}  {:<16}  {:<10}  {:>9}  {}",
                    local_time_of_day(wait.end),
                    format!("{}/{}", wait.pid, wait.tid),
                    escape(&wait.comm),
                    wait.state.name(),
                    human_duration(wait.duration_ns),
                    escape(blocked_in)
                )?;
                if stacks {
                    for frame in wait.stack.iter() {
                        writeln!(self.out, "    {}", escape(frame))?;
                    }
                    if wait.stack.is_empty() {
                        writeln!(self.out, "    (stack lost)")?;
                    }
                }
            }
            Format::Json => {
                let record = JsonWait {
                    r#type: "wait",
                    start: rfc3339_utc(wait.start),
                    end: rfc3339_utc(wait.end),
                    duration_ns: wait.duration_ns,
                    pid: wait.pid,
                    tid: wait.tid,
                    comm: &wait.comm,
                    state: wait.state.name(),
                    blocked_in: wait.blocked_in.as_deref(),
                    stack: &wait.stack,
                };
                serde_json::to_writer(&mut self.out, &record)?;
                writeln!(self.out)?;
            }
        }
        self.out.flush()
    }

    /// The end-of-run summary.
    pub fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        match self.format {
            Format::Text { .. } => writeln!(self.out, "{}", summary_line(summary))?,
            Format::Json => {
                let counters: serde_json::Map<String, serde_json::Value> = summary
                    .counters
                    .iter()
                    .map(|&(counter, n)| (counter.name().to_owned(), n.into()))
                    .collect();
                let record = serde_json::json!({
                    "type": "summary",
                    "shown": summary.shown,
                    "min_duration_ns": summary.min_duration_ns,
                    "counters": counters,
                    "bad_records": summary.bad_records,
                });
                serde_json::to_writer(&mut self.out, &record)?;
                writeln!(self.out)?;
            }
        }
        self.out.flush()
    }
}

#[derive(Serialize)]
struct JsonWait<'a> {
    r#type: &'static str,
    start: String,
    end: String,
    duration_ns: u64,
    pid: u32,
    tid: u32,
    comm: &'a str,
    state: &'static str,
    blocked_in: Option<&'a str>,
    stack: &'a [String],
}

/// The summary as one line of text.
pub fn summary_line(summary: &Summary) -> String {
    let mut line = format!(
        "dstrace: {} waits of at least {} shown; {} D waits ended in all",
        summary.shown,
        human_duration(summary.min_duration_ns),
        summary.counter(Counter::WaitsEnded)
    );
    line.push_str(&drops_text(summary));
    line
}

/// `; drops: none`, or the drops by kind.
pub fn drops_text(summary: &Summary) -> String {
    let drops = summary.drops();
    if drops.is_empty() && summary.bad_records == 0 {
        return "; drops: none".to_owned();
    }
    let mut text = "; drops:".to_owned();
    for (counter, n) in drops {
        let _ = write!(text, " {}={n}", counter.name());
    }
    if summary.bad_records > 0 {
        let _ = write!(text, " undecodable_records={}", summary.bad_records);
    }
    text
}

/// Text safe for a terminal: control characters and backslashes escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::record::TaskState;

    fn wait(comm: &str) -> Wait {
        Wait {
            start: UNIX_EPOCH + Duration::from_secs(100),
            end: UNIX_EPOCH + Duration::from_secs(102),
            duration_ns: 2_000_000_000,
            tid: 11,
            pid: 10,
            comm: comm.to_owned(),
            state: TaskState::Killable,
            blocked_in: Some("d_alloc_parallel".to_owned()),
            stack: ["__schedule", "d_alloc_parallel"].map(String::from).into(),
        }
    }

    fn printed(format: Format, f: impl FnOnce(&mut Printer<&mut Vec<u8>>)) -> String {
        let mut out = Vec::new();
        f(&mut Printer::new(&mut out, format));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_line_has_every_column() {
        let text = printed(Format::Text { stacks: true }, |p| p.wait(&wait("stat")).unwrap());
        let first = text.lines().next().unwrap();
        assert!(first.contains("10/11") && first.contains("stat") && first.contains("D+killable"), "{first}");
        assert!(first.ends_with("2.000s  d_alloc_parallel"), "{first}");
        assert_eq!(text.lines().nth(1), Some("    __schedule"));
    }

    #[test]
    fn text_escapes_terminal_sequences() {
        let text = printed(Format::Text { stacks: false }, |p| p.wait(&wait("\x1b[2Jevil\n")).unwrap());
        assert!(!text.contains('\x1b'));
        assert!(text.contains("\\x1b[2Jevil\\x0a"), "{text}");
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn json_lines_parse_back() {
        let text = printed(Format::Json, |p| p.wait(&wait("a\"b\n")).unwrap());
        assert_eq!(text.lines().count(), 1);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["comm"], "a\"b\n");
        assert_eq!(value["duration_ns"], 2_000_000_000u64);
        assert_eq!(value["blocked_in"], "d_alloc_parallel");
        assert_eq!(value["start"], "1970-01-01T00:01:40.000000Z");
        assert_eq!(value["stack"][1], "d_alloc_parallel");
    }

    #[test]
    fn summary_shows_drops() {
        let mut summary = Summary {
            shown: 3,
            min_duration_ns: 1_000_000,
            counters: Counter::ALL.iter().map(|&c| (c, 0)).collect(),
            bad_records: 0,
        };
        assert!(summary_line(&summary).ends_with("drops: none"));
        summary.counters[Counter::DropRingFull as usize].1 = 5;
        assert!(summary_line(&summary).ends_with("drops: ring_buffer_full=5"), "{}", summary_line(&summary));
        let json = printed(Format::Json, |p| p.summary(&summary).unwrap());
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["counters"]["ring_buffer_full"], 5);
    }
}
