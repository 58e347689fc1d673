//! The sinks of `dstrace run`: aligned text lines for people, JSON lines for scripts.
//!
//! Process names and symbols are bytes the kernel got from elsewhere: text output
//! escapes control characters (no terminal escape sequence gets through), JSON
//! output escapes as JSON does.

use std::{
    fmt::Write as _,
    io::{self, Write},
    time::SystemTime,
};

use dstrace_common::Counter;
use serde::Serialize;

use crate::{
    aggregate::{CauseGroup, Group},
    attribution::Attribution,
    chain::{self, Link},
    clock::{human_duration, local_time_of_day, rfc3339_utc},
    record::LockInfo,
    record::{Source, Wait, WakerInfo},
};

/// How many groups the text summary lists.
const TEXT_GROUPS: usize = 20;

/// How waits are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns; with `stacks`, the kernel stacks under each wait.
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
    /// Every completed wait (of any length), grouped, largest total first.
    pub groups: Vec<Group>,
    /// Waits still going on at the end.
    pub ongoing: Vec<Wait>,
    /// Waits (streamed and ongoing) by mount.
    pub by_mount: Vec<CauseGroup>,
    /// Waits (streamed and ongoing) by kernel lock.
    pub by_lock: Vec<CauseGroup>,
    /// What to do about the waits still going on ([`crate::advice`]).
    pub advice: Vec<String>,
}

