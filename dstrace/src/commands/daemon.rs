//! `dstrace daemon`: always on, on every host. Traces at the lowest overhead
//! setting, keeps a bounded recording on disk, serves Prometheus metrics and,
//! optionally, pushes profiles to Pyroscope.
//!
//! Lowest overhead: only waits of at least `min-duration` (default 1 s) are
//! streamed through the ring buffer; every other wait costs only the kernel's
//! aggregation, which userspace reads when Prometheus scrapes, when a recording
//! interval ends and when a profile is pushed. One read serves all three: its
//! differences ([`crate::model::aggregate::Aggregator`]) go to the metrics' histogram at
//! once and are summed, until written or pushed, for the recording and the
//! profile. Entries of processes that have ended are removed from the kernel's
//! map once read, so that months of short-lived processes do not fill it.
//!
//! A mount whose oldest wait passes `stuck-after` gets a line on standard error
//! (the journal, under systemd), again every `stuck-repeat` while it stays, and
//! one when it clears ([`crate::sinks::journal`]): checked at every look at the
//! tasks in D (scrapes, recording intervals) and on a tick of its own, so that
//! the line comes on time with no scraper and a long recording interval.
//!
//! Signals: SIGTERM or SIGINT writes the last interval and exits 0 (the programs
//! leave the kernel with the process's file descriptors, even on SIGKILL); SIGHUP
//! reads the configuration file again ([`crate::cli::daemon`] says which keys apply
//! at once) and reopens the recording (after logrotate or a move, a new file).

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use dstrace_common::AggKey;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    cli::daemon::{self as config, Config, DaemonArgs},
    clock::{duration_ns, ticks},
    commands::session::{self, next_tick, Session, Signals, Wake},
    kernel::{loader::Options, preflight, privileges::Needs},
    model::{
        aggregate::{Aggregator, Totals},
        wait::Wait,
    },
    resolve::{file_locks, Names},
    sinks::{
        endpoint::{self, Limits, Scrape},
        journal::Watch,
        metrics::{Metrics, Now},
        pyroscope::Target,
        recording::{
            recorder::{written_line, Recorder, RowLabels},
            FileOptions, RowData,
        },
        report::{profile, Weight},
    },
};

/// Runs `dstrace daemon` until SIGTERM or SIGINT.
pub fn daemon(args: &DaemonArgs) -> Result<()> {
    let config = config::load(args)?;
    preflight::check()?;
    session::runtime()?.block_on(serve(args, config))
}

/// What the daemon holds.
struct Daemon {
    config: Config,
    session: Session,
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
    /// The mounts said to be stuck on standard error.
    watch: Watch,
}

/// What the daemon waits for besides the session's own wake-ups.
enum Input {
    /// SIGHUP: read the configuration again, reopen the recording.
    Hangup,
    /// Prometheus asks for the metrics.
    Scrape(Scrape),
    /// Time to write the recording's interval.
    Record,
    /// Time to push a profile to Pyroscope.
    Push,
    /// Time to check for stuck mounts.
    Check,
}

