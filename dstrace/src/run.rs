//! `dstrace run`: load, attach, list the tasks already in D, then print each
//! completed D wait until told to stop, and a summary at the end.

use std::{
    collections::HashSet,
    io::{self, Write},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{Instant, MissedTickBehavior},
};

use dstrace_common::AggKey;

use crate::{
    aggregate::{group, Aggregator, ByCause, Group, Totals},
    attribution::MountTable,
    chain,
    cli::RunArgs,
    clock::{duration_ns, monotonic_ns, Clock},
    events::decode_wait,
    loader::{Filters, Options, Tracer},
    output::{drops_text, Format, Printer, Summary},
    preflight, procfs,
    record::{ProcNow, Resolver, Wait},
    symbols::{blocking_function, Kallsyms, Stacks},
};

/// How often the drop counters are checked while running.
const DROP_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Runs `dstrace run` to completion.
pub fn run(args: &RunArgs) -> Result<()> {
    preflight::check()?;
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

/// Where waits go, with what they need to be resolved.
struct Sink<W: Write> {
    printer: Printer<W>,
    stacks: Stacks,
    mounts: MountTable,
    by_cause: ByCause,
    clock: Clock,
    shown: u64,
    bad_records: u64,
    recording: crate::recorder::RunRecording,
}

impl<W: Write> Sink<W> {
    /// Handles one ring buffer record.
    fn record(&mut self, bytes: &[u8], tracer: &Tracer) -> io::Result<()> {
        let Ok(event) = decode_wait(bytes) else {
            self.bad_records += 1;
            return Ok(());
        };
        let mut resolver = Resolver {
            stacks: &mut self.stacks,
            stack_map: &tracer.stacks,
            clock: &self.clock,
            mounts: &mut self.mounts,
        };
        let wait = Wait::completed(&event, &mut resolver);
        self.by_cause.add(&wait);
        self.recording.wait(&wait);
        self.shown += 1;
        self.printer.wait(&wait)
    }
}

async fn trace(args: &RunArgs, options: &Options) -> Result<()> {
    let mut tracer = Tracer::load(options)?;
    let events = tracer.take_events()?;
    let kallsyms = Kallsyms::from_proc()?;
    if kallsyms.is_hidden() {
        eprintln!(
            "dstrace: warning: /proc/kallsyms hides kernel addresses (kernel.kptr_restrict); \
             stacks show as raw addresses"
        );
    }
    let format = if args.view.json { Format::Json } else { Format::Text { stacks: args.view.stacks } };
    let mut sink = Sink {
        printer: Printer::new(io::stdout().lock(), format),
        stacks: Stacks::new(kallsyms),
        mounts: MountTable::read(),
        by_cause: ByCause::default(),
        clock: Clock::now(),
        shown: 0,
        bad_records: 0,
        recording: crate::recorder::RunRecording::start(&args.recording, args.interval, args.min_duration)?,
    };
    let min_duration_ns = duration_ns(args.min_duration);
    let outcome = stream(args, options, &tracer, events, &mut sink).await;
    let finished = match outcome {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        Err(err) => Err(err),
    };

    sink.recording.finish(&tracer, &mut sink.stacks, &mut sink.mounts);
    let now_ns = monotonic_ns();
    let context = chain::Context { fuse: tracer.fuse_requests(), now_ns };
    let mut resolver = Resolver {
        stacks: &mut sink.stacks,
        stack_map: &tracer.stacks,
        clock: &sink.clock,
        mounts: &mut sink.mounts,
    };
    let mut ongoing: Vec<Wait> = tracer
        .inflight()
        .iter()
        .map(|(tid, wait)| Wait::ongoing(*tid, wait, now_ns, &mut resolver).with_chain(&context))
        .filter(|wait| wait.duration_ns >= min_duration_ns)
        .collect();
    // Waits that began before tracing and still go on are only in /proc.
    let traced: HashSet<u32> = ongoing.iter().map(|wait| wait.tid).collect();
    ongoing.extend(
        waits_in_proc(options, &mut sink.mounts, &context)
            .into_iter()
            .filter(|wait| !traced.contains(&wait.tid)),
    );
    ongoing.sort_by_key(|wait| std::cmp::Reverse(wait.duration_ns));

    // The kernel's counters started at zero: one full read is the whole run.
    let groups = grouped(&Aggregator::default().delta(tracer.aggregates()), &tracer, &mut sink.stacks);
    for wait in &ongoing {
        sink.by_cause.add(wait);
    }
    let summary = Summary {
        advice: crate::advice::advise(&ongoing),
        by_mount: sink.by_cause.mounts(),
        by_lock: sink.by_cause.locks(),
        shown: sink.shown,
        min_duration_ns,
        counters: tracer.counters()?,
        bad_records: sink.bad_records,
        groups,
        ongoing,
    };
    match sink.printer.summary(&summary) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {}
        other => other.context("cannot write the summary")?,
    }
    finished.context("cannot write to standard output")
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

/// Lists the tasks already in D, then streams waits until Ctrl-C, SIGTERM or the
/// end of `--duration`.
async fn stream<W: Write>(
    args: &RunArgs,
    options: &Options,
    tracer: &Tracer,
    events: RingBuf<MapData>,
    sink: &mut Sink<W>,
) -> io::Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same for as
    // long as the `AsyncFd` owns the ring buffer.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }.map_err(io::Error::from)?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut drop_check = tokio::time::interval(DROP_CHECK_INTERVAL);
    drop_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut drops_seen = 0u64;
    let mut interval = args.interval.filter(|d| !d.is_zero()).map(|period| {
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks
    });
    let mut interval_aggregator = Aggregator::default();
    let mut interval_start = Instant::now();
    let mut record_ticks = sink.recording.ticks();

    let already = waits_in_proc(options, &mut sink.mounts, &chain::Context::default());
    sink.printer.ongoing("Already in D when tracing started (the age is a lower bound):", &already)?;
    if !args.view.json {
        for what in &tracer.skipped {
            eprintln!("dstrace: not recorded on this kernel: {what}");
        }
    }
    sink.printer.header(tracer.program, duration_ns(args.min_duration), &tracer.skipped)?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = sleep_until(deadline) => break,
            _ = drop_check.tick() => {
                drops_seen = report_new_drops(tracer, drops_seen);
            }
            _ = next_tick(interval.as_mut()) => {
                let groups = grouped(&interval_aggregator.delta(tracer.aggregates()), tracer, &mut sink.stacks);
                let seconds = interval_start.elapsed().as_secs_f64();
                interval_start = Instant::now();
                sink.printer.interval(std::time::SystemTime::now(), seconds, &groups)?;
            }
            _ = next_tick(record_ticks.as_mut()) => {
                sink.recording.interval(tracer, &mut sink.stacks, &mut sink.mounts);
            }
            ready = ring.readable_mut() => {
                let mut guard = ready?;
                drain(guard.get_inner_mut(), tracer, sink)?;
                guard.clear_ready();
            }
        }
    }
    // What arrived between the last wake-up and the stop.
    drain(ring.get_mut(), tracer, sink)
}

/// Handles every record waiting in the ring buffer.
fn drain<W: Write>(ring: &mut RingBuf<MapData>, tracer: &Tracer, sink: &mut Sink<W>) -> io::Result<()> {
    while let Some(item) = ring.next() {
        sink.record(&item, tracer)?;
    }
    Ok(())
}

/// Prints a warning when the kernel side lost something since the last check;
/// returns the new total.
fn report_new_drops(tracer: &Tracer, seen: u64) -> u64 {
    let Ok(counters) = tracer.counters() else { return seen };
    let total: u64 = counters.iter().filter(|(counter, _)| counter.is_drop()).map(|&(_, n)| n).sum();
    if total > seen {
        eprintln!("dstrace: warning: the kernel side lost data{}", drops_text(&counters, 0));
    }
    total
}

/// Aggregated entries grouped by process and blocking function.
fn grouped(entries: &[(AggKey, Totals)], tracer: &Tracer, stacks: &mut Stacks) -> Vec<Group> {
    group(entries, |id| {
        let stack = stacks.kernel(&tracer.stacks, id);
        blocking_function(stack.iter().map(String::as_str)).map(str::to_owned)
    })
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

async fn sleep_until(deadline: Option<Instant>) {
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
