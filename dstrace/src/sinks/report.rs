//! Recordings as off-CPU flame graphs, pprof profiles and JSON (`dstrace report`,
//! whose command is [`crate::commands::report`]).
//!
//! Every format is drawn from the same rows: the in-kernel aggregation of each
//! recorded interval (every completed D wait, short ones included), and a row for
//! each wait still in D at an interval's end that did not complete within the
//! selection (its blocked time within the selection, from its start or the
//! selection's, whichever is later, to the last interval end it was seen at),
//! filtered by time window, mount, command and process. So an incident whose
//! tasks never woke is the widest tower of its flame graph, and the totals agree
//! across formats: the folded file's weights, the SVG's `all` frame, the pprof
//! `blocked` values and the JSON groups' `total_ns` add up to the same blocked
//! time.
//!
//! Formats:
//! * `folded`: one line per stack, frames root first separated by `;`, then a
//!   space and the weight (blocked microseconds, or the number of waits), as
//!   flamegraph.pl, inferno and speedscope read it. `--group-by` puts `mount:...`,
//!   `lock:...` and `comm:...` frames at the root. Frame names are escaped as text
//!   output escapes them (control characters as `\xNN`, `\` as `\\`), and `;`
//!   as `\x3b`, so no name can split a frame or a line.
//! * `svg`: the folded stacks drawn by the inferno crate, titled and coloured as an
//!   off-CPU graph (its `io` palette).
//! * `pprof`: see [`crate::sinks::pprof`].
//! * `json`: one document: `groups` as in `run --json`'s summary (per process and
//!   blocking function), `by_mount` and `by_lock` in the summary's schema, and
//!   `waits`, the waits recorded one by one, as `run --json` prints them,
//!   `in_d`, the tasks in D at the selection's end, as `run --json` prints them,
//!   and `sessions` (host, kernel, settings of each recording session).

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::SystemTime,
};

use anyhow::{bail, Context as _, Result};
use clap::ValueEnum;

use crate::{
    clock::{json_ms, rfc3339_utc},
    model::{
        aggregate::{groups_of, Totals},
        board::{CauseGroup, MAX_PIDS},
        wait::{LockInfo, Wait},
    },
    resolve::symbols::blocking_function,
    sinks::{
        escape::escape,
        json::{json_by_process, json_causes, json_wait},
        pprof,
        recording::{self, unix_ns, RowData},
    },
};

/// The formats of `dstrace report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Folded stacks (flamegraph.pl, inferno, speedscope).
    Folded,
    /// An SVG flame graph.
    Svg,
    /// A pprof profile (profile.proto, gzip).
    Pprof,
    /// JSON (the schema of `run --json`'s summary groups).
    Json,
}

/// What a stack weighs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Weight {
    /// Blocked time, in microseconds.
    Time,
    /// Number of waits.
    Count,
}

/// Leading frames of `--group-by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    /// The mount the waits were on.
    Mount,
    /// The kernel lock they waited for.
    Lock,
    /// The command.
    Comm,
}

/// What is reported: rows and waits from the recordings, filtered.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Aggregated rows, and a row per wait still in D that did not complete.
    pub rows: Vec<RowData>,
    /// Individual waits.
    pub waits: Vec<Wait>,
    /// The tasks in D at the end of the last interval selected.
    pub in_d: Vec<Wait>,
    /// Of the rows, those of waits still in D.
    pub still_in_d: usize,
    /// The first interval's start and the last one's end.
    pub span: Option<(SystemTime, SystemTime)>,
    /// The kernel side's counters at the end of the last interval.
    pub counters: Vec<(String, u64)>,
}

/// The filters of `dstrace report`, times resolved.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Intervals ending at or after this.
    pub since: Option<SystemTime>,
    /// Intervals ending at or before this.
    pub until: Option<SystemTime>,
    /// Mount points.
    pub mounts: Vec<String>,
    /// Commands.
    pub comms: Vec<String>,
    /// Processes.
    pub pids: Vec<u32>,
}

impl Filter {
    /// Whether it lets a wait through.
    pub fn wants_wait(&self, wait: &Wait) -> bool {
        let mount = wait.on.mount.as_ref().map(|m| m.mount_point.to_string_lossy());
        self.wants(wait.pid, &wait.comm, mount.as_deref())
    }

    fn wants(&self, pid: u32, comm: &str, mount: Option<&str>) -> bool {
        (self.pids.is_empty() || self.pids.contains(&pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| c == comm))
            && (self.mounts.is_empty() || mount.is_some_and(|m| self.mounts.iter().any(|wanted| wanted == m)))
    }

