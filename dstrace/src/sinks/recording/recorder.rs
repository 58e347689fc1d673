//! Recording while tracing: `dstrace record`, and `dstrace run --output`.
//!
//! A [`Recorder`] is fed what a trace loop sees: each completed wait above the
//! threshold ([`Recorder::wait`]) and, once per interval, the in-kernel aggregation
//! ([`Recorder::interval`], which takes its own difference from the previous read,
//! independent of any other reader). It writes one frame per interval to a
//! [`crate::sinks::recording`] file, so a crash loses at most the interval in progress.
//! A full disk or quota loses none of the aggregation: what cannot be written is
//! held, summed, and written at the first interval that can be (see [`Recorder`]).
//!
//! # In a trace loop
//!
//! `dstrace run` holds a [`RunRecording`] (nothing when `--output` is not given)
//! and makes five calls, each a no-op without a recording, none failing (a full
//! disk is held and retried, as everywhere; another write error is one warning,
//! and the recording stops):
//!
//! ```text
//! let mut recording = RunRecording::start(args.recording.file(), args.interval, args.min_duration)?;
//! let mut ticks = recording.ticks();                 // Option<tokio::time::Interval>
//! recording.wait(&wait);                             // each completed wait shown
//! recording.interval(&tracer, &mut stacks, &mut mounts, &in_d);  // each tick, a look just taken
//! recording.finish(&tracer, &mut stacks, &mut mounts, &in_d);    // once, after the last drain
//! ```
//!
//! Aggregated rows carry a mount and a lock label where one is known: the lock
//! from the row's cause (named as the waits streamed for it name it), the mount
//! from the cause's device, or else from the waits of the same process and stack.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use dstrace_common::{AggKey, Cause, CAUSE_DENTRY, CAUSE_LOCK};

use crate::{
    clock::{duration_ns, human_duration, ticks},
    kernel::{decode::comm_string, loader::Tracer},
    model::{
        aggregate::{Aggregator, Totals},
        wait::{lock_info, Wait},
    },
    resolve::{
        mounts::MountTable,
        symbols::{Stack, Stacks},
    },
    sinks::recording::{unix_ns, FileOptions, Gap, IntervalData, RowData, Session, Writer},
};

/// Waits buffered before they are written without waiting for the interval's end.
const MAX_BUFFERED_WAITS: usize = 10_000;

/// Labels remembered from waits (mount by process and stack, lock names) at most:
/// past it they are forgotten and learnt again, so a recording of days stays
/// within bounded memory.
const MAX_LABELS: usize = 65_536;

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
    /// the lock it waits for ([`crate::model::wait::LockInfo::kind`]), if one.
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
            dev => mounts.by_dev(key.tgid, dev).map(|mount| mount.mount_point.to_string_lossy().into_owned()),
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

/// Rows held in memory at most while nothing can be written: past it the
/// aggregated waits of new rows are counted as lost.
const MAX_HELD_ROWS: usize = 65_536;

