//! `dstrace daemon`: always on, on every host. Traces at the lowest overhead
//! setting, keeps a bounded recording on disk, serves Prometheus metrics and,
//! optionally, pushes profiles to Pyroscope.
//!
//! Lowest overhead: only waits of at least `min-duration` (default 1 s) are
//! streamed through the ring buffer; every other wait costs only the kernel's
//! aggregation, which userspace reads when Prometheus scrapes, when a recording
//! interval ends and when a profile is pushed. One read serves all three: its
//! differences ([`crate::aggregate::Aggregator`]) go to the metrics' histogram at
//! once and are summed, until written or pushed, for the recording and the
//! profile. Entries of processes that have ended are removed from the kernel's
//! map once read, so that months of short-lived processes do not fill it.
//!
//! Signals: SIGTERM or SIGINT writes the last interval and exits 0 (the programs
//! leave the kernel with the process's file descriptors, even on SIGKILL); SIGHUP
//! reads the configuration file again ([`crate::config`] says which keys apply
//! at once) and reopens the recording (after logrotate or a move, a new file).

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::SystemTime,
};

use anyhow::{Context as _, Result};
use dstrace_common::AggKey;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    aggregate::{Aggregator, Totals},
    attribution::MountTable,
    clock::{duration_ns, Clock},
    config::{self, Config, DaemonArgs},
    endpoint::{self, Limits, Scrape},
    loader::{Options, Tracer},
    metrics::{Metrics, Now},
    preflight,
    pyroscope::Target,
    record::Wait,
    recorder::{drain, written_line, FileCapArgs, Recorder, RowLabels},
    recording::RowData,
    report::{profile, Weight},
    symbols::{Kallsyms, Stacks},
};

/// Runs `dstrace daemon` until SIGTERM or SIGINT.
pub fn daemon(args: &DaemonArgs) -> Result<()> {
    let config = config::load(args)?;
    preflight::check()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(args, config))
}

/// What the daemon holds.
struct Daemon {
    config: Config,
    options: Options,
    tracer: Tracer,
    stacks: Stacks,
    mounts: MountTable,
    clock: Clock,
    aggregator: Aggregator,
    labels: RowLabels,
    metrics: Metrics,
    /// `None` after a write error, until a reopen succeeds.
    recorder: Option<Recorder>,
    /// Completed waits read since the last recording interval.
    pending_record: HashMap<AggKey, Totals>,
    /// Completed waits read since the last profile pushed.
    pending_profile: HashMap<AggKey, Totals>,
    profile_start: SystemTime,
    pyroscope: Option<Target>,
    /// Whether the last push failed (so that a failing server is reported once).
    push_failing: Arc<AtomicBool>,
    host: String,
}

async fn serve(args: &DaemonArgs, config: Config) -> Result<()> {
    // Signals first: one that came while loading would otherwise end the process
    // without its last interval.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    // The socket and the file before the programs: a port in use or a bad path
    // fails before anything is loaded.
    let listener = endpoint::bind(config.listen).await?;
    let recorder = open_recording(&config)?;
    let options = Options {
        min_duration: config.min_duration,
        include_idle: config.include_idle,
        ..Options::default()
    };
    let mut tracer = Tracer::load(&options)?;
    // Symbols are read after loading (the programs' own frames resolve then) and
    // before the capabilities go (kernel.kptr_restrict may hide addresses from a
    // process without them).
    let stacks = Stacks::new(Kallsyms::from_proc()?);
    // The programs are loaded and attached, the socket is bound, the recording is
    // open: the capabilities nothing later needs are dropped (rotating or reopening
    // the recording on SIGHUP needs write access to its directory).
    let needs = crate::privileges::Needs { write_files: true };
    for note in crate::privileges::settle_after_attach(&tracer, needs) {
        eprintln!("dstrace: {note}");
    }
    let events = tracer.take_events()?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
    let pyroscope = config.pyroscope_url.as_deref().map(|url| Target::parse(url, &host)).transpose()?;
    let mut daemon = Daemon {
        metrics: Metrics::new(config.max_mounts, config.max_functions),
        options,
        tracer,
        stacks,
        mounts: MountTable::read(),
        clock: Clock::now(),
        aggregator: Aggregator::default(),
        labels: RowLabels::default(),
        recorder: Some(recorder),
        pending_record: HashMap::new(),
        pending_profile: HashMap::new(),
        profile_start: SystemTime::now(),
        pyroscope,
        push_failing: Arc::new(AtomicBool::new(false)),
        host,
        config,
    };
    for what in &daemon.tracer.skipped {
        eprintln!("dstrace: not recorded on this kernel: {what}");
    }
    eprintln!("dstrace: daemon: {}", daemon.config.describe());

    let limits = Limits {
        max_connections: daemon.config.max_connections,
        request_timeout: daemon.config.request_timeout,
    };
    let (scrape_send, mut scrapes) = mpsc::channel::<Scrape>(daemon.config.max_connections as usize);
    let server = tokio::spawn(endpoint::serve(listener, limits, scrape_send));
    // SAFETY: the ring buffer owns its map fd, which stays open and the same for as
    // long as the `AsyncFd` owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }?;
    let mut record_ticks = crate::run::ticks(daemon.config.interval);
    let mut push_ticks = crate::run::ticks(daemon.config.pyroscope_interval);
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => {
                let (interval, push) = (daemon.config.interval, daemon.config.pyroscope_interval);
                daemon.reload(args);
                if daemon.config.interval != interval {
                    record_ticks = crate::run::ticks(daemon.config.interval);
                }
                if daemon.config.pyroscope_interval != push {
                    push_ticks = crate::run::ticks(daemon.config.pyroscope_interval);
                }
            }
            ready = ring.readable_mut() => {
                let mut guard = ready?;
                daemon.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            Some(scrape) = scrapes.recv() => {
                let text = daemon.scrape();
                let _ = scrape.send(text);
            }
            _ = record_ticks.tick() => daemon.record_interval(),
            _ = push_ticks.tick(), if daemon.pyroscope.is_some() => daemon.push_profile(),
        }
    }
    server.abort();
    daemon.drain(ring.get_mut());
    daemon.read_aggregates();
    daemon.write_interval();
    if let Some(recorder) = &daemon.recorder {
        eprintln!("dstrace: {}", written_line(recorder));
    }
    Ok(())
}