    fn in_window(&self, end: SystemTime) -> bool {
        self.since.is_none_or(|since| end >= since) && self.until.is_none_or(|until| end <= until)
    }
}

/// Selects what the filter lets through from recordings.
pub fn select(recordings: &[recording::Recording], filter: &Filter) -> Selection {
    let mut selection = Selection::default();
    let mut still: HashMap<u32, Vec<(SystemTime, Wait)>> = HashMap::new();
    for interval in recordings.iter().flat_map(|r| &r.intervals) {
        if !filter.in_window(interval.end) {
            continue;
        }
        selection.span = Some(match selection.span {
            None => (interval.start, interval.end),
            Some((start, end)) => (start.min(interval.start), end.max(interval.end)),
        });
        if !interval.counters.is_empty() {
            selection.counters.clone_from(&interval.counters);
        }
        selection.rows.extend(
            interval
                .rows
                .iter()
                .filter(|row| filter.wants(row.pid, &row.comm, row.mount.as_deref()))
                .cloned(),
        );
        selection.waits.extend(interval.waits.iter().filter(|wait| filter.wants_wait(wait)).cloned());
        selection.in_d = interval.in_d.iter().filter(|wait| filter.wants_wait(wait)).cloned().collect();
        for wait in &selection.in_d {
            // The same wait at every interval end it was in D at: its last sighting.
            let sightings = still.entry(wait.tid).or_default();
            match sightings.iter_mut().find(|(at, _)| still_the_same(*at, wait)) {
                Some(sighting) => *sighting = (interval.end, wait.clone()),
                None => sightings.push((interval.end, wait.clone())),
            }
        }
    }
    // A wait seen completing is in the rows already, with its whole duration.
    for wait in &selection.waits {
        if let Some(sightings) = still.get_mut(&wait.tid) {
            sightings.retain(|(_, seen)| !completed_as(seen, wait));
        }
    }
    let from = selection.span.map_or(SystemTime::UNIX_EPOCH, |(start, _)| start);
    let mut still: Vec<(SystemTime, Wait)> = still.into_values().flatten().collect();
    still.sort_by_key(|(_, wait)| (wait.start, wait.tid));
    selection.still_in_d = still.len();
    selection.rows.extend(still.into_iter().map(|(seen, wait)| {
        let began = wait.start.map_or(from, |start| start.max(from));
        let mut totals = Totals::default();
        totals.record(seen.duration_since(began).map_or(0, crate::clock::duration_ns));
        RowData {
            pid: wait.pid,
            comm: wait.comm.clone(),
            stack: wait.stack.clone(),
            mount: wait.on.mount.as_ref().map(|mount| mount.mount_point.to_string_lossy().into_owned()),
            lock: wait.lock.as_ref().map(LockInfo::name),
            totals,
        }
    }));
    selection
}

/// Whether a task in D is still in the wait it was in D in at `seen_at` (an
/// interval end, same thread): it began before then. A wait begun since began
/// after, since at `seen_at` the task was in D in the earlier one. (A start is
/// to the millisecond, and for a wait that began before tracing a lower bound:
/// either is well before an interval end.)
fn still_the_same(seen_at: SystemTime, wait: &Wait) -> bool {
    wait.start.is_none_or(|start| start < seen_at)
}

/// Whether a task seen in D (same thread) was in this completed wait: it began
/// when the wait did, to the 50 ms (the start of a task in D is to the
/// millisecond, the clocks of the two records may differ by a few).
fn completed_as(seen: &Wait, completed: &Wait) -> bool {
    match (seen.start, completed.start) {
        (Some(a), Some(b)) => {
            a.duration_since(b).or_else(|_| b.duration_since(a)).is_ok_and(|d| d.as_nanos() <= 50_000_000)
        }
        _ => false,
    }
}

/// The tasks in D at the recorded moment nearest `at` (an interval's end), with
/// that moment; `None` when the selection has no interval.
pub fn in_d_at(
    recordings: &[recording::Recording],
    filter: &Filter,
    at: SystemTime,
) -> Option<(SystemTime, Vec<Wait>)> {
    let distance =
        |end: SystemTime| end.duration_since(at).or_else(|_| at.duration_since(end)).unwrap_or_default();
    let nearest = recordings
        .iter()
        .flat_map(|r| &r.intervals)
        .filter(|interval| filter.in_window(interval.end))
        .min_by_key(|interval| distance(interval.end))?;
    let waits = nearest.in_d.iter().filter(|wait| filter.wants_wait(wait)).cloned().collect();
    Some((nearest.end, waits))
}