impl Summary {
    fn counter(&self, which: Counter) -> u64 {
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
    /// The same, by mount.
    pub by_mount: Vec<CauseGroup>,
    /// What it could not see, one sentence each.
    pub cannot_see: Vec<String>,
    /// What to do about them ([`crate::advice`]).
    pub advice: Vec<String>,
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
    /// `start` record for JSON (with what this kernel cannot record).
    pub fn header(&mut self, program: &str, min_duration_ns: u64, skipped: &[String]) -> io::Result<()> {
        match self.format {
            // Text: run prints what is skipped on standard error, as notes.
            Format::Text { .. } => self.column_header()?,
            Format::Json => {
                let record = serde_json::json!({
                    "type": "start",
                    "program": program,
                    "min_duration_ns": min_duration_ns,
                    "skipped": skipped,
                });
                serde_json::to_writer(&mut self.out, &record)?;
                writeln!(self.out)?;
            }
        }
        self.out.flush()
    }

    fn column_header(&mut self) -> io::Result<()> {
        writeln!(
            self.out,
            "{:<15}  {:<15}  {:<16}  {:<10}  {:>9}  {:<28}  {:<20}  ON",
            "TIME", "PID/TID", "COMM", "STATE", "DURATION", "BLOCKED IN", "WOKEN BY"
        )
    }

    /// A titled list of ongoing waits (text), or one record each (JSON).
    pub fn ongoing(&mut self, title: &str, waits: &[Wait]) -> io::Result<()> {
        if waits.is_empty() {
            return Ok(());
        }
        if let Format::Text { .. } = self.format {
            writeln!(self.out, "{title}")?;
        }
        for wait in waits {
            self.wait(wait)?;
        }
        if let Format::Text { .. } = self.format {
            writeln!(self.out)?;
        }
        self.out.flush()
    }

    /// One wait: completed, or still going on.
    pub fn wait(&mut self, wait: &Wait) -> io::Result<()> {
        match self.format {
            Format::Text { stacks } => self.text_wait(wait, stacks)?,
            Format::Json => {
                serde_json::to_writer(&mut self.out, &JsonWait::of(wait))?;
                writeln!(self.out)?;
            }
        }
        self.out.flush()
    }

    fn text_wait(&mut self, wait: &Wait, stacks: bool) -> io::Result<()> {
        // Completed: when it ended, and how long it lasted. Ongoing: since when,
        // and for how long so far (`+`: still growing; `>=`: a lower bound from /proc).
        let time = if wait.is_ongoing() { wait.start } else { wait.end };
        let time = time.map_or_else(|| "-".to_owned(), local_time_of_day);
        let duration = match (wait.is_ongoing(), wait.source) {
            (false, _) => human_duration(wait.duration_ns),
            (true, Source::Traced) => format!("{}+", human_duration(wait.duration_ns)),
            (true, Source::Proc) if wait.start.is_none() => "?".to_owned(),
            (true, Source::Proc) => format!(">={}", human_duration(wait.duration_ns)),
        };
        let waker = wait.waker.as_ref().map_or_else(|| "-".to_owned(), waker_name);
        writeln!(
            self.out,
            "{:<15}  {:<15}  {:<16}  {:<10}  {:>9}  {:<28}  {:<20}  {}",
            time,
            format!("{}/{}", wait.pid, wait.tid),
            escape(&wait.comm),
            wait.state.name(),
            duration,
            escape(wait.blocked_in.as_deref().unwrap_or("?")),
            escape(&waker),
            escape(&on_text(&wait.on, wait.lock.as_ref())),
        )?;
        if stacks {
            self.text_stack(&wait.stack)?;
            if !wait.user_stack.is_empty() {
                writeln!(self.out, "    -- user stack")?;
                self.text_stack(&wait.user_stack)?;
            }
            if let Some(waker) = &wait.waker {
                writeln!(self.out, "    -- woken by {}", escape(&waker_name(waker)))?;
                self.text_stack(&waker.stack)?;
            }
        }
        if wait.chain.len() > 1 {
            writeln!(self.out, "    chain: {}", escape(&chain::text(&wait.chain)))?;
        }
        Ok(())
    }

    fn text_stack(&mut self, stack: &[String]) -> io::Result<()> {
        if stack.is_empty() {
            return writeln!(self.out, "    (stack lost)");
        }
        for frame in stack {
            writeln!(self.out, "    {}", escape(frame))?;
        }
        Ok(())
    }

    /// Completed waits of the last interval, grouped (`--interval`).
    pub fn interval(&mut self, end: SystemTime, seconds: f64, groups: &[Group]) -> io::Result<()> {
        match self.format {
            Format::Text { .. } => {
                writeln!(
                    self.out,
                    "-- {} blocked time in the last {seconds:.1}s, by process and function:",
                    local_time_of_day(end)
                )?;
                if groups.is_empty() {
                    writeln!(self.out, "  (no D wait ended)")?;
                } else {
                    self.groups_table(groups)?;
                }
            }
            Format::Json => {
                let record = serde_json::json!({
                    "type": "interval",
                    "end": rfc3339_utc(end),
                    "seconds": seconds,
                    "groups": json_groups(groups),
                });
                serde_json::to_writer(&mut self.out, &record)?;
                writeln!(self.out)?;
            }
        }
        self.out.flush()
    }

    fn advice(&mut self, advice: &[String]) -> io::Result<()> {
        if advice.is_empty() {
            return Ok(());
        }
        writeln!(self.out)?;
        writeln!(self.out, "Advice:")?;
        for line in advice {
            writeln!(self.out, "  * {}", escape(line))?;
        }
        Ok(())
    }

    fn cause_table(&mut self, title: &str, what: &str, groups: &[CauseGroup]) -> io::Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        writeln!(self.out)?;
        writeln!(self.out, "{title} (waits shown and waits still in D):")?;
        writeln!(
            self.out,
            "  {:<40}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}  WHAT / HELD BY",
            what, "IN D NOW", "OLDEST", "DONE", "TOTAL", "MAX"
        )?;
        for group in groups.iter().take(TEXT_GROUPS) {
            writeln!(
                self.out,
                "  {:<40}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}  {}",
                escape(&group.key),
                group.ongoing,
                human_duration(group.oldest_ns),
                group.completed.count,
                human_duration(group.completed.total_ns),
                human_duration(group.completed.max_ns),
                escape(&group.detail),
            )?;
        }
        Ok(())
    }

    fn groups_table(&mut self, groups: &[Group]) -> io::Result<()> {
        writeln!(
            self.out,
            "  {:<8} {:<16}  {:<28}  {:>8}  {:>9}  {:>9}  {:>9}",
            "PID", "COMM", "BLOCKED IN", "COUNT", "TOTAL", "MAX", "P99<="
        )?;
        for group in groups.iter().take(TEXT_GROUPS) {
            writeln!(
                self.out,
                "  {:<8} {:<16}  {:<28}  {:>8}  {:>9}  {:>9}  {:>9}",
                group.pid,
                escape(&group.comm),
                escape(&group.blocked_in),
                group.totals.count,
                human_duration(group.totals.total_ns),
                human_duration(group.totals.max_ns),
                human_duration(group.totals.quantile_ns(0.99)),
            )?;
        }
        if groups.len() > TEXT_GROUPS {
            writeln!(self.out, "  ... {} more (--json lists all)", groups.len() - TEXT_GROUPS)?;
        }
        Ok(())
    }

