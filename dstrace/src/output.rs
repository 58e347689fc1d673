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
    aggregate::Group,
    attribution::Attribution,
    board::{self, BoardGroup, CauseGroup},
    chain::{self, Link},
    clock::{human_duration, local_time_of_day, rfc3339_utc},
    mounts::Mount,
    record::{LockInfo, Source, Wait, WakerInfo},
};

/// How many groups the text summary lists.
const TEXT_GROUPS: usize = 20;

/// The version of the JSON schema (README, "JSON output"): it changes only when a
/// field changes meaning or goes away; new fields may appear in any version.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// Nanoseconds as the milliseconds of the JSON schema (microsecond precision).
pub fn json_ms(ns: u64) -> f64 {
    (ns / 1_000) as f64 / 1_000.0
}

/// Serializes nanoseconds as [`json_ms`] (for `#[serde(serialize_with)]`).
pub fn serialize_ms<S: serde::Serializer>(ns: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(json_ms(*ns))
}

/// As [`serialize_ms`], `null` for `None`.
pub fn serialize_opt_ms<S: serde::Serializer>(ns: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match ns {
        Some(ns) => serializer.serialize_f64(json_ms(*ns)),
        None => serializer.serialize_none(),
    }
}

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
    /// Every completed wait (of any length) by process and blocking function,
    /// largest total first (the in-kernel aggregation).
    pub by_process: Vec<Group>,
    /// Waits still going on at the end.
    pub ongoing: Vec<Wait>,
    /// Waits (shown and ongoing) by mount, lock and function ([`crate::board`]).
    pub groups: Vec<BoardGroup>,
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
    /// The same, by mount, lock and function.
    pub groups: Vec<BoardGroup>,
    /// What it could not see, one sentence each.
    pub cannot_see: Vec<String>,
    /// What to do about them ([`crate::advice`]).
    pub advice: Vec<String>,
}