/// A frame name safe in a folded line: escaped as text output escapes, and `;`
/// as `\x3b`.
pub fn folded_frame(name: &str) -> String {
    escape(name).replace(';', "\\x3b")
}

/// The folded stacks of rows: `frames weight` lines, sorted, weights summed per
/// stack; stacks weighing nothing left out.
pub fn folded(rows: &[RowData], weight: Weight, group_by: &[GroupBy]) -> Vec<String> {
    let mut stacks: BTreeMap<String, Totals> = BTreeMap::new();
    for row in rows {
        let mut frames: Vec<String> = group_by
            .iter()
            .map(|by| match by {
                GroupBy::Mount => format!("mount:{}", row.mount.as_deref().unwrap_or("-")),
                GroupBy::Lock => format!("lock:{}", row.lock.as_deref().unwrap_or("-")),
                GroupBy::Comm => format!("comm:{}", row.comm),
            })
            .collect();
        if row.stack.is_empty() {
            frames.push("[stack lost]".to_owned());
        } else {
            frames.extend(row.stack.iter().rev().cloned());
        }
        let key = frames.iter().map(|frame| folded_frame(frame)).collect::<Vec<_>>().join(";");
        stacks.entry(key).or_default().add(&row.totals);
    }
    stacks
        .into_iter()
        .filter_map(|(stack, totals)| {
            let weight = match weight {
                Weight::Time => (totals.total_ns + 500) / 1000,
                Weight::Count => totals.count,
            };
            (weight > 0).then(|| format!("{stack} {weight}"))
        })
        .collect()
}

/// An SVG flame graph of folded lines.
pub fn svg(lines: &[String], weight: Weight, subtitle: &str) -> Result<Vec<u8>> {
    use inferno::flamegraph::{color::BasicPalette, Options, Palette};
    let mut options = Options::default();
    options.title = match weight {
        Weight::Time => "Off-CPU (D state): blocked time".to_owned(),
        Weight::Count => "Off-CPU (D state): number of waits".to_owned(),
    };
    options.subtitle = Some(subtitle.to_owned());
    options.count_name = match weight {
        Weight::Time => "us".to_owned(),
        Weight::Count => "waits".to_owned(),
    };
    options.colors = Palette::Basic(BasicPalette::Io);
    options.deterministic = true;
    let mut out = Vec::new();
    if lines.is_empty() {
        // inferno refuses empty input; an empty graph says why instead.
        bail!("nothing to draw: no D wait in the selection");
    }
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut out)
        .context("cannot draw the flame graph")?;
    Ok(out)
}

/// A pprof profile of rows.
pub fn profile(rows: &[RowData], span: Option<(SystemTime, SystemTime)>, weight: Weight) -> Result<Vec<u8>> {
    let (start, duration) = match span {
        Some((start, end)) => (unix_ns(start), unix_ns(end).saturating_sub(unix_ns(start))),
        None => (0, 0),
    };
    let mut builder = pprof::Builder::new(start, duration, weight == Weight::Count);
    for row in rows {
        let mut labels = vec![("comm", row.comm.as_str())];
        if let Some(mount) = &row.mount {
            labels.push(("mount", mount));
        }
        if let Some(lock) = &row.lock {
            labels.push(("lock", lock));
        }
        builder.add(&pprof::Input {
            stack: &row.stack,
            blocked_ns: row.totals.total_ns,
            count: row.totals.count,
            labels,
            numbers: vec![("pid", i64::from(row.pid))],
        });
    }
    builder.finish()
}

