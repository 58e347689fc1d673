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
//! across formats: the folded file's weights, the SVG's `all` frame, the
//! speedscope weights, the pprof `blocked` values and the JSON groups' `total_ns`
//! add up to the same blocked time.
//!
//! The stacks of every profile (folded, svg, speedscope, pprof) end at the
//! blocking function: the scheduler and wait-primitive frames below it are cut, as
//! [`from_blocking_function`] cuts them (the one list of primitives,
//! [`crate::resolve::symbols::WAIT_PRIMITIVES`]). Every stack of an off-CPU
//! profile ends in the scheduler, so a leaf there says nothing and takes all the
//! self time: `go tool pprof -top` would rank `__schedule` at 100%. With the cut,
//! the self time is the blocking function's (`d_alloc_parallel`,
//! `rpc_wait_bit_killable`, ...), the function the text and JSON output name, and
//! the frames above it say how the task got there. A stack of primitives only is
//! kept whole.
//!
//! The command is a frame of every folded, svg and speedscope stack, `comm:NAME`,
//! as perf's and offcputime's folded stacks have the process name at the root: by
//! default it is the root. `--group-by` frames (`mount:...`, `lock:...`, and
//! `comm:...` where the user places it) come first, in the order given, so a graph
//! can split by mount before anything else; without `comm` among them the command
//! comes right after them, at the root of the task's own frames, and `--no-comm`
//! leaves it out ([`leading_frames`]). The prefix keeps a command apart from a
//! kernel function of the same name (`sync`). pprof has the command, pid, mount and
//! lock as labels instead, as pprof profiles do (`go tool pprof -tagroot=comm` puts
//! them at the root), so its locations are only kernel functions.
//!
//! Formats:
//! * `folded`: one line per stack, frames root first separated by `;`, then a
//!   space and the weight (blocked microseconds, or the number of waits), as
//!   flamegraph.pl, inferno and speedscope read it. Frame names are escaped as text
//!   output escapes them (control characters as `\xNN`, `\` as `\\`), and `;`
//!   as `\x3b`, so no name can split a frame or a line.
//! * `svg`: the folded stacks drawn by the inferno crate, titled and coloured as an
//!   off-CPU graph (its `io` palette).
//! * `speedscope`: the same stacks in speedscope's own file format
//!   (<https://www.speedscope.app/file-format-schema.json>): one `sampled` profile
//!   whose samples are the folded lines, frames shared, weights in `microseconds`
//!   (or `none`, a number of waits), so speedscope shows times with their unit
//!   (it takes folded weights for plain numbers). Names escaped as in text output.
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
use dstrace_common::Counter;