    /// A snapshot: text, or one JSON document.
    pub fn snapshot(&mut self, snapshot: &Snapshot) -> io::Result<()> {
        match self.format {
            Format::Text { .. } => {
                writeln!(
                    self.out,
                    "{} tasks in D at {} (from /proc; the ages are lower bounds)",
                    snapshot.waits.len(),
                    local_time_of_day(snapshot.time)
                )?;
                if !snapshot.waits.is_empty() {
                    self.column_header()?;
                    for wait in &snapshot.waits {
                        self.wait(wait)?;
                    }
                }
                self.cause_table("Tasks in D by mount", "MOUNT", &snapshot.by_mount)?;
                self.advice(&snapshot.advice)?;
                for what in &snapshot.cannot_see {
                    writeln!(self.out, "not seen: {what}")?;
                }
            }
            Format::Json => {
                let record = serde_json::json!({
                    "type": "snapshot",
                    "time": rfc3339_utc(snapshot.time),
                    "tasks": snapshot.waits.iter().map(JsonWait::of).collect::<Vec<_>>(),
                    "by_mount": json_causes(&snapshot.by_mount, "mountpoint"),
                    "cannot_see": snapshot.cannot_see,
                    "advice": snapshot.advice,
                });
                serde_json::to_writer_pretty(&mut self.out, &record)?;
                writeln!(self.out)?;
            }
        }
        self.out.flush()
    }

    /// The end-of-run summary.
    pub fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        match self.format {
            Format::Text { .. } => {
                if !summary.groups.is_empty() {
                    writeln!(self.out)?;
                    writeln!(self.out, "Blocked time by process and function (every completed wait):")?;
                    self.groups_table(&summary.groups)?;
                }
                self.cause_table("Waits by mount", "MOUNT", &summary.by_mount)?;
                self.cause_table("Waits by kernel lock", "LOCK", &summary.by_lock)?;
                if !summary.ongoing.is_empty() {
                    writeln!(self.out)?;
                    writeln!(self.out, "Still in D:")?;
                    self.column_header()?;
                    for wait in &summary.ongoing {
                        self.text_wait(wait, false)?;
                    }
                }
                self.advice(&summary.advice)?;
                writeln!(self.out, "{}", summary_line(summary))?;
            }
            Format::Json => {
                let counters: serde_json::Map<String, serde_json::Value> = summary
                    .counters
                    .iter()
                    .map(|&(counter, n)| (counter.name().to_owned(), n.into()))
                    .collect();
                let groups = json_groups(&summary.groups);
                let ongoing: Vec<JsonWait<'_>> = summary.ongoing.iter().map(JsonWait::of).collect();

                let record = serde_json::json!({
                    "type": "summary",
                    "shown": summary.shown,
                    "min_duration_ns": summary.min_duration_ns,
                    "counters": counters,
                    "bad_records": summary.bad_records,
                    "groups": groups,
                    "by_mount": json_causes(&summary.by_mount, "mountpoint"),
                    "by_lock": json_causes(&summary.by_lock, "lock"),
                    "advice": summary.advice,
                    "ongoing": ongoing,
                });
                serde_json::to_writer(&mut self.out, &record)?;
                writeln!(self.out)?;
            }
        }
        self.out.flush()
    }
}

/// Where a wait is, for people: `fuse.sshfs /mnt/x: /mnt/x/file (statx)`, then
/// the lock it waits for and its holder; `-` when nothing is known.
fn on_text(on: &Attribution, lock: Option<&LockInfo>) -> String {
    let mut text = String::new();
    if let Some(mount) = &on.mount {
        let _ = write!(text, "{} {}", mount.fs_type, mount.mount_point.display());
    }
    if let Some(file) = &on.file {
        if !text.is_empty() {
            text.push_str(": ");
        }
        match (&file.path, file.inode) {
            (Some(path), _) => text.push_str(path),
            (None, Some(inode)) => {
                let _ = write!(text, "inode {inode}");
            }
            (None, None) => text.push('?'),
        }
    }
    if let Some(syscall) = on.syscall {
        if !text.is_empty() {
            text.push(' ');
        }
        let _ = write!(text, "({syscall})");
    }
    for held in &on.file_locks {
        if !text.is_empty() {
            text.push_str("; ");
        }
        let _ = write!(text, "file locked ({} {})", held.kind, held.access);
        if let Some(pid) = held.pid {
            let _ = write!(text, " by pid {pid}");
        }
    }
    if let Some(lock) = lock {
        if !text.is_empty() {
            text.push_str("; ");
        }
        let _ = write!(text, "waits for {}", lock.name());
        if let Some(holder) = &lock.holder {
            let _ = write!(text, " held by {}[{}]", holder.comm, holder.tid);
            if holder.reader_hint {
                text.push_str(" (a reader)");
            }
            match (holder.state, &holder.function) {
                (Some(state), Some(function)) => {
                    let _ = write!(text, " ({state} in {function})");
                }
                (Some(state), None) => {
                    let _ = write!(text, " ({state})");
                }
                (None, _) => text.push_str(" (gone)"),
            }
        }
    }
    if text.is_empty() {
        text.push('-');
    }
    text
}