/// The JSON document of a selection.
pub fn json(
    selection: &Selection,
    sessions: &[recording::Session],
    files: &[PathBuf],
    damage: &[String],
) -> serde_json::Value {
    let groups = groups_of(selection.rows.iter().map(|row| {
        let function = blocking_function(row.stack.iter().map(String::as_str)).map(str::to_owned);
        (row.pid, row.comm.clone(), function, &row.totals)
    }));
    let by = |label: fn(&RowData) -> Option<&String>| {
        let mut causes: HashMap<&String, CauseGroup> = HashMap::new();
        for row in &selection.rows {
            let Some(key) = label(row) else { continue };
            let cause =
                causes.entry(key).or_insert_with(|| CauseGroup { key: key.clone(), ..CauseGroup::default() });
            cause.completed.add(&row.totals);
            if !cause.pids.contains(&row.pid) && cause.pids.len() < MAX_PIDS {
                cause.pids.push(row.pid);
            }
        }
        let mut causes: Vec<CauseGroup> = causes.into_values().collect();
        causes
            .sort_by(|a, b| b.completed.total_ns.cmp(&a.completed.total_ns).then_with(|| a.key.cmp(&b.key)));
        causes
    };
    let counters: serde_json::Map<String, serde_json::Value> =
        selection.counters.iter().map(|(name, n)| (name.clone(), (*n).into())).collect();
    serde_json::json!({
        "type": "report",
        "files": files.iter().map(|f| f.to_string_lossy()).collect::<Vec<_>>(),
        "sessions": sessions.iter().map(|session| serde_json::json!({
            "started": rfc3339_utc(recording::from_unix_ns(session.started_ns)),
            "hostname": session.hostname,
            "kernel": session.kernel,
            "dstrace": session.dstrace,
            "interval_ms": json_ms(session.interval_ns),
            "min_duration_ms": json_ms(session.min_duration_ns),
        })).collect::<Vec<_>>(),
        "start": selection.span.map(|(start, _)| rfc3339_utc(start)),
        "end": selection.span.map(|(_, end)| rfc3339_utc(end)),
        "blocked_ms": json_ms(selection.rows.iter().map(|row| row.totals.total_ns).sum::<u64>()),
        "count": selection.rows.iter().map(|row| row.totals.count).sum::<u64>(),
        "by_process": json_by_process(&groups),
        "by_mount": json_causes(&by(|row| row.mount.as_ref()), "mountpoint"),
        "by_lock": json_causes(&by(|row| row.lock.as_ref()), "lock"),
        "waits": selection.waits.iter().map(json_wait).collect::<Vec<_>>(),
        "still_in_d": selection.still_in_d,
        "in_d": selection.in_d.iter().map(json_wait).collect::<Vec<_>>(),
        "counters": counters,
        "damage": damage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::symbols::Stack;

    fn row(pid: u32, comm: &str, stack: &[&str], mount: Option<&str>, durations_ns: &[u64]) -> RowData {
        let mut totals = Totals::default();
        for &d in durations_ns {
            totals.record(d);
        }
        RowData {
            pid,
            comm: comm.to_owned(),
            stack: stack.iter().map(|s| (*s).to_owned()).collect::<Stack>(),
            mount: mount.map(str::to_owned),
            lock: None,
            totals,
        }
    }

    #[test]
    fn folded_lines_are_root_first_and_summed() {
        let stack = ["__schedule", "d_alloc_parallel", "path_openat"];
        let rows = [
            row(1, "stat", &stack, Some("/mnt/x"), &[2_000_000, 1_000_000]),
            row(2, "stat", &stack, Some("/mnt/x"), &[1_000_000]),
            row(3, "jbd2", &[], None, &[400]),
        ];
        let lines = folded(&rows, Weight::Time, &[]);
        // 400ns rounds to 0us: left out of the time-weighted lines.
        assert_eq!(lines, ["path_openat;d_alloc_parallel;__schedule 4000"]);
        let lines = folded(&rows, Weight::Count, &[GroupBy::Mount, GroupBy::Comm]);
        assert_eq!(
            lines,
            [
                "mount:-;comm:jbd2;[stack lost] 1",
                "mount:/mnt/x;comm:stat;path_openat;d_alloc_parallel;__schedule 3"
            ]
        );
    }

    #[test]
    fn hostile_names_cannot_break_a_folded_line() {
        let rows = [row(1, "a;b c\nd\x1b[2J\\", &["f;g"], Some("/mnt/we ird;x"), &[5_000])];
        let lines = folded(&rows, Weight::Time, &[GroupBy::Comm, GroupBy::Mount]);
        assert_eq!(lines, [r"comm:a\x3bb c\x0ad\x1b[2J\\;mount:/mnt/we ird\x3bx;f\x3bg 5"]);
        let line = &lines[0];
        let (stack, weight) = line.rsplit_once(' ').unwrap();
        assert_eq!(weight, "5");
        assert_eq!(stack.split(';').count(), 3);
        assert!(!line.chars().any(char::is_control));
    }

    #[test]
    fn svg_is_an_off_cpu_graph() {
        let rows = [row(1, "stat", &["__schedule", "d_alloc_parallel"], None, &[3_000_000])];
        let svg =
            String::from_utf8(svg(&folded(&rows, Weight::Time, &[]), Weight::Time, "test").unwrap()).unwrap();
        assert!(svg.contains("Off-CPU (D state)"), "{svg}");
        assert!(svg.contains("d_alloc_parallel"));
        assert!(svg.contains("3,000 us") || svg.contains("3000 us"), "{svg}");
    }
}
