//! `dstrace run`: load, attach, and print each completed D wait until told to stop.

use std::{
    io::{self, Write},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf, StackTraceMap};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{Instant, MissedTickBehavior},
};

use crate::{
    cli::RunArgs,
    clock::{duration_ns, Clock},
    events::decode_wait,
    loader::{Options, Tracer},
    output::{drops_text, Format, Printer, Summary},
    preflight,
    record::Wait,
    symbols::{Kallsyms, StackCache},
};

/// How often the drop counters are checked while running.
const DROP_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Runs `dstrace run` to completion.
pub fn run(args: &RunArgs) -> Result<()> {
    preflight::check()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(trace(args))
}

/// Where waits go, with what they need to be resolved.
struct Sink<W: Write> {
    printer: Printer<W>,
    kallsyms: Kallsyms,
    stacks: StackCache,
    clock: Clock,
    shown: u64,
    bad_records: u64,
}

impl<W: Write> Sink<W> {
    /// Handles one ring buffer record.
    fn record(&mut self, bytes: &[u8], stack_map: &StackTraceMap<MapData>) -> io::Result<()> {
        let event = match decode_wait(bytes) {
            Ok(event) => event,
            Err(_) => {
                self.bad_records += 1;
                return Ok(());
            }
        };
        let kallsyms = &self.kallsyms;
        let stack = u32::try_from(event.kstack_id).ok().and_then(|id| {
            self.stacks.get_or_insert(id, || {
                let trace = stack_map.get(&id, 0).ok()?;
                Some(kallsyms.symbolize(trace.frames().iter().map(|frame| frame.ip)))
            })
        });
        let wait = Wait::from_event(&event, stack.unwrap_or_else(|| Vec::new().into()), &self.clock);
        self.shown += 1;
        self.printer.wait(&wait)
    }
}

async fn trace(args: &RunArgs) -> Result<()> {
    let options = Options { min_duration: args.min_duration, include_idle: args.include_idle };
    let mut tracer = Tracer::load(&options)?;
    let events = tracer.take_events()?;
    let kallsyms = Kallsyms::from_proc()?;
    if kallsyms.is_hidden() {
        eprintln!(
            "dstrace: warning: /proc/kallsyms hides kernel addresses (kernel.kptr_restrict); \
             stacks show as raw addresses"
        );
    }
    let format = if args.json { Format::Json } else { Format::Text { stacks: args.stacks } };
    let mut sink = Sink {
        printer: Printer::new(io::stdout().lock(), format),
        kallsyms,
        stacks: StackCache::default(),
        clock: Clock::now(),
        shown: 0,
        bad_records: 0,
    };
    let outcome = stream(args, &tracer, events, &mut sink).await;
    let finished = match outcome {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        Err(err) => Err(err),
    };
    let summary = Summary {
        shown: sink.shown,
        min_duration_ns: duration_ns(args.min_duration),
        counters: tracer.counters()?,
        bad_records: sink.bad_records,
    };
    match sink.printer.summary(&summary) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {}
        other => other.context("cannot write the summary")?,
    }
    finished.context("cannot write to standard output")
}

/// Streams waits until Ctrl-C, SIGTERM or the end of `--duration`.
async fn stream<W: Write>(
    args: &RunArgs,
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

    sink.printer.header(tracer.program, duration_ns(args.min_duration))?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = sleep_until(deadline) => break,
            _ = drop_check.tick() => {
                drops_seen = report_new_drops(tracer, drops_seen);
            }
            ready = ring.readable_mut() => {
                let mut guard = ready?;
                drain(guard.get_inner_mut(), &tracer.stacks, sink)?;
                guard.clear_ready();
            }
        }
    }
    // What arrived between the last wake-up and the stop.
    drain(ring.get_mut(), &tracer.stacks, sink)
}

/// Handles every record waiting in the ring buffer.
fn drain<W: Write>(
    ring: &mut RingBuf<MapData>,
    stack_map: &StackTraceMap<MapData>,
    sink: &mut Sink<W>,
) -> io::Result<()> {
    while let Some(item) = ring.next() {
        sink.record(&item, stack_map)?;
    }
    Ok(())
}

/// Prints a warning when the kernel side lost something since the last check;
/// returns the new total.
fn report_new_drops(tracer: &Tracer, seen: u64) -> u64 {
    let Ok(counters) = tracer.counters() else { return seen };
    let total: u64 = counters.iter().filter(|(counter, _)| counter.is_drop()).map(|&(_, n)| n).sum();
    if total > seen {
        let summary = Summary { shown: 0, min_duration_ns: 0, counters, bad_records: 0 };
        eprintln!("dstrace: warning: the kernel side lost data{}", drops_text(&summary));
    }
    total
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
