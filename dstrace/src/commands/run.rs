//! `dstrace run`: list the tasks already in D at once (from `/proc`, before
//! anything is loaded), load and attach the eBPF programs, then follow the waits
//! live until told to stop, and print a summary at the end.
//!
//! Three views of the same content ([`crate::model::board`]): the full-screen view
//! on a terminal ([`crate::sinks::tui`]); periodic plain-text tables with a line
//! per completed wait when the output is not a terminal or with `--plain`; NDJSON
//! with `--json` (both [`crate::sinks::Sink`]s).

use std::{
    io,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use dstrace_common::AggKey;
use ratatui::crossterm::event::KeyEvent;
use tokio::{sync::mpsc::UnboundedReceiver, time::Instant};

use crate::{
    cli::args::RunArgs,
    clock::{duration_ns, human_duration, local_time_of_day, ticks},
    commands::session::{self, in_d_now, next_tick, FirstSeen, Session, Signals, Wake},
    kernel::{
        loader::{Options, Tracer},
        preflight,
        privileges::Needs,
    },
    model::{
        advice::{advise, advise_once},
        aggregate::{group, Aggregator, Group, Totals},
        board::{Board, SortBy},
        wait::Wait,
    },
    resolve::symbols::{blocking_function, Stacks},
    resolve::Names,
    sinks::{
        self,
        recording::recorder::RunRecording,
        tree::{drops_text, in_d_text},
        tui::{self, Action, Screen, Tui},
        Format, Sink, Start, Summary, Update,
    },
};

/// How often the drop counters are checked while running.
const DROP_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often the full-screen view is drawn afresh (ages grow on screen).
const SCREEN_REFRESH: Duration = Duration::from_secs(1);

/// Runs `dstrace run` to completion.
pub fn run(args: &RunArgs) -> Result<()> {
    let options = Options {
        min_duration: args.min_duration,
        include_idle: args.view.include_idle,
        user_stacks: args.user_stacks,
        no_waker: args.waker.no_waker,
        sample: false,
        filters: args.filters()?,
        capacity: args.capacity(),
    };
    session::runtime()?.block_on(trace(args, options))
}

/// Where the run is shown.
enum View {
    /// The full-screen view.
    Screen(Box<Tui>),
    /// Lines of text or JSON on standard output.
    Lines(Box<dyn Sink>),
}

/// Lines on standard output, buffered: completed waits are written a batch at a
/// time (one `write` per wake-up, not one per wait), every other output at once.
fn lines(format: Format) -> View {
    View::Lines(sinks::lines(io::BufWriter::new(io::stdout().lock()), format))
}

/// What the run knows and shows.
struct Live {
    view: View,
    board: Board,
    min_duration_ns: u64,
    /// Waits streamed by the kernel side.
    shown: u64,
    /// When tracing began (`None` while loading).
    traced_since: Option<Instant>,
    /// The drops so far, as text, for the status line.
    drops: String,
    /// The tasks in D at the last look.
    in_d: Vec<Wait>,
    /// The recording of `--output`, if any.
    recording: RunRecording,
    /// Notes held back while the full screen is shown, printed after it.
    notes: Vec<String>,
    /// The task filters of the command line, as words (`--comm stat`), for the
    /// status line: what "no task in D" is true of.
    only: String,
}

impl Live {
    /// Handles one completed wait streamed by the kernel side.
    fn completed(&mut self, wait: &Wait) -> io::Result<()> {
        self.board.add_completed(wait);
        self.recording.wait(wait);
        self.shown += 1;
        match &mut self.view {
            View::Lines(sink) => sink.wait(wait),
            View::Screen(_) => Ok(()),
        }
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

    /// Draws the full-screen view afresh with the last look (nothing for the
    /// other views).
    fn draw(&mut self) -> io::Result<()> {
        let View::Screen(tui) = &mut self.view else { return Ok(()) };
        let ongoing = &self.in_d;
        let groups = self.board.groups(ongoing, tui.sort());
        let advice = advise(ongoing);
        // The parts of the status line, the most needed first: what does not fit
        // the width is left out from the end, never the tasks in D (with what
        // they are filtered by, and whether tracing is on yet) or the drops.
        let mut in_d = in_d_text(ongoing);
        if !self.only.is_empty() {
            in_d.push_str(&format!(" (only {})", self.only));
        }
        let tracing = match self.traced_since {
            Some(since) => format!("tracing for {}", human_duration(duration_ns(since.elapsed()))),
            None => {
                in_d.push_str(", loading the eBPF programs...");
                String::new()
            }
        };
        let mut time = local_time_of_day(SystemTime::now());
        // To the second: the status line has little room.
        time.truncate(8);
        let status: Vec<String> = [
            in_d,
            self.drops.trim_start_matches("; ").to_owned(),
            tracing,
            time,
            format!("{} waits of at least {} seen", self.shown, human_duration(self.min_duration_ns)),
            "dstrace run".to_owned(),
        ]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect();
        tui.draw(Screen { groups, status: &status, advice: &advice })
    }
}

async fn trace(args: &RunArgs, options: Options) -> Result<()> {
    let signals = Signals::catch_with_hangup()?;
    let json = args.view.json;
    let view = if !json && !args.plain && tui::available() {
        View::Screen(Box::new(Tui::start().context("cannot take over the terminal (try --plain)")?))
    } else {
        lines(if json { Format::Json } else { Format::Text { stacks: args.view.stacks } })
    };
    let min_duration_ns = duration_ns(args.min_duration);
    let mut live = Live {
        view,
        board: Board::default(),
        min_duration_ns,
        shown: 0,
        traced_since: None,
        drops: "; drops: none".to_owned(),
        in_d: Vec::new(),
        recording: RunRecording::default(),
        notes: Vec::new(),
        only: only_text(args),
    };

    // At once, before anything is loaded: the tasks already in D as `/proc` shows
    // them, on the full screen (lines wait for the look from kernel memory below).
    let mut names = Names::new();
    live.in_d = in_d_now(None, &options, min_duration_ns, &mut names, &mut FirstSeen::default()).0;
    live.draw().context("cannot write to standard output")?;

    let mut session =
        match preflight::check().and_then(|()| Session::start(options, names, signals, args.duration)) {
            Ok(session) => session,
            Err(err) => {
                if let View::Screen(_) = live.view {
                    // Leave the full screen, and keep what it showed.
                    live.view = lines(Format::Text { stacks: false });
                }
                first_screen(&mut live)?;
                return Err(err);
            }
        };
    session.keep_ended_processes();
    live.recording = RunRecording::start(args.recording.file(), Some(args.interval), args.min_duration)?;
    let recording_notes = live.recording.notes();
    live.note(recording_notes);
    live.note(session.settle(Needs { write_files: args.recording.output.is_some() }));
    live.traced_since = Some(session.since);
    if !json {
        // With --json, `start` says what is not recorded.
        live.note(session.skipped_notes(args.view.verbose));
    }
    if session.hidden_symbols {
        live.note([
            "warning: /proc/kallsyms hides kernel addresses (kernel.kptr_restrict); stacks show as raw addresses"
                .to_owned(),
        ]);
    }
    // The first screen: every task already in D, read from kernel memory.
    live.in_d = session.in_d_now(min_duration_ns);
    live.note(session.notes());
    first_screen(&mut live).context("cannot write to standard output")?;
    if let View::Lines(sink) = &mut live.view {
        let start =
            Start { program: session.tracer.program, min_duration_ns, skipped: &session.tracer.skipped };
        sink.start(&start)?;
    }

    let keys = matches!(live.view, View::Screen(_)).then(tui::keys);
    let outcome =
        follow(args, &mut session, &mut live, keys).await.context("cannot write to standard output");
    if live.recording.is_recording() {
        live.in_d = session.in_d_now(min_duration_ns);
    }
    let names = &mut session.names;
    live.recording.finish(&session.tracer, &mut names.stacks, &mut names.mounts, &live.in_d);
    if let View::Screen(_) = live.view {
        // Back to the normal screen (dropping the full-screen view restores the
        // terminal) for the notes held back and the summary, which stay on it.
        live.view = lines(Format::Text { stacks: false });
        let held = std::mem::take(&mut live.notes);
        live.note(held);
    }
    let recording_notes = live.recording.notes();
    live.note(recording_notes);
    // A failed write (a closed pipe) fails the summary too: the first error is
    // the one that counts.
    let summarized = summarize(&mut live, &mut session);
    outcome.and(summarized)
}

/// The task filters of the command line, short (`--comm stat,df --pid 7`): for
/// people, not for pasting (the status line has little room), or nothing.
fn only_text(args: &RunArgs) -> String {
    let numbers = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>();
    let mut words = Vec::new();
    for (flag, values) in [
        ("--pid", numbers(&args.pid)),
        ("--tid", numbers(&args.tid)),
        ("--comm", args.comm.clone()),
        ("--cgroup", args.cgroup.clone()),
    ] {
        if !values.is_empty() {
            words.push(format!("{flag} {}", values.join(",")));
        }
    }
    words.join(" ")
}

/// The first view: the tasks in D before tracing (the last look).
fn first_screen(live: &mut Live) -> io::Result<()> {
    match &mut live.view {
        View::Screen(_) => live.draw(),
        View::Lines(sink) => {
            let title = format!(
                "Already in D when tracing started: {} (the ages are lower bounds)",
                in_d_text(&live.in_d)
            );
            sink.ongoing(&title, &live.in_d)
        }
    }
}

/// The summary at the end, on standard output.
fn summarize(live: &mut Live, session: &mut Session) -> Result<()> {
    let ongoing = session.in_d_now(live.min_duration_ns);
    // The kernel's counters started at zero: one full read is the whole run.
    let aggregates = Aggregator::default().delta(session.tracer.aggregates());
    let by_process = by_process(&aggregates, &session.tracer, &mut session.names.stacks);
    let summary = Summary {
        advice: advise_once(&ongoing),
        groups: live.board.groups(&ongoing, SortBy::InD),
        shown: live.shown,
        min_duration_ns: live.min_duration_ns,
        counters: session.tracer.counters()?,
        bad_records: session.bad_records,
        by_process,
        ongoing,
    };
    let View::Lines(sink) = &mut live.view else { return Ok(()) };
    sink.summary(&summary).context("cannot write the summary")
}

/// What `run` waits for besides the session's own wake-ups.
enum Input {
    /// A key of the full-screen view (`None`: the keyboard is gone).
    Key(Option<KeyEvent>),
    /// Time to check the drop counters.
    DropCheck,
    /// Time to look at the tasks in D again and show them.
    Refresh,
    /// Time to write the recording's interval.
    Record,
}

/// Follows the waits until Ctrl-C (or `q`), SIGTERM or the end of `--duration`.
async fn follow(
    args: &RunArgs,
    session: &mut Session,
    live: &mut Live,
    mut keys: Option<UnboundedReceiver<KeyEvent>>,
) -> Result<()> {
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
    live.in_d = session.in_d_now(live.min_duration_ns);
    live.draw()?;
    loop {
        let input = async {
            tokio::select! {
                key = next_key(keys.as_mut()) => Input::Key(key),
                _ = drop_check.tick() => Input::DropCheck,
                _ = next_tick(refresh.as_mut()) => Input::Refresh,
                _ = next_tick(record_ticks.as_mut()) => Input::Record,
            }
        };
        match session.next(input).await? {
            Wake::Stop => break,
            Wake::Waits => drain(session, live)?,
            Wake::Input(Input::Key(key)) => {
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
            Wake::Input(Input::DropCheck) => {
                let counters = session.tracer.counters().unwrap_or_default();
                let total: u64 = counters.iter().filter(|(c, _)| c.is_drop()).map(|&(_, n)| n).sum();
                live.drops = drops_text(&counters, session.bad_records);
                if total > drops_seen && matches!(live.view, View::Lines(_)) {
                    eprintln!("dstrace: warning: the kernel side lost data{}", live.drops);
                }
                drops_seen = total;
            }
            Wake::Input(Input::Refresh) => {
                live.in_d = session.in_d_now(live.min_duration_ns);
                live.note(session.notes());
                let ongoing = &live.in_d;
                match &mut live.view {
                    View::Screen(_) => live.draw()?,
                    View::Lines(sink) => {
                        let aggregates = interval_aggregator.delta(session.tracer.aggregates());
                        let by_process = by_process(&aggregates, &session.tracer, &mut session.names.stacks);
                        let groups = live.board.groups(ongoing, SortBy::InD);
                        let advice = advise(ongoing);
                        let seconds = interval_start.elapsed().as_secs_f64();
                        interval_start = Instant::now();
                        sink.update(&Update {
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
            Wake::Input(Input::Record) => {
                // The tasks in D at the interval's end go into it: a look now.
                live.in_d = session.in_d_now(live.min_duration_ns);
                let names = &mut session.names;
                live.recording.interval(&session.tracer, &mut names.stacks, &mut names.mounts, &live.in_d);
                let notes = live.recording.notes();
                live.note(notes);
            }
        }
    }
    // What arrived between the last wake-up and the stop.
    drain(session, live)
}

/// Handles every completed wait waiting in the ring buffer, then writes out the
/// lines.
fn drain(session: &mut Session, live: &mut Live) -> Result<()> {
    session.drain(|wait| Ok(live.completed(wait)?))?;
    match &mut live.view {
        View::Lines(sink) => Ok(sink.flush()?),
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

/// The next key, if keys are read; never, otherwise.
async fn next_key(keys: Option<&mut UnboundedReceiver<KeyEvent>>) -> Option<KeyEvent> {
    match keys {
        Some(keys) => keys.recv().await,
        None => std::future::pending().await,
    }
}