/// A periodic update of `dstrace run` ([`Printer::update`]).
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
                    "version": JSON_SCHEMA_VERSION,
                    "program": program,
                    "min_duration_ms": json_ms(min_duration_ns),
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
    ///
    /// Not flushed: a batch of waits is written at once by [`Printer::flush`].
    pub fn wait(&mut self, wait: &Wait) -> io::Result<()> {
        match self.format {
            Format::Text { stacks } => self.text_wait(wait, stacks),
            Format::Json => {
                serde_json::to_writer(&mut self.out, &JsonWait::of(wait))?;
                writeln!(self.out)
            }
        }
    }

    /// Writes out what is buffered (after a batch of [`Printer::wait`]s).
    pub fn flush(&mut self) -> io::Result<()> {
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

    /// A periodic update (`--interval`): the tasks in D now and the groups, then
    /// the completed waits of the interval by process and function, and the advice.
    /// JSON: one `ongoing` record per task in D, then one `interval` record.
    pub fn update(&mut self, update: &Update<'_>) -> io::Result<()> {
        match self.format {
            Format::Text { .. } => {
                writeln!(self.out, "-- {}: {}", local_time_of_day(update.time), in_d_text(update.ongoing))?;
                self.board_table(update.groups)?;
                self.interval_text(update.seconds, update.by_process)?;
                self.advice(update.advice)?;
                writeln!(self.out)?;
            }
            Format::Json => {
                for wait in update.ongoing {
                    self.json_line(&JsonWait::of(wait))?;
                }
                let record = serde_json::json!({
                    "type": "interval",
                    "end": rfc3339_utc(update.time),
                    "seconds": update.seconds,
                    "tasks_in_d": update.ongoing.len(),
                    "groups": json_board(update.groups),
                    "by_process": json_by_process(update.by_process),
                    "advice": update.advice,
                });
                self.json_line(&record)?;
            }
        }
        self.out.flush()
    }

    fn interval_text(&mut self, seconds: f64, by_process: &[Group]) -> io::Result<()> {
        if by_process.is_empty() {
            return Ok(());
        }
        writeln!(self.out, "Blocked time in the last {seconds:.1}s, by process and function (every wait):")?;
        self.by_process_table(by_process)
    }

    fn json_line(&mut self, value: &impl Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        writeln!(self.out)
    }

    /// The groups as a tree: mount, then lock, then blocking function with its
    /// tasks and the wait chain of its oldest one ([`board::rows`]).
    fn board_table(&mut self, groups: &[BoardGroup]) -> io::Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        writeln!(
            self.out,
            "  {:>5}  {:>9}  {:>9}  {:>6}  MOUNT / LOCK / BLOCKED IN",
            "IN D", "OLDEST", "BLOCKED", "DONE"
        )?;
        let rows = board::rows(groups);
        for row in rows.iter().take(TEXT_GROUPS * 3) {
            let indent = "  ".repeat(row.depth);
            let oldest =
                if row.in_d > 0 { format!("{}+", human_duration(row.oldest_ns)) } else { "-".into() };
            write!(
                self.out,
                "  {:>5}  {:>9}  {:>9}  {:>6}  {indent}{}",
                row.in_d,
                oldest,
                human_duration(row.blocked_ns),
                row.done,
                escape(&row.label)
            )?;
            if row.detail.is_empty() {
                writeln!(self.out)?;
            } else {
                writeln!(self.out, "  {}", escape(&row.detail))?;
            }
            if let Some(chain) = row.group.and_then(|i| groups[i].chain()) {
                writeln!(self.out, "  {:>36}  {indent}  chain: {}", "", escape(&chain::text(chain)))?;
            }
        }
        if rows.len() > TEXT_GROUPS * 3 {
            writeln!(self.out, "  ... {} more rows (--json lists all)", rows.len() - TEXT_GROUPS * 3)?;
        }
        Ok(())
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
        writeln!(self.out, "{title} (waits shown and tasks still in D):")?;
        writeln!(
            self.out,
            "  {:<40}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}  WHAT / HELD BY",
            what, "IN D NOW", "OLDEST", "DONE", "BLOCKED", "MAX"
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

    fn by_process_table(&mut self, groups: &[Group]) -> io::Result<()> {
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
                    "{} at {} (from /proc; the ages are lower bounds)",
                    in_d_text(&snapshot.waits),
                    local_time_of_day(snapshot.time)
                )?;
                if !snapshot.waits.is_empty() {
                    self.column_header()?;
                    for wait in &snapshot.waits {
                        self.wait(wait)?;
                    }
                    writeln!(self.out)?;
                    writeln!(self.out, "By mount, lock and function:")?;
                    self.board_table(&snapshot.groups)?;
                }
                self.advice(&snapshot.advice)?;
                for what in &snapshot.cannot_see {
                    writeln!(self.out, "not seen: {what}")?;
                }
            }
            Format::Json => {
                let record = serde_json::json!({
                    "type": "snapshot",
                    "version": JSON_SCHEMA_VERSION,
                    "time": rfc3339_utc(snapshot.time),
                    "tasks": snapshot.waits.iter().map(JsonWait::of).collect::<Vec<_>>(),
                    "groups": json_board(&snapshot.groups),
                    "by_mount": json_causes(&board::by_mount(&snapshot.groups), "mountpoint"),
                    "by_lock": json_causes(&board::by_lock(&snapshot.groups), "lock"),
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
        let by_mount = board::by_mount(&summary.groups);
        let by_lock = board::by_lock(&summary.groups);
        match self.format {
            Format::Text { .. } => {
                writeln!(self.out)?;
                writeln!(self.out, "== Summary")?;
                if !summary.by_process.is_empty() {
                    writeln!(self.out, "Blocked time by process and function (every completed wait):")?;
                    self.by_process_table(&summary.by_process)?;
                }
                if !summary.groups.is_empty() {
                    writeln!(self.out)?;
                    writeln!(self.out, "By mount, lock and function (waits shown and tasks still in D):")?;
                    self.board_table(&summary.groups)?;
                }
                self.cause_table("Waits by mount", "MOUNT", &by_mount)?;
                self.cause_table("Waits by kernel lock", "LOCK", &by_lock)?;
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
                let ongoing: Vec<JsonWait<'_>> = summary.ongoing.iter().map(JsonWait::of).collect();
                let record = serde_json::json!({
                    "type": "summary",
                    "version": JSON_SCHEMA_VERSION,
                    "shown": summary.shown,
                    "min_duration_ms": json_ms(summary.min_duration_ns),
                    "counters": counters,
                    "bad_records": summary.bad_records,
                    "groups": json_board(&summary.groups),
                    "by_process": json_by_process(&summary.by_process),
                    "by_mount": json_causes(&by_mount, "mountpoint"),
                    "by_lock": json_causes(&by_lock, "lock"),
                    "advice": summary.advice,
                    "ongoing": ongoing,
                });
                self.json_line(&record)?;
            }
        }
        self.out.flush()
    }
}

/// `3 tasks in D, the oldest for 4.100s`, or `no task in D`.
pub fn in_d_text(waits: &[Wait]) -> String {
    let oldest = waits.iter().map(|wait| wait.duration_ns).max().unwrap_or(0);
    match waits.len() {
        0 => "no task in D".to_owned(),
        1 => format!("1 task in D, for {}", human_duration(oldest)),
        n => format!("{n} tasks in D, the oldest for {}", human_duration(oldest)),
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
        let holder = board::holder_text(Some(lock));
        if !holder.is_empty() {
            let _ = write!(text, " {holder}");
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
                "tasks_in_d": group.ongoing,
                "oldest_ms": json_ms(group.oldest_ns),
                "count": group.completed.count,
                "blocked_ms": json_ms(group.completed.total_ns),
                "max_ms": json_ms(group.completed.max_ns),
                "tgids": group.pids,
            })
        })
        .collect()
}

/// One wait as the JSON object `run --json` prints for it.
pub fn json_wait(wait: &Wait) -> serde_json::Value {
    serde_json::to_value(JsonWait::of(wait)).unwrap_or_default()
}

