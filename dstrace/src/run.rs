//! `dstrace run`: list the tasks already in D at once (from `/proc`, before
//! anything is loaded), load and attach the eBPF programs, then follow the waits
//! live until told to stop, and print a summary at the end.
//!
//! Three views of the same content ([`crate::board`]): the full-screen view on a
//! terminal ([`crate::tui`]); periodic plain-text tables with a line per completed
//! wait when the output is not a terminal or with `--plain`; NDJSON with `--json`.

use std::{
    collections::HashSet,
    io,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use ratatui::crossterm::event::KeyEvent;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::mpsc::UnboundedReceiver,
    time::{Instant, MissedTickBehavior},
};

use dstrace_common::AggKey;

use crate::{
    aggregate::{group, Aggregator, Group, Totals},
    attribution::MountTable,
    board::{Board, SortBy},
    chain,
    cli::RunArgs,
    clock::{duration_ns, human_duration, local_time_of_day, monotonic_ns, Clock},
    events::decode_wait,
    loader::{Filters, Options, Tracer},
    output::{drops_text, in_d_text, Format, Printer, Summary, Update},
    preflight, procfs,
    record::{ProcNow, Resolver, Wait},
    recorder::RunRecording,
    symbols::{blocking_function, Kallsyms, Stacks},
    tui::{self, Action, Screen, Tui},
};

/// How often the drop counters are checked while running.
const DROP_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often the full-screen view is drawn afresh (ages grow on screen).
const SCREEN_REFRESH: Duration = Duration::from_secs(1);

/// The signals that end a run.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