use crate::{
    clock::{json_ms, rfc3339_utc},
    escape::escape,
    model::{
        aggregate::{groups_of, Totals},
        board::{CauseGroup, MAX_PIDS},
        wait::{LockInfo, Wait},
    },
    resolve::symbols::{blocking_function, from_blocking_function},
    sinks::{
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
    /// speedscope's own JSON format (a sampled profile, with its unit).
    Speedscope,
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
    /// What the kernel side lost within the selected intervals, by drop counter
    /// (those above zero): what the totals are short of.
    pub drops: Vec<(String, u64)>,
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

/// What the drop counters at the end of an interval add to those at the end of
/// the one before (totals since tracing began; one smaller than before is a new
/// session appended to the file, counting from zero).
fn lost_within(before: &[(String, u64)], now: &[(String, u64)]) -> Vec<(String, u64)> {
    let is_drop = |name: &str| Counter::ALL.iter().any(|c| c.is_drop() && c.name() == name);
    now.iter()
        .filter(|(name, _)| is_drop(name))
        .map(|(name, n)| {
            let earlier = before.iter().find(|(b, _)| b == name).map_or(0, |&(_, b)| b);
            (name.clone(), if *n >= earlier { n - earlier } else { *n })
        })
        .collect()
}

/// Selects what the filter lets through from recordings.
pub fn select(recordings: &[recording::Recording], filter: &Filter) -> Selection {
    let mut selection = Selection::default();
    let mut still: HashMap<u32, Vec<(SystemTime, Wait)>> = HashMap::new();
    let mut drops: BTreeMap<String, u64> = BTreeMap::new();
    for recording in recordings {
        let mut before: &[(String, u64)] = &[];
        for interval in &recording.intervals {
            if filter.in_window(interval.end) {
                for (name, n) in lost_within(before, &interval.counters) {
                    *drops.entry(name).or_default() += n;
                }
            }
            if !interval.counters.is_empty() {
                before = &interval.counters;
            }
        }
    }
    selection.drops = drops.into_iter().filter(|&(_, n)| n > 0).collect();
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
        (Some(a), Some(b)) => apart(a, b) <= std::time::Duration::from_millis(50),
        _ => false,
    }
}

/// How far apart two times are, whichever is first.
fn apart(a: SystemTime, b: SystemTime) -> std::time::Duration {
    a.duration_since(b).or_else(|_| b.duration_since(a)).unwrap_or_default()
}

/// The tasks in D at the recorded moment nearest `at` (an interval's end), with
/// that moment; `None` when the selection has no interval.
pub fn in_d_at(
    recordings: &[recording::Recording],
    filter: &Filter,
    at: SystemTime,
) -> Option<(SystemTime, Vec<Wait>)> {
    let nearest = recordings
        .iter()
        .flat_map(|r| &r.intervals)
        .filter(|interval| filter.in_window(interval.end))
        .min_by_key(|interval| apart(interval.end, at))?;
    let waits = nearest.in_d.iter().filter(|wait| filter.wants_wait(wait)).cloned().collect();
    Some((nearest.end, waits))
}

/// The leading frames of every stack: `--group-by`'s, in the order given, and
/// the command's after them unless listed among them or left out (`comm: false`,
/// `--no-comm`). Asking for both the command's frame and none is an error.
pub fn leading_frames(group_by: &[GroupBy], comm: bool) -> Result<Vec<GroupBy>> {
    let listed = group_by.contains(&GroupBy::Comm);
    if listed && !comm {
        bail!("--group-by comm and --no-comm contradict each other: give one");
    }
    let mut frames = group_by.to_vec();
    if comm && !listed {
        frames.push(GroupBy::Comm);
    }
    Ok(frames)
}

/// The stacks of rows, root first: the `leading` frames, then the kernel stack from
/// its outermost frame to its blocking function ([`from_blocking_function`]), each
/// name escaped as text output escapes it; weights summed per stack, in the order
/// of the stacks, those weighing nothing left out. Folded lines and speedscope
/// samples are these, so their totals are the same.
fn stacks(rows: &[RowData], weight: Weight, leading: &[GroupBy]) -> Vec<(Vec<String>, u64)> {
    let mut stacks: BTreeMap<Vec<String>, Totals> = BTreeMap::new();
    for row in rows {
        let mut frames: Vec<String> = leading
            .iter()
            .map(|by| match by {
                GroupBy::Mount => format!("mount:{}", escape(row.mount.as_deref().unwrap_or("-"))),
                GroupBy::Lock => format!("lock:{}", escape(row.lock.as_deref().unwrap_or("-"))),
                GroupBy::Comm => format!("comm:{}", escape(&row.comm)),
            })
            .collect();
        if row.stack.is_empty() {
            frames.push("[stack lost]".to_owned());
        } else {
            frames.extend(from_blocking_function(&row.stack).iter().rev().map(|frame| escape(frame)));
        }
        stacks.entry(frames).or_default().add(&row.totals);
    }
    stacks
        .into_iter()
        .filter_map(|(frames, totals)| {
            let weight = match weight {
                Weight::Time => (totals.total_ns + 500) / 1000,
                Weight::Count => totals.count,
            };
            (weight > 0).then_some((frames, weight))
        })
        .collect()
}

/// The folded stacks of rows: `frames weight` lines, sorted, weights summed per
/// stack; stacks weighing nothing left out. `leading` frames at the root
/// ([`leading_frames`]), the blocking function the leaf.
pub fn folded(rows: &[RowData], weight: Weight, leading: &[GroupBy]) -> Vec<String> {
    let mut lines: Vec<String> = stacks(rows, weight, leading)
        .into_iter()
        .map(|(frames, weight)| {
            // Escaped already: only `;` is left to keep from splitting a frame.
            let frames: Vec<String> = frames.iter().map(|frame| frame.replace(';', "\\x3b")).collect();
            format!("{} {weight}", frames.join(";"))
        })
        .collect();
    lines.sort_unstable();
    lines
}

/// The speedscope file of rows (<https://www.speedscope.app/file-format-schema.json>):
/// one sampled profile named `name`, a sample per folded line with its weight
/// (microseconds, or `none` for a number of waits), frames shared.
pub fn speedscope(rows: &[RowData], weight: Weight, leading: &[GroupBy], name: &str) -> serde_json::Value {
    let mut frames: Vec<serde_json::Value> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut samples = Vec::new();
    let mut weights = Vec::new();
    for (stack, stack_weight) in stacks(rows, weight, leading) {
        let sample: Vec<usize> = stack
            .into_iter()
            .map(|frame| {
                let next = index.len();
                *index.entry(frame).or_insert_with_key(|frame| {
                    frames.push(serde_json::json!({ "name": frame }));
                    next
                })
            })
            .collect();
        samples.push(sample);
        weights.push(stack_weight);
    }
    let unit = match weight {
        Weight::Time => "microseconds",
        Weight::Count => "none",
    };
    serde_json::json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "exporter": concat!("dstrace@", env!("CARGO_PKG_VERSION")),
        "name": name,
        "activeProfileIndex": 0,
        "shared": { "frames": frames },
        "profiles": [{
            "type": "sampled",
            "name": name,
            "unit": unit,
            "startValue": 0,
            "endValue": weights.iter().sum::<u64>(),
            "samples": samples,
            "weights": weights,
        }],
    })
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

