//! Recording while tracing: `dstrace record`, and `dstrace run --output`.
//!
//! A [`Recorder`] is fed what a trace loop sees: each completed wait above the
//! threshold ([`Recorder::wait`]) and, once per interval, the in-kernel aggregation
//! ([`Recorder::interval`], which takes its own difference from the previous read,
//! independent of any other reader). It writes one frame per interval to a
//! [`crate::recording`] file, so a crash loses at most the interval in progress.
//!
//! # In a trace loop
//!
//! `dstrace run` holds a [`RunRecording`] (nothing when `--output` is not given)
//! and makes five calls, each a no-op without a recording, none failing (a write
//! error is one warning, and the recording stops):
//!
//! ```text
//! let mut recording = RunRecording::start(&args.recording, args.interval, args.min_duration)?;
//! let mut ticks = recording.ticks();                 // Option<tokio::time::Interval>
//! recording.wait(&wait);                             // each completed wait shown
//! recording.interval(&tracer, &mut stacks, &mut mounts);  // on each tick
//! recording.finish(&tracer, &mut stacks, &mut mounts);    // once, after the last drain
//! ```
//!
//! Aggregated rows carry a mount and a lock label where one is known: the lock
//! from the row's cause (named as the waits streamed for it name it), the mount
//! from the cause's device, or else from the waits of the same process and stack.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use clap::Args;
use dstrace_common::{AggKey, Cause, CAUSE_DENTRY, CAUSE_LOCK};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::Instant,
};

use crate::{
    aggregate::{Aggregator, Totals},
    attribution::MountTable,
    cli::parse_duration,
    clock::{duration_ns, human_duration, Clock},
    events::decode_wait,
    loader::{Options, Tracer},
    preflight,
    record::{comm_string, lock_info, Resolver, Wait},
    recording::{unix_ns, FileOptions, IntervalData, RowData, Session, Writer},
    symbols::{Kallsyms, Stack, Stacks},
};

/// Waits buffered before they are written without waiting for the interval's end.
const MAX_BUFFERED_WAITS: usize = 10_000;

/// Labels remembered from waits (mount by process and stack, lock names) at most:
/// past it they are forgotten and learnt again, so a recording of days stays
/// within bounded memory.
const MAX_LABELS: usize = 65_536;

/// The size cap and rotation of recording files (`record` and `run --output`).
#[derive(Clone, Debug, Args)]
pub struct FileCapArgs {
    /// Largest size of one recording file (e.g. 100MiB, 1GiB, 500k); past it the
    /// file is rotated.
    #[arg(long, value_name = "SIZE", default_value = "100MiB", value_parser = parse_size)]
    pub max_size: u64,

    /// Full files kept besides the current one (FILE.1 is the newest); 0: stop
    /// recording when the file is full.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub rotate: u32,
}

/// `dstrace run`'s options for writing a recording beside the live view.
#[derive(Clone, Debug, Args)]
pub struct RunOutputArgs {
    /// Also write a recording to FILE (as `dstrace record` does), every --interval
    /// or every 10s; read it with `dstrace report`.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub caps: FileCapArgs,
}

/// Options of `dstrace record`.
#[derive(Clone, Debug, Args)]
pub struct RecordArgs {
    /// The recording file: created with mode 0600, or appended to if it is a
    /// recording already; never a symbolic link.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: PathBuf,

    /// Write what was aggregated every this long (a crash loses at most one).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Record waits at least this long one by one (all are aggregated).
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = parse_duration)]
    pub min_duration: Duration,

    /// Stop after this long (e.g. 1h); default: until Ctrl-C or SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Also record TASK_IDLE waits (idle kernel threads).
    #[arg(long)]
    pub include_idle: bool,

    #[command(flatten)]
    pub caps: FileCapArgs,
}

/// Parses a size: bytes, or with a unit (k, M, G: powers of 1024; KiB, MiB, GiB
/// and KB, MB, GB alike).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a size (examples: 100MiB, 1GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{text:?}: unknown unit (examples: 100MiB, 1GiB, 500k)")),
    };
    let size = number.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))?;
    if size < 4096 {
        return Err(format!("{text:?}: a recording file needs at least 4 KiB"));
    }
    Ok(size)
}