/// Runs `dstrace run` to completion.
pub fn run(args: &RunArgs) -> Result<()> {
    let options = Options {
        min_duration: args.min_duration,
        include_idle: args.view.include_idle,
        user_stacks: args.user_stacks,
        filters: args.filters()?,
        capacity: args.capacity(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(trace(args, &options))
}

/// Where the run is shown.
enum View {
    /// The full-screen view.
    Screen(Box<Tui>),
    /// Lines of text or JSON on standard output.
    Lines(Printer<io::BufWriter<io::StdoutLock<'static>>>),
}

/// Lines on standard output, buffered: completed waits are written a batch at a
/// time (one `write` per wake-up, not one per wait), every other output at once.
fn lines(format: Format) -> View {
    View::Lines(Printer::new(io::BufWriter::new(io::stdout().lock()), format))
}

/// What the run knows and shows.
struct Live {
    view: View,
    board: Board,
    stacks: Stacks,
    mounts: MountTable,
    clock: Clock,
    min_duration_ns: u64,
    /// Waits streamed by the kernel side.
    shown: u64,
    bad_records: u64,
    /// When tracing began (`None` while loading).
    traced_since: Option<Instant>,
    /// The drops so far, as text, for the status line.
    drops: String,
    /// The tasks in D at the last look ([`Live::look`]).
    in_d: Vec<Wait>,
    /// The recording of `--output`, if any.
    recording: RunRecording,
    /// Notes held back while the full screen is shown, printed after it.
    notes: Vec<String>,
}

impl Live {
    /// Handles one ring buffer record.
    fn record(&mut self, bytes: &[u8], tracer: &Tracer) -> io::Result<()> {
        let Ok(event) = decode_wait(bytes) else {
            self.bad_records += 1;
            return Ok(());
        };
        let mut resolver = self.resolver(tracer);
        let wait = Wait::completed(&event, &mut resolver);
        self.board.add_completed(&wait);
        self.recording.wait(&wait);
        self.shown += 1;
        match &mut self.view {
            View::Lines(printer) => printer.wait(&wait),
            View::Screen(_) => Ok(()),
        }
    }

    fn resolver<'a>(&'a mut self, tracer: &'a Tracer) -> Resolver<'a> {
        Resolver {
            stacks: &mut self.stacks,
            stack_map: &tracer.stacks,
            clock: &self.clock,
            mounts: &mut self.mounts,
        }
    }

    /// The tasks in D now ([`in_d_now`]).
    fn in_d_now(&mut self, tracer: Option<&Tracer>, options: &Options) -> Vec<Wait> {
        in_d_now(tracer, options, self.min_duration_ns, &mut self.stacks, &mut self.mounts, &self.clock)
    }

    /// Shows notes on standard error, or after the full-screen view.
    fn note(&mut self, notes: impl IntoIterator<Item = String>) {
        for note in notes {
            match self.view {
                View::Screen(_) => self.notes.push(note),
                View::Lines(_) => eprintln!("dstrace: {note}"),
            }
        }
    }

    /// Looks at the tasks in D now ([`Live::in_d_now`]) and keeps them.
    fn look(&mut self, tracer: Option<&Tracer>, options: &Options) {
        self.in_d = self.in_d_now(tracer, options);
    }

    /// Draws the full-screen view afresh with the last look (nothing for the
    /// other views).
    fn draw(&mut self) -> io::Result<()> {
        let View::Screen(tui) = &mut self.view else { return Ok(()) };
        let ongoing = &self.in_d;
        let groups = self.board.groups(ongoing, tui.sort());
        let advice = crate::advice::advise(ongoing);
        let tracing = match self.traced_since {
            Some(since) => format!("tracing for {}", human_duration(duration_ns(since.elapsed()))),
            None => "loading the eBPF programs...".to_owned(),
        };
        let status = format!(
            " dstrace run  {}  {}  {}  {} waits of at least {} seen{}",
            local_time_of_day(SystemTime::now()),
            in_d_text(ongoing),
            tracing,
            self.shown,
            human_duration(self.min_duration_ns),
            self.drops,
        );
        tui.draw(&Screen { groups: &groups, status: &status, advice: &advice })
    }
}

async fn trace(args: &RunArgs, options: &Options) -> Result<()> {
    // Signals are caught from the start: one that came while loading would
    // otherwise end the process without a summary (or a restored terminal).
    let signals =
        Signals { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? };
    let json = args.view.json;
    let view = if !json && !args.plain && tui::available() {
        View::Screen(Box::new(Tui::start().context("cannot take over the terminal (try --plain)")?))
    } else {
        lines(if json { Format::Json } else { Format::Text { stacks: args.view.stacks } })
    };
    let mut live = Live {
        view,
        board: Board::default(),
        // Symbols are read once the programs are loaded, so that their own frames
        // (`bpf_prog_...`) are known and left out of stacks; until then the only
        // stacks are the kernel's text in /proc.
        stacks: Stacks::new(Kallsyms::parse("")),
        mounts: MountTable::read(),
        clock: Clock::now(),
        min_duration_ns: duration_ns(args.min_duration),
        shown: 0,
        bad_records: 0,
        traced_since: None,
        drops: "; drops: none".to_owned(),
        in_d: Vec::new(),
        recording: RunRecording::default(),
        notes: Vec::new(),
    };

    // The first screen, before anything is loaded: the tasks already in D.
    live.look(None, options);
    first_screen(&mut live).context("cannot write to standard output")?;

    let mut tracer = match preflight::check().and_then(|()| Tracer::load(options)) {
        Ok(tracer) => tracer,
        Err(err) => {
            if let View::Screen(_) = live.view {
                // Leave the full screen, and keep what it showed.
                live.view = lines(Format::Text { stacks: false });
                first_screen(&mut live)?;
            }
            return Err(err);
        }
    };
    let events = tracer.take_events()?;
    live.recording = RunRecording::start(&args.recording, Some(args.interval), args.min_duration)?;
    let recording_notes = live.recording.notes();
    live.note(recording_notes);
    let kallsyms = Kallsyms::from_proc()?;
    let hidden_symbols = kallsyms.is_hidden();
    live.stacks = Stacks::new(kallsyms);
    let needs = crate::privileges::Needs { write_files: args.recording.output.is_some() };
    live.note(crate::privileges::settle_after_attach(&tracer, needs));
    live.traced_since = Some(Instant::now());
    let mut notes =
        tracer.skipped.iter().map(|what| format!("not recorded on this kernel: {what}")).collect::<Vec<_>>();
    if hidden_symbols {
        notes.push(
            "warning: /proc/kallsyms hides kernel addresses (kernel.kptr_restrict); stacks show as raw addresses"
                .to_owned(),
        );
    }
    if !json {
        // With --json, `start` says what is not recorded.
        live.note(notes);
    }
    if let View::Lines(printer) = &mut live.view {
        printer.header(tracer.program, live.min_duration_ns, &tracer.skipped)?;
    }

    let keys = matches!(live.view, View::Screen(_)).then(tui::keys);
    let outcome = follow(args, options, &tracer, events, &mut live, keys, signals).await;
    live.recording.finish(&tracer, &mut live.stacks, &mut live.mounts);
    let finished = match outcome {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        Err(err) => Err(err),
    };
    if let View::Screen(_) = live.view {
        // Back to the normal screen (dropping the full-screen view restores the
        // terminal) for the notes held back and the summary, which stay on it.
        live.view = lines(Format::Text { stacks: false });
        let held = std::mem::take(&mut live.notes);
        live.note(held);
    }
    let recording_notes = live.recording.notes();
    live.note(recording_notes);
    summarize(&mut live, &tracer, options)?;
    finished.context("cannot write to standard output")
}

/// The tasks in D now for at least `min_duration_ns`, the longest first: those the
/// kernel side tracks, then those only `/proc` knows (in D since before tracing
/// began), with their chains.
pub(crate) fn in_d_now(
    tracer: Option<&Tracer>,
    options: &Options,
    min_duration_ns: u64,
    stacks: &mut Stacks,
    mounts: &mut MountTable,
    clock: &Clock,
) -> Vec<Wait> {
    // Mounts made since the last look are named, not the mount below them.
    mounts.refresh_if_changed();
    let now_ns = monotonic_ns();
    let context = chain::Context {
        fuse: tracer.map(Tracer::fuse_requests).unwrap_or_default(),
        rpc: tracer.map(Tracer::rpc_calls).unwrap_or_default(),
        now_ns,
    };
    let mut waits: Vec<Wait> = match tracer {
        Some(tracer) => {
            let inflight = tracer.inflight();
            let mut resolver = Resolver { stacks, stack_map: &tracer.stacks, clock, mounts };
            inflight
                .iter()
                .map(|(tid, wait)| Wait::ongoing(*tid, wait, now_ns, &mut resolver).with_chain(&context))
                .filter(|wait| wait.duration_ns >= min_duration_ns)
                .collect()
        }
        None => Vec::new(),
    };
    let traced: HashSet<u32> = waits.iter().map(|wait| wait.tid).collect();
    waits.extend(
        waits_in_proc(options, mounts, &context).into_iter().filter(|wait| !traced.contains(&wait.tid)),
    );
    waits.sort_by_key(|wait| std::cmp::Reverse(wait.duration_ns));
    waits
}

/// The first view: the tasks in D before tracing (the last look).
fn first_screen(live: &mut Live) -> io::Result<()> {
    match &mut live.view {
        View::Screen(_) => live.draw(),
        View::Lines(printer) => {
            let title = format!(
                "Already in D when tracing started: {} (the ages are lower bounds)",
                in_d_text(&live.in_d)
            );
            printer.ongoing(&title, &live.in_d)
        }
    }
}

/// The summary at the end, on standard output.
fn summarize(live: &mut Live, tracer: &Tracer, options: &Options) -> Result<()> {
    let ongoing = live.in_d_now(Some(tracer), options);
    // The kernel's counters started at zero: one full read is the whole run.
    let by_process = by_process(&Aggregator::default().delta(tracer.aggregates()), tracer, &mut live.stacks);
    let summary = Summary {
        advice: crate::advice::advise(&ongoing),
        groups: live.board.groups(&ongoing, SortBy::InD),
        shown: live.shown,
        min_duration_ns: live.min_duration_ns,
        counters: tracer.counters()?,
        bad_records: live.bad_records,
        by_process,
        ongoing,
    };
    let View::Lines(printer) = &mut live.view else { return Ok(()) };
    match printer.summary(&summary) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write the summary"),
    }
}

/// The tasks in D now according to `/proc`, as ongoing waits, filtered like the
/// kernel side filters (but for cgroups, which `/proc/PID/stat` does not name).
fn waits_in_proc(options: &Options, mounts: &mut MountTable, context: &chain::Context) -> Vec<Wait> {
    let states: &[char] = if options.include_idle { &['D', 'I'] } else { &['D'] };
    let tasks = procfs::tasks_in_states(Path::new("/proc"), states).unwrap_or_default();
    let now = ProcNow::read();
    let filters = &options.filters;
    tasks
        .iter()
        .filter(|task| task.pid != std::process::id())
        .filter(|task| proc_task_wanted(filters, task.pid, task.tid, &task.comm))
        .map(|task| Wait::from_proc(task, &now, mounts).with_chain(context))
        .collect()
}

/// Whether a task seen in `/proc` passes the pid, tid and comm filters.
fn proc_task_wanted(filters: &Filters, pid: u32, tid: u32, comm: &str) -> bool {
    (filters.tgids.is_empty() || filters.tgids.contains(&pid))
        && (filters.tids.is_empty() || filters.tids.contains(&tid))
        && (filters.comms.is_empty()
            || filters
                .comms
                .iter()
                .any(|wanted| crate::loader::comm_key(wanted) == crate::loader::comm_key(comm)))
}

/// Follows the waits until Ctrl-C (or `q`), SIGTERM or the end of `--duration`.
async fn follow(
    args: &RunArgs,
    options: &Options,
    tracer: &Tracer,
    events: RingBuf<MapData>,
    live: &mut Live,
    mut keys: Option<UnboundedReceiver<KeyEvent>>,
    mut signals: Signals,
) -> io::Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same for as
    // long as the `AsyncFd` owns the ring buffer.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }.map_err(io::Error::from)?;
    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut drop_check = ticks(DROP_CHECK_INTERVAL);
    let mut drops_seen = 0u64;
    // The full screen is drawn every second; lines are printed every --interval.
    let period = match live.view {
        View::Screen(_) => Some(SCREEN_REFRESH),
        View::Lines(_) => Some(args.interval).filter(|d| !d.is_zero()),
    };
    let mut refresh = period.map(ticks);
    let mut interval_aggregator = Aggregator::default();
    let mut interval_start = Instant::now();
    let mut record_ticks = live.recording.ticks();
    live.look(Some(tracer), options);
    live.draw()?;
    loop {
        tokio::select! {
            _ = signals.interrupt.recv() => break,
            _ = signals.terminate.recv() => break,
            _ = sleep_until(deadline) => break,
            key = next_key(keys.as_mut()) => {
                let View::Screen(tui) = &mut live.view else { continue };
                let Some(key) = key else {
                    keys = None;
                    continue;
                };
                match tui.key(key) {
                    Action::Quit => break,
                    Action::Redraw | Action::Regroup => live.draw()?,
                    Action::Nothing => {}
                }
            }
            _ = drop_check.tick() => {
                let counters = tracer.counters().unwrap_or_default();
                let total: u64 = counters.iter().filter(|(c, _)| c.is_drop()).map(|&(_, n)| n).sum();
                live.drops = drops_text(&counters, live.bad_records);
                if total > drops_seen && matches!(live.view, View::Lines(_)) {
                    eprintln!("dstrace: warning: the kernel side lost data{}", live.drops);
                }
                drops_seen = total;
            }
            _ = next_tick(refresh.as_mut()) => {
                live.look(Some(tracer), options);
                let ongoing = &live.in_d;
                match &mut live.view {
                    View::Screen(_) => live.draw()?,
                    View::Lines(printer) => {
                        let by_process =
                            by_process(&interval_aggregator.delta(tracer.aggregates()), tracer, &mut live.stacks);
                        let groups = live.board.groups(ongoing, SortBy::InD);
                        let advice = crate::advice::advise(ongoing);
                        let seconds = interval_start.elapsed().as_secs_f64();
                        interval_start = Instant::now();
                        printer.update(&Update {
                            time: SystemTime::now(),
                            seconds,
                            ongoing,
                            groups: &groups,
                            by_process: &by_process,
                            advice: &advice,
                        })?;
                    }
                }
            }
            _ = next_tick(record_ticks.as_mut()) => {
                live.recording.interval(tracer, &mut live.stacks, &mut live.mounts);
                let notes = live.recording.notes();
                live.note(notes);
            }
            ready = ring.readable_mut() => {
                let mut guard = ready?;
                drain(guard.get_inner_mut(), tracer, live)?;
                guard.clear_ready();
            }
        }
    }
    // What arrived between the last wake-up and the stop.
    drain(ring.get_mut(), tracer, live)
}

/// Handles every record waiting in the ring buffer, then writes out the lines.
fn drain(ring: &mut RingBuf<MapData>, tracer: &Tracer, live: &mut Live) -> io::Result<()> {
    while let Some(item) = ring.next() {
        live.record(&item, tracer)?;
    }
    match &mut live.view {
        View::Lines(printer) => printer.flush(),
        View::Screen(_) => Ok(()),
    }
}

/// Aggregated entries grouped by process and blocking function.
fn by_process(entries: &[(AggKey, Totals)], tracer: &Tracer, stacks: &mut Stacks) -> Vec<Group> {
    group(entries, |id| {
        let stack = stacks.kernel(&tracer.stacks, id);
        blocking_function(stack.iter().map(String::as_str)).map(str::to_owned)
    })
}

/// An interval whose first tick comes after one period, and that does not
/// catch up on ticks it missed.
pub(crate) fn ticks(period: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// The next tick of an optional interval; never, without one.
async fn next_tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next key, if keys are read; never, otherwise.
async fn next_key(keys: Option<&mut UnboundedReceiver<KeyEvent>>) -> Option<KeyEvent> {
    match keys {
        Some(keys) => keys.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until the deadline, if there is one; forever, otherwise.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_tasks_are_filtered_like_the_kernel_side() {
        let none = Filters::default();
        assert!(proc_task_wanted(&none, 1, 2, "a"));
        let pids = Filters { tgids: vec![1], ..Filters::default() };
        assert!(proc_task_wanted(&pids, 1, 2, "a"));
        assert!(!proc_task_wanted(&pids, 3, 3, "a"));
        let comms = Filters { comms: vec!["a-very-long-command-name".into()], ..Filters::default() };
        assert!(
            proc_task_wanted(&comms, 1, 1, "a-very-long-com"),
            "comm is cut to 15 bytes as the kernel does"
        );
        assert!(!proc_task_wanted(&comms, 1, 1, "other"));
    }
}