/// Opens the recording of `config`, creating the default directory (0700) if
/// needed.
fn open_recording(config: &Config) -> Result<Recorder> {
    let default = Path::new(config::DEFAULT_RECORDING);
    if config.recording == default {
        if let Some(dir) = default.parent().filter(|dir| !dir.exists()) {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    let caps = FileCapArgs { max_size: config.max_size, rotate: config.rotate };
    Recorder::create(config.recording.clone(), &caps, config.interval, config.min_duration)
}

impl Daemon {
    /// Handles every wait streamed (those of at least `min-duration`).
    fn drain(&mut self, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) {
        self.mounts.refresh_if_changed();
        let Daemon { tracer, stacks, mounts, clock, labels, recorder, .. } = self;
        let mut failed = None;
        let bad = drain(ring, tracer, stacks, mounts, clock, |wait: &Wait| {
            labels.learn(wait);
            if let Some(recorder) = recorder.as_mut() {
                if let Err(err) = recorder.wait(wait) {
                    failed = Some(err);
                }
            }
            Ok(())
        });
        self.metrics.bad_records += bad.unwrap_or(0);
        if let Some(err) = failed {
            self.recording_failed(&err);
        }
    }

    /// Reads the kernel's aggregation: the histogram gets what is new at once,
    /// the recording and the profile when they are written.
    fn read_aggregates(&mut self) {
        self.mounts.refresh_if_changed();
        for (key, totals) in self.aggregator.delta(self.tracer.aggregates()) {
            let (row, kind) =
                self.labels.row(&key, &totals, &self.tracer, &mut self.stacks, &mut self.mounts);
            self.metrics.add(&row, kind);
            if self.recorder.is_some() {
                self.pending_record.entry(key).or_default().add(&totals);
            }
            if self.pyroscope.is_some() {
                self.pending_profile.entry(key).or_default().add(&totals);
            }
        }
    }

    /// The tasks in D now, for at least `min-duration`.
    fn in_d(&mut self) -> Vec<Wait> {
        let min_ns = duration_ns(self.config.min_duration);
        let mut waits = crate::run::in_d_now(
            Some(&self.tracer),
            &self.options,
            min_ns,
            &mut self.stacks,
            &mut self.mounts,
            &self.clock,
        );
        waits.retain(|wait| wait.duration_ns >= min_ns);
        waits
    }

    /// The metrics text of a scrape.
    fn scrape(&mut self) -> String {
        let in_d = self.in_d();
        for wait in &in_d {
            self.labels.learn(wait);
        }
        self.read_aggregates();
        let counters = self.tracer.counters().unwrap_or_default();
        let usage = crate::procfs::usage(std::process::id()).unwrap_or_default();
        self.metrics.render(&Now { in_d: &in_d, counters: &counters, usage })
    }

    /// The end of a recording interval.
    fn record_interval(&mut self) {
        for wait in self.in_d() {
            self.labels.learn(&wait);
        }
        self.read_aggregates();
        self.write_interval();
        self.forget_ended_processes();
    }

    /// Writes the rows read since the last interval, reopening first a recording
    /// that failed.
    fn write_interval(&mut self) {
        if self.recorder.is_none() {
            if let Ok(recorder) = open_recording(&self.config) {
                eprintln!("dstrace: recording again to {}", recorder.path().display());
                self.recorder = Some(recorder);
            }
        }
        self.write_pending();
    }

    /// Writes the rows read since the last interval, if recording.
    fn write_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending_record);
        let rows = self.labelled(pending);
        let Some(recorder) = self.recorder.as_mut() else { return };
        if let Err(err) = recorder.interval_of(rows, &self.tracer) {
            self.recording_failed(&err);
        }
    }

    fn labelled(&mut self, pending: HashMap<AggKey, Totals>) -> Vec<RowData> {
        pending
            .iter()
            .map(|(key, totals)| {
                self.labels.row(key, totals, &self.tracer, &mut self.stacks, &mut self.mounts).0
            })
            .collect()
    }

    fn recording_failed(&mut self, err: &anyhow::Error) {
        eprintln!("dstrace: warning: recording stopped (retried every interval and on SIGHUP): {err:#}");
        self.recorder = None;
        self.pending_record.clear();
    }

    /// Removes the aggregation entries of processes that have ended (read
    /// already: their waits are in the metrics and pending for the recording).
    fn forget_ended_processes(&mut self) {
        let ended: Vec<AggKey> = self
            .aggregator
            .keys()
            .filter(|key| key.tgid != 0 && !Path::new(&format!("/proc/{}", key.tgid)).exists())
            .copied()
            .collect();
        if ended.is_empty() {
            return;
        }
        self.tracer.remove_aggregates(&ended);
        for key in &ended {
            self.aggregator.forget(key);
        }
    }

    /// Pushes the profile of blocked time since the last push.
    fn push_profile(&mut self) {
        let Some(target) = self.pyroscope.clone() else { return };
        self.read_aggregates();
        let pending = std::mem::take(&mut self.pending_profile);
        let rows = self.labelled(pending);
        let (from, until) = (self.profile_start, SystemTime::now());
        self.profile_start = until;
        if rows.is_empty() {
            return;
        }
        let body = match profile(&rows, Some((from, until)), Weight::Time) {
            Ok(body) => body,
            Err(err) => {
                eprintln!("dstrace: warning: cannot build the profile to push: {err:#}");
                return;
            }
        };
        let failing = self.push_failing.clone();
        tokio::spawn(async move {
            match target.push(body, from, until).await {
                Ok(()) => {
                    if failing.swap(false, Ordering::Relaxed) {
                        eprintln!("dstrace: profiles reach {} again", target.authority);
                    }
                }
                Err(err) => {
                    if !failing.swap(true, Ordering::Relaxed) {
                        eprintln!(
                            "dstrace: warning: cannot push the profile (said once until it works): {err:#}"
                        );
                    }
                }
            }
        });
    }

    /// SIGHUP: reads the configuration again, applies what can be applied, and
    /// reopens the recording.
    fn reload(&mut self, args: &DaemonArgs) {
        match config::load(args) {
            Ok(new) => {
                let (now, restart) = self.config.reloadable_changes(&new);
                if !restart.is_empty() {
                    eprintln!(
                        "dstrace: warning: changed, but only applied on restart: {}",
                        restart.join(", ")
                    );
                }
                if now.iter().any(|key| key.starts_with("pyroscope")) {
                    match new.pyroscope_url.as_deref().map(|url| Target::parse(url, &self.host)).transpose() {
                        Ok(target) => {
                            self.pyroscope = target;
                            self.pending_profile.clear();
                            self.profile_start = SystemTime::now();
                        }
                        Err(err) => eprintln!("dstrace: warning: {err:#}"),
                    }
                }
                self.config = Config {
                    recording: new.recording,
                    interval: new.interval,
                    max_size: new.max_size,
                    rotate: new.rotate,
                    pyroscope_url: new.pyroscope_url,
                    pyroscope_interval: new.pyroscope_interval,
                    ..self.config.clone()
                };
                if !now.is_empty() {
                    eprintln!("dstrace: applied: {}", now.join(", "));
                }
            }
            Err(err) => eprintln!("dstrace: warning: configuration not reloaded: {err:#}"),
        }
        // Reopen: write what the old file is owed, then open the file (again).
        self.read_aggregates();
        self.write_pending();
        self.recorder = None;
        match open_recording(&self.config) {
            Ok(recorder) => self.recorder = Some(recorder),
            Err(err) => self.recording_failed(&err),
        }
        eprintln!("dstrace: daemon: {}", self.config.describe());
    }
}