/// A pprof profile of rows: their stacks from the blocking function on, the
/// command, pid, mount and lock as labels.
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
            stack: from_blocking_function(&row.stack),
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
        "drops": selection.drops.iter().map(|(name, n)| (name.clone(), (*n).into())).collect::<serde_json::Map<_, _>>(),
        "damage": damage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_what_each_interval_adds_and_a_new_session_counts_from_zero() {
        let counters = |full: u64, ended: u64| {
            vec![("aggregation_map_full".to_owned(), full), ("waits_ended".to_owned(), ended)]
        };
        assert_eq!(
            lost_within(&counters(5, 10), &counters(8, 99)),
            vec![("aggregation_map_full".to_owned(), 3)]
        );
        assert_eq!(
            lost_within(&counters(5, 10), &counters(2, 1)),
            vec![("aggregation_map_full".to_owned(), 2)]
        );
        assert_eq!(lost_within(&[], &counters(4, 1)), vec![("aggregation_map_full".to_owned(), 4)]);
    }
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

    /// The leading frames of the default: the command alone.
    fn by_comm() -> Vec<GroupBy> {
        leading_frames(&[], true).unwrap()
    }

    #[test]
    fn folded_lines_are_root_first_and_summed() {
        let stack = ["__schedule", "schedule", "d_alloc_parallel", "path_openat"];
        let rows = [
            row(1, "stat", &stack, Some("/mnt/x"), &[2_000_000, 1_000_000]),
            row(2, "stat", &stack, Some("/mnt/x"), &[1_000_000]),
            row(3, "jbd2", &[], None, &[400]),
        ];
        let lines = folded(&rows, Weight::Time, &by_comm());
        // 400ns rounds to 0us: left out of the time-weighted lines.
        assert_eq!(lines, ["comm:stat;path_openat;d_alloc_parallel 4000"]);
        let lines = folded(&rows, Weight::Count, &[GroupBy::Mount, GroupBy::Comm]);
        assert_eq!(
            lines,
            ["mount:-;comm:jbd2;[stack lost] 1", "mount:/mnt/x;comm:stat;path_openat;d_alloc_parallel 3"]
        );
    }

    /// The scheduler and the wait primitives are never the leaf: the blocking
    /// function is, so the self time of a flame graph or `pprof -top` is its.
    #[test]
    fn the_leaf_of_a_folded_stack_is_the_blocking_function() {
        let rwsem = [
            "__schedule",
            "schedule",
            "schedule_preempt_disabled",
            "rwsem_down_write_slowpath",
            "down_write",
            "path_openat",
            "do_filp_open",
        ];
        let lookup = ["__schedule", "schedule", "d_alloc_parallel", "lookup_slow"];
        // The same wait as the task iterator sees it: no scheduler frame.
        let iterated = ["d_alloc_parallel", "lookup_slow"];
        let rows = [
            row(1, "touch", &rwsem, None, &[1_000_000]),
            row(2, "stat", &lookup, None, &[2_000_000]),
            row(3, "stat", &iterated, None, &[3_000_000]),
            row(4, "kworker", &["__schedule", "schedule"], None, &[4_000_000]),
        ];
        let lines = folded(&rows, Weight::Time, &by_comm());
        assert_eq!(
            lines,
            [
                // Nothing but primitives: kept whole rather than emptied.
                "comm:kworker;schedule;__schedule 4000",
                "comm:stat;lookup_slow;d_alloc_parallel 5000",
                "comm:touch;do_filp_open;path_openat 1000",
            ]
        );
        for line in &lines[1..] {
            let leaf = line.rsplit_once(' ').unwrap().0.rsplit(';').next().unwrap();
            assert!(!crate::resolve::symbols::is_wait_primitive(leaf), "{line}");
        }
    }

    /// The command is the root by default, as in perf's and offcputime's folded
    /// stacks; `--group-by` frames come before it unless it is placed among them;
    /// `--no-comm` drops it.
    #[test]
    fn the_command_is_the_root_unless_placed_or_dropped() {
        use GroupBy::{Comm, Lock, Mount};
        assert_eq!(leading_frames(&[], true).unwrap(), [Comm]);
        assert_eq!(leading_frames(&[Mount], true).unwrap(), [Mount, Comm]);
        assert_eq!(leading_frames(&[Comm, Mount], true).unwrap(), [Comm, Mount]);
        assert_eq!(leading_frames(&[Mount, Comm, Lock], true).unwrap(), [Mount, Comm, Lock]);
        assert_eq!(leading_frames(&[Lock], false).unwrap(), [Lock]);
        assert!(leading_frames(&[], false).unwrap().is_empty());
        let err = leading_frames(&[Comm], false).unwrap_err().to_string();
        assert!(err.contains("--no-comm"), "{err}");

        let stack = ["__schedule", "d_alloc_parallel"];
        let mut stuck = row(1, "stat", &stack, Some("/mnt/x"), &[1_000_000]);
        stuck.lock = Some("d_wait of /mnt/x/a".to_owned());
        let rows = [stuck];
        let lines = |group_by: &[GroupBy], comm: bool| {
            folded(&rows, Weight::Time, &leading_frames(group_by, comm).unwrap())
        };
        assert_eq!(lines(&[], true), ["comm:stat;d_alloc_parallel 1000"]);
        assert_eq!(lines(&[Mount], true), ["mount:/mnt/x;comm:stat;d_alloc_parallel 1000"]);
        assert_eq!(lines(&[Comm, Lock], true), ["comm:stat;lock:d_wait of /mnt/x/a;d_alloc_parallel 1000"]);
        assert_eq!(lines(&[Mount], false), ["mount:/mnt/x;d_alloc_parallel 1000"]);
        assert_eq!(lines(&[], false), ["d_alloc_parallel 1000"]);
    }

    /// speedscope's file: one sampled profile, a sample per folded line with the
    /// same weight, frames shared by index, the unit named.
    #[test]
    fn speedscope_has_the_folded_stacks_with_their_unit() {
        let lookup = ["__schedule", "schedule", "d_alloc_parallel", "lookup_slow"];
        let rows = [
            row(1, "stat", &lookup, None, &[2_000_000, 1_500]),
            row(2, "ls", &lookup, None, &[1_000_000]),
            row(3, "a;b\x1b", &[], None, &[7_000]),
            row(4, "idle", &lookup, None, &[100]),
        ];
        let leading = by_comm();
        for weight in [Weight::Time, Weight::Count] {
            let file = speedscope(&rows, weight, &leading, "blocked");
            let file: serde_json::Value = serde_json::from_str(&file.to_string()).unwrap();
            assert_eq!(file["$schema"], "https://www.speedscope.app/file-format-schema.json");
            assert_eq!(file["activeProfileIndex"], 0);
            let frames: Vec<&str> = file["shared"]["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap())
                .collect();
            let mut unique = frames.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), frames.len(), "frames are shared, each once: {frames:?}");
            let profiles = file["profiles"].as_array().unwrap();
            assert_eq!(profiles.len(), 1);
            let profile = &profiles[0];
            assert_eq!(profile["type"], "sampled");
            assert_eq!(profile["unit"], if weight == Weight::Time { "microseconds" } else { "none" });
            let samples = profile["samples"].as_array().unwrap();
            let weights: Vec<u64> =
                profile["weights"].as_array().unwrap().iter().map(|w| w.as_u64().unwrap()).collect();
            assert_eq!(samples.len(), weights.len());
            assert_eq!(profile["startValue"], 0);
            assert_eq!(profile["endValue"].as_u64().unwrap(), weights.iter().sum::<u64>());
            // The folded lines, frame for frame (but `;`), weight for weight.
            let mut as_folded: Vec<String> = samples
                .iter()
                .zip(&weights)
                .map(|(sample, weight)| {
                    let names: Vec<String> = sample
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| frames[i.as_u64().unwrap() as usize].replace(';', "\\x3b"))
                        .collect();
                    format!("{} {weight}", names.join(";"))
                })
                .collect();
            as_folded.sort_unstable();
            assert_eq!(as_folded, folded(&rows, weight, &leading));
        }
        let file = speedscope(&rows, Weight::Time, &leading, "blocked");
        // The two lookups share their kernel frames; the leaf is d_alloc_parallel.
        let frames = file["shared"]["frames"].as_array().unwrap();
        assert_eq!(frames.iter().filter(|f| f["name"] == "d_alloc_parallel").count(), 1);
        assert!(frames.iter().all(|f| f["name"] != "__schedule" && f["name"] != "schedule"));
        assert!(frames.iter().any(|f| f["name"] == "comm:a;b\\x1b"), "{frames:?}");
        assert_eq!(file["profiles"][0]["weights"], serde_json::json!([7, 1000, 2002]));
    }

    /// pprof's flat (self) values go to the blocking functions; the command stays a
    /// label (for `-tagfocus`, `-tags`), not a location.
    #[test]
    fn pprof_leaves_are_blocking_functions_and_commands_labels() {
        let rows = [
            row(
                1,
                "stat",
                &["__schedule", "schedule", "d_alloc_parallel", "lookup_slow"],
                Some("/mnt/x"),
                &[3_000],
            ),
            row(
                2,
                "sync",
                &[
                    "__schedule",
                    "io_schedule",
                    "folio_wait_bit_common",
                    "folio_wait_writeback",
                    "__filemap_fdatawait_range",
                ],
                None,
                &[5_000],
            ),
        ];
        let profile = pprof::decode(&profile(&rows, None, Weight::Time).unwrap()).unwrap();
        let name = |i: i64| profile.string_table[i as usize].as_str();
        let function = |location: u64| name(profile.function[location as usize - 1].name);
        let leaves: Vec<&str> = profile.sample.iter().map(|s| function(s.location_id[0])).collect();
        assert_eq!(leaves, ["d_alloc_parallel", "__filemap_fdatawait_range"]);
        let names: Vec<&str> = profile.function.iter().map(|f| name(f.name)).collect();
        assert!(!names.iter().any(|n| crate::resolve::symbols::is_wait_primitive(n)), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("comm:")), "{names:?}");
        let labels: Vec<(&str, &str)> = profile.sample[0]
            .label
            .iter()
            .filter(|l| l.str != 0)
            .map(|l| (name(l.key), name(l.str)))
            .collect();
        assert_eq!(labels, [("comm", "stat"), ("mount", "/mnt/x")]);
        let values: Vec<i64> = profile.sample.iter().map(|s| s.value[0]).collect();
        assert_eq!(values, [3_000, 5_000]);
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
            String::from_utf8(svg(&folded(&rows, Weight::Time, &by_comm()), Weight::Time, "test").unwrap())
                .unwrap();
        assert!(svg.contains("Off-CPU (D state)"), "{svg}");
        assert!(svg.contains("d_alloc_parallel"));
        assert!(svg.contains("3,000 us") || svg.contains("3000 us"), "{svg}");
    }
}
