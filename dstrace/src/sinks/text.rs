//! The plain text sink of `dstrace run` and `dstrace snapshot`: aligned columns
//! for people, a line per wait, the groups as a tree, the advice. Every name from
//! the kernel goes through [`escape`].

use std::io::{self, Write};

use crate::{
    clock::{human_duration, local_time_of_day},
    escape::{controls, escape},
    model::{
        aggregate::Group,
        board::{self, BoardGroup, CauseGroup},
        wait::{Source, Wait, WakerInfo},
    },
    sinks::{
        tree::{self, chain_text, drops_text, in_d_text, on_text},
        Sink, Snapshot, Start, Summary, Update,
    },
};

/// How many groups the text summary lists.
const TEXT_GROUPS: usize = 20;

/// Lines of text, aligned in columns.
pub struct TextSink<W: Write> {
    out: W,
    /// Print the kernel stacks under each wait.
    stacks: bool,
}

impl<W: Write> TextSink<W> {
    /// A sink writing to `out`; with `stacks`, whole stacks under each wait.
    pub fn new(out: W, stacks: bool) -> Self {
        TextSink { out, stacks }
    }

    fn column_header(&mut self) -> io::Result<()> {
        writeln!(
            self.out,
            "{:<15}  {:<15}  {:<16}  {:<10}  {:>9}  {:<28}  {:<20}  ON",
            "TIME", "PID/TID", "COMM", "STATE", "DURATION", "BLOCKED IN", "WOKEN BY"
        )
    }

    fn text_wait(&mut self, wait: &Wait, stacks: bool) -> io::Result<()> {
        // Completed: when it ended, and how long it lasted. Ongoing: since when,
        // and for how long so far (`+`: still growing; `>=`: a lower bound from /proc).
        let time = if wait.is_ongoing() { wait.start } else { wait.end };
        let time = time.map_or_else(|| "-".to_owned(), local_time_of_day);
        let duration = match (wait.is_ongoing(), wait.source) {
            (false, _) => human_duration(wait.duration_ns),
            (true, Source::Traced) => format!("{}+", human_duration(wait.duration_ns)),
            (true, Source::Proc | Source::Iterator) if wait.start.is_none() => "?".to_owned(),
            (true, Source::Proc | Source::Iterator) => format!(">={}", human_duration(wait.duration_ns)),
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
            escape(&on_text(wait)),
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
            writeln!(self.out, "    chain: {}", escape(&chain_text(&wait.chain)))?;
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

    fn interval_text(&mut self, seconds: f64, by_process: &[Group]) -> io::Result<()> {
        if by_process.is_empty() {
            return Ok(());
        }
        writeln!(self.out, "Blocked time in the last {seconds:.1}s, by process and function (every wait):")?;
        self.by_process_table(by_process)
    }

    /// The groups as a tree: mount, then lock, then blocking function with its
    /// tasks and the wait chain of its oldest one ([`tree::rows`]).
    fn board_table(&mut self, groups: &[BoardGroup]) -> io::Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        writeln!(
            self.out,
            "  {:>5}  {:>9}  {:>9}  {:>6}  MOUNT / LOCK / BLOCKED IN",
            "IN D", "OLDEST", "BLOCKED", "DONE"
        )?;
        let rows = tree::rows(groups);
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
                writeln!(self.out, "  {:>36}  {indent}  chain: {}", "", escape(&chain_text(chain)))?;
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
            writeln!(self.out, "  * {}", controls(line))?;
        }
        Ok(())
    }

    fn cause_table(&mut self, title: &str, what: &str, groups: &[CauseGroup]) -> io::Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        writeln!(self.out)?;
        // The blocked time here is that of the waits that ended (DONE): a task
        // still in D counts in IN D NOW and OLDEST only (the tree above counts
        // its time so far in its BLOCKED).
        writeln!(
            self.out,
            "{title} (tasks still in D; waits shown that ended, their blocked time and longest):"
        )?;
        writeln!(
            self.out,
            "  {:<40}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}  WHAT / HELD BY",
            what, "IN D NOW", "OLDEST", "DONE", "DONE TIME", "DONE MAX"
        )?;
        for group in groups.iter().take(TEXT_GROUPS) {
            let oldest =
                if group.ongoing > 0 { format!("{}+", human_duration(group.oldest_ns)) } else { "-".into() };
            writeln!(
                self.out,
                "  {:<40}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}  {}",
                escape(&group.key),
                group.ongoing,
                oldest,
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
}

impl<W: Write> Sink for TextSink<W> {
    fn start(&mut self, _start: &Start<'_>) -> io::Result<()> {
        // What is skipped is printed on standard error by `run`, as notes.
        self.column_header()?;
        self.out.flush()
    }

    fn ongoing(&mut self, title: &str, waits: &[Wait]) -> io::Result<()> {
        if waits.is_empty() {
            return Ok(());
        }
        writeln!(self.out, "{title}")?;
        for wait in waits {
            self.wait(wait)?;
        }
        writeln!(self.out)?;
        self.out.flush()
    }

    fn wait(&mut self, wait: &Wait) -> io::Result<()> {
        self.text_wait(wait, self.stacks)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn update(&mut self, update: &Update<'_>) -> io::Result<()> {
        writeln!(self.out, "-- {}: {}", local_time_of_day(update.time), in_d_text(update.ongoing))?;
        self.board_table(update.groups)?;
        self.interval_text(update.seconds, update.by_process)?;
        self.advice(update.advice)?;
        writeln!(self.out)?;
        self.out.flush()
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
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
        self.cause_table("Waits by mount", "MOUNT", &board::by_mount(&summary.groups))?;
        self.cause_table("Waits by kernel lock", "LOCK", &board::by_lock(&summary.groups))?;
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
        self.out.flush()
    }

    fn snapshot(&mut self, snapshot: &Snapshot) -> io::Result<()> {
        writeln!(
            self.out,
            "{} at {} (read from {}; the ages are lower bounds)",
            in_d_text(&snapshot.waits),
            local_time_of_day(snapshot.time),
            if snapshot.source == "iterator" { "kernel memory" } else { "/proc" }
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
        self.out.flush()
    }
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

/// The summary as one line of text.
pub fn summary_line(summary: &Summary) -> String {
    let mut line = format!(
        "dstrace: {} waits of at least {} shown; {} D waits ended in all",
        summary.shown,
        human_duration(summary.min_duration_ns),
        summary.counter(dstrace_common::Counter::WaitsEnded)
    );
    line.push_str(&drops_text(&summary.counters, summary.bad_records));
    line
}