/// Labels of aggregated rows, learnt from the waits seen (completed or ongoing):
/// the mount of each process and stack, the name and kind of each lock.
#[derive(Default)]
pub struct RowLabels {
    /// Mount points of the waits seen, by process and stack.
    mount_of: HashMap<(u32, Stack), String>,
    /// Names and kinds of the locks seen, by address.
    locks: HashMap<u64, (String, &'static str)>,
}

impl RowLabels {
    /// Learns the labels of a wait.
    pub fn learn(&mut self, wait: &Wait) {
        if self.mount_of.len() >= MAX_LABELS {
            self.mount_of.clear();
        }
        if self.locks.len() >= MAX_LABELS {
            self.locks.clear();
        }
        if let Some(mount) = &wait.on.mount {
            self.mount_of
                .entry((wait.pid, wait.stack.clone()))
                .or_insert_with(|| mount.mount_point.to_string_lossy().into_owned());
        }
        if let Some(lock) = &wait.lock {
            self.locks.entry(lock.addr).or_insert_with(|| (lock.name(), lock.kind));
        }
    }

    /// An aggregated entry with its stack resolved and its labels, and the kind of
    /// the lock it waits for ([`crate::record::LockInfo::kind`]), if one.
    pub fn row(
        &self,
        key: &AggKey,
        totals: &Totals,
        tracer: &Tracer,
        stacks: &mut Stacks,
        mounts: &mut MountTable,
    ) -> (RowData, Option<&'static str>) {
        let stack = stacks.kernel(&tracer.stacks, key.kstack_id);
        let mount = match key.cause_dev {
            0 => None,
            dev => mounts.by_dev(dev).map(|mount| mount.mount_point.to_string_lossy().into_owned()),
        }
        .or_else(|| self.mount_of.get(&(key.tgid, stack.clone())).cloned());
        let lock = (key.cause_kind == CAUSE_LOCK || key.cause_kind == CAUSE_DENTRY)
            .then(|| {
                self.locks.get(&key.cause_key).cloned().or_else(|| {
                    let cause =
                        Cause { kind: key.cause_kind, key: key.cause_key, dev: key.cause_dev, ..Cause::NONE };
                    lock_info(&cause, false).map(|lock| (lock.name(), lock.kind))
                })
            })
            .flatten();
        let (lock, kind) = match lock {
            Some((name, kind)) => (Some(name), Some(kind)),
            None => (None, None),
        };
        let row =
            RowData { pid: key.tgid, comm: comm_string(&key.comm), stack, mount, lock, totals: *totals };
        (row, kind)
    }
}

/// Writes what a trace loop sees to a recording.
pub struct Recorder {
    writer: Writer,
    aggregator: Aggregator,
    waits: Vec<Wait>,
    start: SystemTime,
    period: Duration,
    labels: RowLabels,
    /// Intervals written.
    pub intervals: u64,
    /// Waits written one by one.
    pub waits_written: u64,
}

impl Recorder {
    /// Opens the file (see [`crate::recording`] for how) and starts a session.
    pub fn create(
        path: PathBuf,
        caps: &FileCapArgs,
        period: Duration,
        min_duration: Duration,
    ) -> Result<Recorder> {
        let read = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/kernel/{name}")).unwrap_or_default().trim().to_owned()
        };
        let start = SystemTime::now();
        let session = Session {
            started_ns: unix_ns(start),
            dstrace: env!("CARGO_PKG_VERSION").to_owned(),
            hostname: read("hostname"),
            kernel: read("osrelease"),
            interval_ns: duration_ns(period),
            min_duration_ns: duration_ns(min_duration),
        };
        let options = FileOptions { path, max_size: caps.max_size, rotate: caps.rotate };
        Ok(Recorder {
            writer: Writer::open(options, session)?,
            aggregator: Aggregator::default(),
            waits: Vec::new(),
            start,
            period,
            labels: RowLabels::default(),
            intervals: 0,
            waits_written: 0,
        })
    }

    /// Ticks every interval, the first one interval from now.
    pub fn ticks(&self) -> tokio::time::Interval {
        crate::run::ticks(self.period)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.writer.written
    }