/// Whether an error is a full disk or quota: writing stops for now, and is
/// tried again at every later interval.
fn is_no_space(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|cause| matches!(cause.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
}

/// What is to be written next: one interval, or every interval that could not
/// be written (a full disk), merged, with what was lost while they waited.
struct Pending {
    data: IntervalData,
    /// Interval ends in it.
    intervals: u64,
    /// When writing first failed, and why.
    failed: Option<(SystemTime, String)>,
    waits_lost: u64,
    looks_lost: u64,
    aggregated_lost: u64,
    /// Where each row held is, by what tells rows apart.
    rows: HashMap<RowKey, usize>,
}

/// What tells aggregated rows apart: process, command, stack, mount, lock.
type RowKey = (u32, String, Stack, Option<String>, Option<String>);

fn row_key(row: &RowData) -> RowKey {
    (row.pid, row.comm.clone(), row.stack.clone(), row.mount.clone(), row.lock.clone())
}

impl Pending {
    fn new(data: IntervalData, ends_interval: bool) -> Pending {
        Pending {
            data,
            intervals: u64::from(ends_interval),
            failed: None,
            waits_lost: 0,
            looks_lost: 0,
            aggregated_lost: 0,
            rows: HashMap::new(),
        }
    }

    /// Adds the next interval (or the waits of a storm) to what is held: the
    /// rows summed, the waits kept up to [`MAX_BUFFERED_WAITS`], the tasks in D
    /// of the latest end.
    fn add(&mut self, next: IntervalData, ends_interval: bool) {
        let held = &mut self.data;
        held.end = next.end;
        if ends_interval {
            self.intervals += 1;
            if !held.in_d.is_empty() {
                self.looks_lost += 1;
            }
            held.in_d = next.in_d;
        }
        if !next.counters.is_empty() {
            held.counters = next.counters;
        }
        for wait in next.waits {
            if held.waits.len() < MAX_BUFFERED_WAITS {
                held.waits.push(wait);
            } else {
                self.waits_lost += 1;
            }
        }
        if self.rows.len() != held.rows.len() {
            self.rows = held.rows.iter().enumerate().map(|(i, row)| (row_key(row), i)).collect();
        }
        for row in next.rows {
            match self.rows.get(&row_key(&row)) {
                Some(&i) => held.rows[i].totals.add(&row.totals),
                None if held.rows.len() < MAX_HELD_ROWS => {
                    self.rows.insert(row_key(&row), held.rows.len());
                    held.rows.push(row);
                }
                None => self.aggregated_lost += row.totals.count,
            }
        }
    }

    /// What was lost while nothing could be written, if anything could not be.
    fn gap(&self, now: SystemTime) -> Option<Gap> {
        self.failed.as_ref().map(|(failed, error)| Gap {
            failed_ns: unix_ns(*failed),
            resumed_ns: unix_ns(now),
            error: error.clone(),
            intervals: self.intervals,
            waits_lost: self.waits_lost,
            looks_lost: self.looks_lost,
            aggregated_lost: self.aggregated_lost,
        })
    }
}

/// Writes what a trace loop sees to a recording.
///
/// On a full disk or quota (`ENOSPC`, `EDQUOT`) it goes on: what it could not
/// write is held in memory (the aggregation summed, which loses nothing of it;
/// the waits one by one up to a bound; the tasks in D of the last interval end)
/// and written at the first later interval that can be, after a record of what
/// was lost and when ([`Gap`]). It says once when writing fails and once when it
/// writes again. Any other error is the caller's.
pub struct Recorder {
    writer: Writer,
    aggregator: Aggregator,
    waits: Vec<Wait>,
    start: SystemTime,
    period: Duration,
    labels: RowLabels,
    /// What could not be written yet (a full disk).
    held: Option<Pending>,
    /// Notes waiting for [`Recorder::notes`], when they are not said at once.
    notes: Option<Vec<String>>,
    /// Intervals written.
    pub intervals: u64,
    /// Waits written one by one.
    pub waits_written: u64,
    /// Intervals and waits not written: the file was full (`rotate` 0).
    pub not_written: (u64, u64),
}

impl Recorder {
    /// Opens the file (see [`crate::sinks::recording`] for how) and starts a session.
    pub fn create(options: FileOptions, period: Duration, min_duration: Duration) -> Result<Recorder> {
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
        Ok(Recorder {
            writer: Writer::open(options, session)?,
            aggregator: Aggregator::default(),
            waits: Vec::new(),
            start,
            period,
            labels: RowLabels::default(),
            held: None,
            notes: None,
            intervals: 0,
            waits_written: 0,
            not_written: (0, 0),
        })
    }

    /// Keeps what it has to say (writing failed, or resumed) for
    /// [`Recorder::notes`] instead of saying it on standard error at once (a
    /// full-screen view is there).
    pub fn defer_notes(&mut self) {
        self.notes.get_or_insert_with(Vec::new);
    }

    /// What it had to say since the last call, one line each (with
    /// [`Recorder::defer_notes`]).
    pub fn notes(&mut self) -> Vec<String> {
        self.notes.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn say(&mut self, note: String) {
        match self.notes.as_mut() {
            Some(notes) => notes.push(note),
            None => eprintln!("dstrace: {note}"),
        }
    }

    /// Ticks every interval, the first one interval from now.
    pub fn ticks(&self) -> tokio::time::Interval {
        ticks(self.period)
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
                in_d: Vec::new(),
            };
            self.write(data, false)?;
        }
        Ok(())
    }

    /// Ends an interval: reads the aggregation and writes it with the waits and
    /// the tasks in D now (`in_d`, a look just taken).
    pub fn interval(
        &mut self,
        tracer: &Tracer,
        stacks: &mut Stacks,
        mounts: &mut MountTable,
        in_d: &[Wait],
    ) -> Result<()> {
        // The mounts of the waits going on label the rows of their process and
        // stack when they end: named while they went on, not after an unmount.
        for wait in in_d {
            self.labels.learn(wait);
        }
        let entries = self.aggregator.delta(tracer.aggregates());
        let rows = entries
            .iter()
            .map(|(key, totals)| self.labels.row(key, totals, tracer, stacks, mounts).0)
            .collect();
        self.interval_of(rows, tracer, in_d)
    }

    /// Ends an interval with these rows (read and labelled by the caller, who then
    /// reads the aggregation for other uses too: `dstrace daemon`) and the tasks
    /// in D now.
    pub fn interval_of(&mut self, rows: Vec<RowData>, tracer: &Tracer, in_d: &[Wait]) -> Result<()> {
        let counters = tracer
            .counters()
            .unwrap_or_default()
            .into_iter()
            .map(|(counter, n)| (counter.name().to_owned(), n))
            .collect();
        let end = SystemTime::now();
        let data = IntervalData {
            start: self.start,
            end,
            rows,
            waits: std::mem::take(&mut self.waits),
            counters,
            in_d: in_d.to_vec(),
        };
        self.start = end;
        self.write(data, true)
    }

    /// Writes `data` after what is held, if anything; on a full disk holds it all.
    fn write(&mut self, data: IntervalData, ends_interval: bool) -> Result<()> {
        let mut pending = match self.held.take() {
            Some(mut held) => {
                held.add(data, ends_interval);
                held
            }
            None => Pending::new(data, ends_interval),
        };
        let now = SystemTime::now();
        match self.writer.write(pending.gap(now).as_ref(), &pending.data) {
            Ok(true) => {
                self.intervals += pending.intervals;
                self.waits_written += pending.data.waits.len() as u64;
                if let Some((failed, _)) = pending.failed {
                    let long = human_duration(duration_ns(now.duration_since(failed).unwrap_or_default()));
                    let note = format!(
                        "writing to {} again, after {long}: the {} intervals held are written as \
                         one, with a record of what was lost ({} waits one by one, the tasks in D at \
                         {} interval ends)",
                        self.path().display(),
                        pending.intervals,
                        pending.waits_lost,
                        pending.looks_lost
                    );
                    self.say(note);
                }
                Ok(())
            }
            Ok(false) => {
                if self.not_written == (0, 0) {
                    let note = format!(
                        "warning: {} reached its size cap of {} bytes: recording stops (use --rotate N \
                         to keep the last N files instead)",
                        self.path().display(),
                        self.writer.max_size()
                    );
                    self.say(note);
                }
                self.not_written.0 += pending.intervals;
                self.not_written.1 += pending.data.waits.len() as u64 + pending.waits_lost;
                Ok(())
            }
            Err(err) if is_no_space(&err) => {
                if pending.failed.is_none() {
                    self.say(format!(
                        "warning: {err:#}: tracing goes on, what it sees is held in memory and written \
                         at the first interval that can (said when it does)"
                    ));
                    pending.failed = Some((now, format!("{:#}", err.root_cause())));
                }
                self.held = Some(pending);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Writes the last interval.
    pub fn finish(
        mut self,
        tracer: &Tracer,
        stacks: &mut Stacks,
        mounts: &mut MountTable,
        in_d: &[Wait],
    ) -> Result<Recorder> {
        self.interval(tracer, stacks, mounts, in_d)?;
        Ok(self)
    }

    /// The file written.
    pub fn path(&self) -> &std::path::Path {
        self.writer.path()
    }

    /// Intervals and waits held in memory that could not be written yet (a full
    /// disk), and why.
    pub fn held(&self) -> Option<(u64, u64, &str)> {
        self.held.as_ref().and_then(|held| {
            let (_, error) = held.failed.as_ref()?;
            Some((held.intervals, held.data.waits.len() as u64 + held.waits_lost, error.as_str()))
        })
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
    /// Starts recording if a file was given (`--output`).
    pub fn start(
        file: Option<FileOptions>,
        interval: Option<Duration>,
        min_duration: Duration,
    ) -> Result<RunRecording> {
        let Some(file) = file else { return Ok(RunRecording::default()) };
        let period = interval.filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(10));
        let mut recorder = Recorder::create(file, period, min_duration)?;
        recorder.defer_notes();
        let note = format!(
            "recording to {} every {}",
            recorder.path().display(),
            human_duration(duration_ns(period))
        );
        Ok(RunRecording { recorder: Some(recorder), notes: vec![note] })
    }

    /// What it has to say since the last call, one line each.
    pub fn notes(&mut self) -> Vec<String> {
        let mut notes = std::mem::take(&mut self.notes);
        if let Some(recorder) = self.recorder.as_mut() {
            notes.splice(0..0, recorder.notes());
        }
        notes
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

    /// Whether it records (a look at the tasks in D is wanted at each tick).
    pub fn is_recording(&self) -> bool {
        self.recorder.is_some()
    }

    /// See [`Recorder::interval`].
    pub fn interval(&mut self, tracer: &Tracer, stacks: &mut Stacks, mounts: &mut MountTable, in_d: &[Wait]) {
        let result = self.recorder.as_mut().map(|recorder| recorder.interval(tracer, stacks, mounts, in_d));
        self.check(result);
    }

    /// Writes the last interval.
    pub fn finish(&mut self, tracer: &Tracer, stacks: &mut Stacks, mounts: &mut MountTable, in_d: &[Wait]) {
        self.interval(tracer, stacks, mounts, in_d);
        if let Some(mut recorder) = self.recorder.take() {
            self.notes.extend(recorder.notes());
            self.notes.push(written_line(&recorder));
        }
    }

    fn check(&mut self, result: Option<Result<()>>) {
        if let Some(Err(err)) = result {
            if let Some(mut recorder) = self.recorder.take() {
                self.notes.extend(recorder.notes());
            }
            self.notes.push(format!("warning: recording stopped: {err:#}"));
        }
    }
}

/// What a recorder wrote, in one line, with the command that reads it: what
/// it wrote, and what it did not (past a size cap with `--rotate 0`, or held
/// in memory when the disk stayed full to the end).
pub fn written_line(recorder: &Recorder) -> String {
    let mut unwritten = String::new();
    let (intervals, waits) = recorder.not_written;
    if (intervals, waits) != (0, 0) {
        unwritten.push_str(&format!(
            "; not written, past its size cap (--rotate 0): {intervals} intervals and {waits} waits"
        ));
    }
    if let Some((intervals, waits, error)) = recorder.held() {
        unwritten.push_str(&format!(
            "; not written, the file could not be written to the end ({error}): {intervals} intervals and \
             {waits} waits"
        ));
    }
    format!(
        "recorded {} intervals and {} waits ({} bytes) to {}{unwritten}; read it with `dstrace report {}`",
        recorder.intervals,
        recorder.waits_written,
        recorder.written(),
        recorder.path().display(),
        recorder.path().display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::recording::tests::{interval_with_tasks_in_d, sample_interval};

    /// Intervals held on a full disk are one interval: the rows summed (the
    /// aggregation is a difference, so nothing of it is lost), the waits kept up
    /// to the bound and the rest counted, the tasks in D of the last end (the
    /// lists before it counted).
    #[test]
    fn held_intervals_sum_their_rows_and_count_what_they_lose() {
        let first = interval_with_tasks_in_d(100, 2);
        let mut held = Pending::new(first.clone(), true);
        assert_eq!(held.gap(SystemTime::now()), None, "nothing failed yet");
        held.failed = Some((first.end, "No space left on device (os error 28)".into()));
        let mut storm = sample_interval(110);
        storm.rows.clear();
        storm.waits = vec![storm.waits[0].clone(); MAX_BUFFERED_WAITS];
        held.add(storm, false);
        let last = interval_with_tasks_in_d(120, 3);
        held.add(last.clone(), true);

        assert_eq!((held.data.start, held.data.end), (first.start, last.end));
        assert_eq!(held.data.rows.len(), first.rows.len());
        for (row, one) in held.data.rows.iter().zip(&first.rows) {
            assert_eq!(row.totals.count, 2 * one.totals.count);
            assert_eq!(row.totals.total_ns, 2 * one.totals.total_ns);
        }
        assert_eq!(held.data.waits.len(), MAX_BUFFERED_WAITS);
        assert_eq!(held.data.in_d, last.in_d);
        let gap = held.gap(last.end).unwrap();
        // The first interval's waits and the storm's fill the bound; the last's are lost.
        let lost = (first.waits.len() + last.waits.len()) as u64;
        assert_eq!((gap.intervals, gap.waits_lost, gap.looks_lost, gap.aggregated_lost), (2, lost, 1, 0));
        let text = gap.to_string();
        assert!(text.starts_with("nothing could be written from "), "{text}");
        assert!(
            text.contains("No space left on device") && text.contains(&format!("{lost} waits one by one")),
            "{text}"
        );
    }
}