/// Waits by mount or by lock as JSON values, the key under `key`.
pub fn json_causes(groups: &[CauseGroup], key: &str) -> Vec<serde_json::Value> {
    groups
        .iter()
        .map(|group| {
            serde_json::json!({
                key: group.key,
                "detail": group.detail,
                "ongoing": group.ongoing,
                "oldest_ns": group.oldest_ns,
                "count": group.completed.count,
                "total_ns": group.completed.total_ns,
                "max_ns": group.completed.max_ns,
                "pids": group.pids,
            })
        })
        .collect()
}

/// One wait as the JSON object `run --json` prints for it.
pub fn json_wait(wait: &Wait) -> serde_json::Value {
    serde_json::to_value(JsonWait::of(wait)).unwrap_or_default()
}

/// Groups as JSON values.
pub fn json_groups(groups: &[Group]) -> Vec<serde_json::Value> {
    groups
        .iter()
        .map(|group| {
            serde_json::json!({
                "pid": group.pid,
                "comm": group.comm,
                "blocked_in": group.blocked_in,
                "count": group.totals.count,
                "total_ns": group.totals.total_ns,
                "max_ns": group.totals.max_ns,
                "hist_log2_us": group.totals.hist,
            })
        })
        .collect()
}

/// `comm[tid]`; `irq(comm[tid])` for a wake-up from interrupt context, which
/// names whatever task the interrupt came in on.
fn waker_name(waker: &WakerInfo) -> String {
    if waker.interrupt {
        format!("irq({}[{}])", waker.comm, waker.tid)
    } else {
        format!("{}[{}]", waker.comm, waker.tid)
    }
}

#[derive(Serialize)]
struct JsonWait<'a> {
    /// `wait` (completed) or `ongoing`.
    r#type: &'static str,
    start: Option<String>,
    end: Option<String>,
    duration_ns: u64,
    pid: u32,
    tid: u32,
    comm: &'a str,
    cgroup_id: u64,
    state: &'static str,
    blocked_in: Option<&'a str>,
    stack: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    user_stack: &'a [String],
    waker: Option<JsonWaker<'a>>,
    syscall: Option<&'static str>,
    mount: Option<JsonMount<'a>>,
    file: Option<JsonFile<'a>>,
    lock: Option<JsonLock<'a>>,
    /// The wait chain (waits still going on).
    #[serde(skip_serializing_if = "<[Link]>::is_empty")]
    chain: &'a [Link],
    /// File locks others hold on the file it waits to lock.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    file_locks: Vec<JsonFileLock<'a>>,
    source: &'static str,
}

#[derive(Serialize)]
struct JsonFileLock<'a> {
    kind: &'a str,
    access: &'a str,
    pid: Option<u32>,
    start: u64,
    end: Option<u64>,
}

#[derive(Serialize)]
struct JsonLock<'a> {
    kind: &'static str,
    /// Hex, as the kernel prints addresses.
    addr: String,
    name: String,
    inode: Option<JsonInode>,
    holder: Option<JsonHolder<'a>>,
}

#[derive(Serialize)]
struct JsonInode {
    dev: String,
    ino: u64,
}

#[derive(Serialize)]
struct JsonHolder<'a> {
    tid: u32,
    pid: u32,
    comm: &'a str,
    /// The rwsem is held for reading and this is only the last reader.
    reader_hint: bool,
    /// Its state letter now, null if it is gone.
    state: Option<String>,
    /// Where it is blocked now.
    function: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonMount<'a> {
    mountpoint: std::borrow::Cow<'a, str>,
    fstype: &'a str,
    source: &'a str,
    /// `major:minor`.
    dev: String,
}

#[derive(Serialize)]
struct JsonFile<'a> {
    path: Option<&'a str>,
    inode: Option<u64>,
}

#[derive(Serialize)]
struct JsonWaker<'a> {
    pid: u32,
    tid: u32,
    comm: &'a str,
    /// Woken from interrupt context: the task named is only the one interrupted.
    interrupt: bool,
    stack: &'a [String],
}