    /// Takes a completed wait; it is written with its interval.
    pub fn wait(&mut self, wait: &Wait) -> Result<()> {
        self.labels.learn(wait);
        self.waits.push(wait.clone());
        if self.waits.len() >= MAX_BUFFERED_WAITS {
            // A storm: write the waits now, the aggregation at the interval's end.
            let data = IntervalData {
                start: self.start,
                end: SystemTime::now(),
                rows: Vec::new(),
                waits: std::mem::take(&mut self.waits),
                counters: Vec::new(),
            };
            self.write(&data)?;
        }
        Ok(())
    }

    /// Ends an interval: reads the aggregation and writes it with the waits.
    pub fn interval(&mut self, tracer: &Tracer, stacks: &mut Stacks, mounts: &mut MountTable) -> Result<()> {
        let entries = self.aggregator.delta(tracer.aggregates());
        let rows = entries
            .iter()
            .map(|(key, totals)| self.labels.row(key, totals, tracer, stacks, mounts).0)
            .collect();
        self.interval_of(rows, tracer)
    }

    /// Ends an interval with these rows (read and labelled by the caller, who then
    /// reads the aggregation for other uses too: `dstrace daemon`).
    pub fn interval_of(&mut self, rows: Vec<RowData>, tracer: &Tracer) -> Result<()> {
        let counters = tracer
            .counters()
            .unwrap_or_default()
            .into_iter()
            .map(|(counter, n)| (counter.name().to_owned(), n))
            .collect();
        let end = SystemTime::now();
        let data =
            IntervalData { start: self.start, end, rows, waits: std::mem::take(&mut self.waits), counters };
        self.start = end;
        self.intervals += 1;
        self.write(&data)
    }

    fn write(&mut self, data: &IntervalData) -> Result<()> {
        self.waits_written += data.waits.len() as u64;
        self.writer.write_interval(data)
    }

    /// Writes the last interval.
    pub fn finish(
        mut self,
        tracer: &Tracer,
        stacks: &mut Stacks,
        mounts: &mut MountTable,
    ) -> Result<Recorder> {
        self.interval(tracer, stacks, mounts)?;
        Ok(self)
    }

    /// The file written.
    pub fn path(&self) -> &std::path::Path {
        self.writer.path()
    }
}

/// The recording of `dstrace run --output`: a write error is a warning (the live
/// view goes on) and ends the recording. What it has to say (where it records, a
/// warning, what it wrote) waits in [`RunRecording::notes`] for the run to show
/// when it can: not in the middle of the full-screen view.
#[derive(Default)]
pub struct RunRecording {
    recorder: Option<Recorder>,
    notes: Vec<String>,
}

impl RunRecording {
    /// Starts recording if `--output` was given.
    pub fn start(
        args: &RunOutputArgs,
        interval: Option<Duration>,
        min_duration: Duration,
    ) -> Result<RunRecording> {
        let Some(path) = &args.output else { return Ok(RunRecording::default()) };
        let period = interval.filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(10));
        let recorder = Recorder::create(path.clone(), &args.caps, period, min_duration)?;
        let note = format!("recording to {} every {}", path.display(), human_duration(duration_ns(period)));
        Ok(RunRecording { recorder: Some(recorder), notes: vec![note] })
    }

    /// What it has to say since the last call, one line each.
    pub fn notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// The recording's interval ticks, if recording.
    pub fn ticks(&self) -> Option<tokio::time::Interval> {
        self.recorder.as_ref().map(Recorder::ticks)
    }

    /// See [`Recorder::wait`].
    pub fn wait(&mut self, wait: &Wait) {
        let result = self.recorder.as_mut().map(|recorder| recorder.wait(wait));
        self.check(result);
    }

    /// See [`Recorder::interval`].
    pub fn interval(&mut self, tracer: &Tracer, stacks: &mut Stacks, mounts: &mut MountTable) {
        let result = self.recorder.as_mut().map(|recorder| recorder.interval(tracer, stacks, mounts));
        self.check(result);
    }

    /// Writes the last interval.
    pub fn finish(&mut self, tracer: &Tracer, stacks: &mut Stacks, mounts: &mut MountTable) {
        self.interval(tracer, stacks, mounts);
        if let Some(recorder) = self.recorder.take() {
            self.notes.push(written_line(&recorder));
        }
    }

    fn check(&mut self, result: Option<Result<()>>) {
        if let Some(Err(err)) = result {
            self.notes.push(format!("warning: recording stopped: {err:#}"));
            self.recorder = None;
        }
    }
}