/// The in-kernel aggregation by process and function as JSON values.
pub fn json_by_process(groups: &[Group]) -> Vec<serde_json::Value> {
    groups
        .iter()
        .map(|group| {
            serde_json::json!({
                "tgid": group.pid,
                "comm": group.comm,
                "function": group.blocked_in,
                "count": group.totals.count,
                "blocked_ms": json_ms(group.totals.total_ns),
                "max_ms": json_ms(group.totals.max_ns),
                "hist_log2_us": group.totals.hist,
            })
        })
        .collect()
}

/// The board's groups as JSON values (README, "JSON output").
pub fn json_board(groups: &[BoardGroup]) -> Vec<serde_json::Value> {
    groups
        .iter()
        .map(|group| {
            serde_json::json!({
                "mount": group.mount.as_ref().map(JsonMount::of),
                "lock": group.lock.as_ref().map(JsonLock::of),
                "function": group.key.function,
                "tasks_in_d": group.tasks.len(),
                "oldest_ms": json_ms(group.oldest_ns()),
                "blocked_ms": json_ms(group.blocked_ns()),
                "completed": {
                    "count": group.completed.count,
                    "blocked_ms": json_ms(group.completed.total_ns),
                    "max_ms": json_ms(group.completed.max_ns),
                },
                "tgids": group.pids,
                "tids_in_d": group.tasks.iter().map(|wait| wait.tid).collect::<Vec<_>>(),
                "chain": group.chain().unwrap_or_default(),
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
    blocked_ms: f64,
    tid: u32,
    tgid: u32,
    comm: &'a str,
    cgroup_id: u64,
    state: &'static str,
    function: Option<&'a str>,
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
    tgid: Option<u32>,
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
    tgid: u32,
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
    tid: u32,
    tgid: u32,
    comm: &'a str,
    /// Woken from interrupt context: the task named is only the one interrupted.
    interrupt: bool,
    stack: &'a [String],
}

impl<'a> JsonMount<'a> {
    fn of(mount: &'a Mount) -> JsonMount<'a> {
        JsonMount {
            mountpoint: mount.mount_point.to_string_lossy(),
            fstype: &mount.fs_type,
            source: &mount.source,
            dev: format!("{}:{}", mount.dev.0, mount.dev.1),
        }
    }
}

impl<'a> JsonLock<'a> {
    fn of(lock: &'a LockInfo) -> JsonLock<'a> {
        JsonLock {
            kind: lock.kind,
            addr: format!("{:#x}", lock.addr),
            name: lock.name(),
            inode: lock.inode.map(|((major, minor), ino)| JsonInode { dev: format!("{major}:{minor}"), ino }),
            holder: lock.holder.as_ref().map(|holder| JsonHolder {
                tid: holder.tid,
                tgid: holder.pid,
                comm: &holder.comm,
                reader_hint: holder.reader_hint,
                state: holder.state.map(String::from),
                function: holder.function.as_deref(),
            }),
        }
    }
}

impl<'a> JsonWait<'a> {
    fn of(wait: &'a Wait) -> JsonWait<'a> {
        JsonWait {
            r#type: if wait.is_ongoing() { "ongoing" } else { "wait" },
            start: wait.start.map(rfc3339_utc),
            end: wait.end.map(rfc3339_utc),
            blocked_ms: json_ms(wait.duration_ns),
            tid: wait.tid,
            tgid: wait.pid,
            comm: &wait.comm,
            cgroup_id: wait.cgroup_id,
            state: wait.state.name(),
            function: wait.blocked_in.as_deref(),
            stack: &wait.stack,
            user_stack: &wait.user_stack,
            waker: wait.waker.as_ref().map(|waker| JsonWaker {
                tid: waker.tid,
                tgid: waker.pid,
                comm: &waker.comm,
                interrupt: waker.interrupt,
                stack: &waker.stack,
            }),
            syscall: wait.on.syscall,
            mount: wait.on.mount.as_ref().map(JsonMount::of),
            file: wait
                .on
                .file
                .as_ref()
                .map(|file| JsonFile { path: file.path.as_deref(), inode: file.inode }),
            lock: wait.lock.as_ref().map(JsonLock::of),
            chain: &wait.chain,
            file_locks: wait
                .on
                .file_locks
                .iter()
                .map(|lock| JsonFileLock {
                    kind: &lock.kind,
                    access: &lock.access,
                    tgid: lock.pid,
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

/// Text safe for a terminal: control characters and backslashes escaped, and the
/// invisible characters that reorder or hide text (bidirectional overrides and
/// isolates, zero-width characters: a name could otherwise show as another).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_invisible_format(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Unicode format characters that change how the text around them is shown:
/// zero-width ones, the bidirectional marks, embeddings, overrides and isolates,
/// and the byte order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
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
            by_process: Vec::new(),
            ongoing: Vec::new(),
            groups: Vec::new(),
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