impl<'a> JsonWait<'a> {
    fn of(wait: &'a Wait) -> JsonWait<'a> {
        JsonWait {
            r#type: if wait.is_ongoing() { "ongoing" } else { "wait" },
            start: wait.start.map(rfc3339_utc),
            end: wait.end.map(rfc3339_utc),
            duration_ns: wait.duration_ns,
            pid: wait.pid,
            tid: wait.tid,
            comm: &wait.comm,
            cgroup_id: wait.cgroup_id,
            state: wait.state.name(),
            blocked_in: wait.blocked_in.as_deref(),
            stack: &wait.stack,
            user_stack: &wait.user_stack,
            waker: wait.waker.as_ref().map(|waker| JsonWaker {
                pid: waker.pid,
                tid: waker.tid,
                comm: &waker.comm,
                interrupt: waker.interrupt,
                stack: &waker.stack,
            }),
            syscall: wait.on.syscall,
            mount: wait.on.mount.as_ref().map(|mount| JsonMount {
                mountpoint: mount.mount_point.to_string_lossy(),
                fstype: &mount.fs_type,
                source: &mount.source,
                dev: format!("{}:{}", mount.dev.0, mount.dev.1),
            }),
            file: wait
                .on
                .file
                .as_ref()
                .map(|file| JsonFile { path: file.path.as_deref(), inode: file.inode }),
            lock: wait.lock.as_ref().map(|lock| JsonLock {
                kind: lock.kind,
                addr: format!("{:#x}", lock.addr),
                name: lock.name(),
                inode: lock
                    .inode
                    .map(|((major, minor), ino)| JsonInode { dev: format!("{major}:{minor}"), ino }),
                holder: lock.holder.as_ref().map(|holder| JsonHolder {
                    tid: holder.tid,
                    pid: holder.pid,
                    comm: &holder.comm,
                    reader_hint: holder.reader_hint,
                    state: holder.state.map(String::from),
                    function: holder.function.as_deref(),
                }),
            }),
            chain: &wait.chain,
            file_locks: wait
                .on
                .file_locks
                .iter()
                .map(|lock| JsonFileLock {
                    kind: &lock.kind,
                    access: &lock.access,
                    pid: lock.pid,
                    start: lock.range.0,
                    end: lock.range.1,
                })
                .collect(),
            source: match wait.source {
                Source::Traced => "traced",
                Source::Proc => "proc",
            },
        }
    }
}

/// The summary as one line of text.
pub fn summary_line(summary: &Summary) -> String {
    let mut line = format!(
        "dstrace: {} waits of at least {} shown; {} D waits ended in all",
        summary.shown,
        human_duration(summary.min_duration_ns),
        summary.counter(Counter::WaitsEnded)
    );
    line.push_str(&drops_text(&summary.counters, summary.bad_records));
    line
}

/// `; drops: none`, or the drops by kind: the kernel side's drop counters that are
/// not zero, and records userspace could not decode.
pub fn drops_text(counters: &[(Counter, u64)], bad_records: u64) -> String {
    let drops: Vec<(Counter, u64)> =
        counters.iter().copied().filter(|&(counter, n)| counter.is_drop() && n > 0).collect();
    if drops.is_empty() && bad_records == 0 {
        return "; drops: none".to_owned();
    }
    let mut text = "; drops:".to_owned();
    for (counter, n) in drops {
        let _ = write!(text, " {}={n}", counter.name());
    }
    if bad_records > 0 {
        let _ = write!(text, " undecodable_records={bad_records}");
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
            start: Some(UNIX_EPOCH + Duration::from_secs(100)),
            end: Some(UNIX_EPOCH + Duration::from_secs(102)),
            duration_ns: 2_000_000_000,
            tid: 11,
            pid: 10,
            comm: comm.to_owned(),
            cgroup_id: 1234,
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
                mount: crate::mounts::parse(
                    "92 22 0:55 / /tmp/fuse rw - fuse.dstrace-test dstrace-test rw\n",
                )
                .pop(),
                file: Some(crate::attribution::FileRef {
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
            groups: Vec::new(),
            ongoing: Vec::new(),
            by_mount: Vec::new(),
            by_lock: Vec::new(),
            advice: Vec::new(),
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
    fn json_lines_parse_back() {
        let text = printed(Format::Json, |p| p.wait(&wait("a\"b\n")).unwrap());
        assert_eq!(text.lines().count(), 1);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["comm"], "a\"b\n");
        assert_eq!(value["duration_ns"], 2_000_000_000u64);
        assert_eq!(value["blocked_in"], "d_alloc_parallel");
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