pub(crate) fn written_line(recorder: &Recorder) -> String {
    format!(
        "recorded {} intervals and {} waits ({} bytes) to {}; read it with `dstrace report {}`",
        recorder.intervals,
        recorder.waits_written,
        recorder.written(),
        recorder.path().display(),
        recorder.path().display()
    )
}

/// Runs `dstrace record` to completion.
pub fn record(args: &RecordArgs) -> Result<()> {
    preflight::check()?;
    if args.interval.is_zero() {
        anyhow::bail!("--interval 0: give a recording interval such as 10s");
    }
    let options =
        Options { min_duration: args.min_duration, include_idle: args.include_idle, ..Options::default() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(record_loop(args, &options))
}

async fn record_loop(args: &RecordArgs, options: &Options) -> Result<()> {
    // Signals are caught from the start: one that comes while loading ends the
    // recording as soon as it is loaded, with the session written and closed.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    // The file first: a bad path fails before anything is loaded.
    let mut recorder = Recorder::create(args.output.clone(), &args.caps, args.interval, args.min_duration)?;
    let mut tracer = Tracer::load(options)?;
    let events = tracer.take_events()?;
    let mut stacks = Stacks::new(Kallsyms::from_proc()?);
    let needs = crate::privileges::Needs { write_files: true };
    for note in crate::privileges::settle_after_attach(&tracer, needs) {
        eprintln!("dstrace: {note}");
    }
    let mut mounts = MountTable::read();
    let clock = Clock::now();
    for what in &tracer.skipped {
        eprintln!("dstrace: not recorded on this kernel: {what}");
    }
    eprintln!(
        "dstrace: recording to {} every {} (waits of at least {} one by one); Ctrl-C stops",
        args.output.display(),
        human_duration(duration_ns(args.interval)),
        human_duration(duration_ns(args.min_duration))
    );

    // SAFETY: the ring buffer owns its map fd, which stays open and the same for as
    // long as the `AsyncFd` owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }?;
    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut ticks = recorder.ticks();
    let mut bad_records = 0;
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = crate::run::sleep_until(deadline) => break,
            _ = ticks.tick() => recorder.interval(&tracer, &mut stacks, &mut mounts)?,
            ready = ring.readable_mut() => {
                let mut guard = ready?;
                bad_records += drain(guard.get_inner_mut(), &tracer, &mut stacks, &mut mounts, &clock, |wait| {
                    recorder.wait(wait).context("cannot record")
                })?;
                guard.clear_ready();
            }
        }
    }
    bad_records += drain(ring.get_mut(), &tracer, &mut stacks, &mut mounts, &clock, |wait| {
        recorder.wait(wait).context("cannot record")
    })?;
    let recorder = recorder.finish(&tracer, &mut stacks, &mut mounts)?;
    let drops = crate::output::drops_text(&tracer.counters().unwrap_or_default(), bad_records);
    eprintln!("dstrace: {}{drops}", written_line(&recorder));
    Ok(())
}

/// Hands every wait waiting in the ring buffer to `each`; returns how many records
/// could not be decoded.
pub(crate) fn drain(
    ring: &mut RingBuf<MapData>,
    tracer: &Tracer,
    stacks: &mut Stacks,
    mounts: &mut MountTable,
    clock: &Clock,
    mut each: impl FnMut(&Wait) -> Result<()>,
) -> Result<u64> {
    let mut bad = 0;
    while let Some(item) = ring.next() {
        let Ok(event) = decode_wait(&item) else {
            bad += 1;
            continue;
        };
        let mut resolver = Resolver { stacks, stack_map: &tracer.stacks, clock, mounts };
        let wait = Wait::completed(&event, &mut resolver);
        each(&wait)?;
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("500k"), Ok(500 << 10));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("12").unwrap_err().contains("at least 4 KiB"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999999G").unwrap_err().contains("too large"));
    }
}