async fn serve(args: &DaemonArgs, config: Config) -> Result<()> {
    // Signals first: one that came while loading would otherwise end the process
    // without its last interval.
    let signals = Signals::catch()?;
    let mut hangup = signal(SignalKind::hangup())?;
    // The socket and the file before the programs: a port in use or a bad path
    // fails before anything is loaded.
    let listener = endpoint::bind(config.listen).await?;
    let recorder = open_recording(&config)?;
    let options = Options {
        min_duration: config.min_duration,
        include_idle: config.include_idle,
        // It shows no waker: nothing runs on the machine's wake-ups.
        no_waker: true,
        sample: config.sample.is_some(),
        ..Options::default()
    };
    let session = Session::start(options, Names::new(), signals, None)?;
    // The programs are loaded and attached (symbols read after loading, so that
    // the programs' own frames resolve, and before the capabilities go, since
    // kernel.kptr_restrict may hide addresses from a process without them), the
    // socket is bound, the recording is open: the capabilities nothing later
    // needs are dropped (rotating or reopening the recording on SIGHUP needs
    // write access to its directory).
    for note in session.settle(Needs { write_files: true }) {
        eprintln!("dstrace: {note}");
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
    let pyroscope = config.pyroscope_url.as_deref().map(|url| Target::parse(url, &host)).transpose()?;
    let mut daemon = Daemon {
        metrics: Metrics::new(config.max_mounts, config.max_functions).sampling(config.sample.is_some()),
        session,
        aggregator: Aggregator::default(),
        labels: RowLabels::default(),
        recorder: Some(recorder),
        pending_record: HashMap::new(),
        pending_profile: HashMap::new(),
        profile_start: SystemTime::now(),
        pyroscope,
        push_failing: Arc::new(AtomicBool::new(false)),
        host,
        watch: Watch::new(config.stuck_after, config.stuck_repeat),
        config,
    };
    for note in daemon.session.skipped_notes(true) {
        eprintln!("dstrace: {note}");
    }
    eprintln!("dstrace: daemon: {}", daemon.config.describe());

    let limits = Limits {
        max_connections: daemon.config.max_connections,
        request_timeout: daemon.config.request_timeout,
    };
    let (scrape_send, mut scrapes) = mpsc::channel::<Scrape>(daemon.config.max_connections as usize);
    let server = tokio::spawn(endpoint::serve(listener, limits, scrape_send));
    let mut record_ticks = ticks(daemon.config.interval);
    let mut push_ticks = ticks(daemon.config.pyroscope_interval);
    let mut check_ticks = ticks(daemon.check_period());
    // Tasks already stuck when the daemon starts are said at once.
    daemon.check_stuck();
    loop {
        let pushing = daemon.pyroscope.is_some();
        let input = async {
            tokio::select! {
                _ = hangup.recv() => Input::Hangup,
                Some(scrape) = scrapes.recv() => Input::Scrape(scrape),
                _ = record_ticks.tick() => Input::Record,
                _ = next_tick(pushing.then_some(&mut push_ticks)) => Input::Push,
                _ = check_ticks.tick() => Input::Check,
            }
        };
        match daemon.session.next(input).await? {
            Wake::Stop => break,
            Wake::Waits => daemon.drain(),
            Wake::Input(Input::Hangup) => {
                let (interval, push) = (daemon.config.interval, daemon.config.pyroscope_interval);
                let check = daemon.check_period();
                daemon.reload(args);
                if daemon.check_period() != check {
                    check_ticks = ticks(daemon.check_period());
                }
                if daemon.config.interval != interval {
                    record_ticks = ticks(daemon.config.interval);
                }
                if daemon.config.pyroscope_interval != push {
                    push_ticks = ticks(daemon.config.pyroscope_interval);
                }
            }
            Wake::Input(Input::Scrape(scrape)) => {
                let text = daemon.scrape();
                let _ = scrape.send(text);
            }
            Wake::Input(Input::Record) => daemon.record_interval(),
            Wake::Input(Input::Push) => daemon.push_profile(),
            Wake::Input(Input::Check) => daemon.check_stuck(),
        }
    }
    server.abort();
    daemon.drain();
    daemon.read_aggregates();
    let in_d = daemon.in_d();
    daemon.write_interval(&in_d);
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
    let file =
        FileOptions { path: config.recording.clone(), max_size: config.max_size, rotate: config.rotate };
    Recorder::create(file, config.interval, config.min_duration)
}

impl Daemon {
    /// Handles every wait streamed (those of at least `min-duration`).
    fn drain(&mut self) {
        let Daemon { session, labels, recorder, .. } = self;
        let mut failed = None;
        let drained = session.drain(|wait: &Wait| {
            labels.learn(wait);
            if let Some(recorder) = recorder.as_mut() {
                if let Err(err) = recorder.wait(wait) {
                    failed = Some(err);
                }
            }
            Ok(())
        });
        self.metrics.bad_records = self.session.bad_records;
        // The callback does not fail, so that every record is read whatever
        // happens to the recording; a write error is kept and handled here.
        if let Some(err) = failed.or(drained.err()) {
            self.recording_failed(&err);
        }
    }

    /// Reads the kernel's aggregation: the histogram gets what is new at once,
    /// the recording and the profile when they are written.
    fn read_aggregates(&mut self) {
        let Session { tracer, names, .. } = &mut self.session;
        names.mounts.refresh_if_changed();
        for (key, totals) in self.aggregator.delta(tracer.aggregates()) {
            let (row, kind) = self.labels.row(&key, &totals, tracer, &mut names.stacks, &mut names.mounts);
            self.metrics.add(&row, kind);
            if self.recorder.is_some() {
                self.pending_record.entry(key).or_default().add(&totals);
            }
            if self.pyroscope.is_some() {
                self.pending_profile.entry(key).or_default().add(&totals);
            }
        }
    }

    /// The tasks in D now, for at least `min-duration`, their labels learnt for
    /// the rows of their process and stack; a mount whose oldest passed
    /// `stuck-after` (or stopped being so) is said on standard error.
    fn in_d(&mut self) -> Vec<Wait> {
        let min_ns = duration_ns(self.config.least_age());
        let mut waits = self.session.in_d_now(min_ns);
        for note in self.session.notes() {
            eprintln!("dstrace: {note}");
        }
        waits.retain(|wait| wait.duration_ns >= min_ns);
        let queues = || file_locks::queues(&file_locks::read());
        for line in self.watch.check(&waits, Instant::now(), queues) {
            eprintln!("dstrace: {line}");
        }
        for wait in &waits {
            self.labels.learn(wait);
        }
        waits
    }

    /// How often the tasks in D are looked at besides scrapes and intervals: for
    /// the stuck lines, and each sample.
    fn check_period(&self) -> std::time::Duration {
        let period = self.watch.period();
        self.config.sample.map_or(period, |every| every.min(period))
    }

    /// A look at the tasks in D for the stuck mounts alone (and, sampling, the
    /// sample: the tasks found keep their first-seen time for their ages).
    fn check_stuck(&mut self) {
        self.in_d();
    }

    /// The metrics text of a scrape.
    fn scrape(&mut self) -> String {
        let in_d = self.in_d();
        self.read_aggregates();
        let counters = self.session.tracer.counters().unwrap_or_default();
        let usage = crate::resolve::procfs::usage(std::process::id());
        self.metrics.render(&Now { in_d: &in_d, counters: &counters, usage })
    }

    /// The end of a recording interval.
    fn record_interval(&mut self) {
        let in_d = self.in_d();
        self.read_aggregates();
        self.write_interval(&in_d);
        self.forget_ended_processes();
    }

    /// Writes the rows read since the last interval and the tasks in D now
    /// (`in_d`), reopening first a recording that failed.
    fn write_interval(&mut self, in_d: &[Wait]) {
        if self.recorder.is_none() {
            if let Ok(recorder) = open_recording(&self.config) {
                eprintln!("dstrace: recording again to {}", recorder.path().display());
                self.recorder = Some(recorder);
            }
        }
        self.write_pending(in_d);
    }

    /// Writes the rows read since the last interval and the tasks in D now, if
    /// recording.
    fn write_pending(&mut self, in_d: &[Wait]) {
        let pending = std::mem::take(&mut self.pending_record);
        let rows = self.labelled(pending);
        let Some(recorder) = self.recorder.as_mut() else { return };
        if let Err(err) = recorder.interval_of(rows, &self.session.tracer, in_d) {
            self.recording_failed(&err);
        }
    }

    fn labelled(&mut self, pending: HashMap<AggKey, Totals>) -> Vec<RowData> {
        pending
            .iter()
            .map(|(key, totals)| {
                let Session { tracer, names, .. } = &mut self.session;
                self.labels.row(key, totals, tracer, &mut names.stacks, &mut names.mounts).0
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
        self.session.tracer.remove_aggregates(&ended);
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
                    stuck_after: new.stuck_after,
                    stuck_repeat: new.stuck_repeat,
                    ..self.config.clone()
                };
                self.watch.set(self.config.stuck_after, self.config.stuck_repeat);
                if !now.is_empty() {
                    eprintln!("dstrace: applied: {}", now.join(", "));
                }
            }
            Err(err) => eprintln!("dstrace: warning: configuration not reloaded: {err:#}"),
        }
        // Reopen: write what the old file is owed, then open the file (again).
        self.read_aggregates();
        let in_d = self.in_d();
        self.write_pending(&in_d);
        self.recorder = None;
        match open_recording(&self.config) {
            Ok(recorder) => self.recorder = Some(recorder),
            Err(err) => self.recording_failed(&err),
        }
        eprintln!("dstrace: daemon: {}", self.config.describe());
    }
}
