//! The JSON sink and schema version 1 (README, "JSON output"): one object per line
//! for `run --json`, one document for `snapshot --json`, and every wire type that
//! `report --format json` shares with them. The schema's version changes only
//! when a field changes meaning or goes away; new fields may appear in any
//! version.

use std::io::{self, Write};

use serde::Serialize;

use crate::{
    clock::{json_ms, rfc3339_utc},
    model::{
        aggregate::Group,
        board::{self, BoardGroup, CauseGroup},
        link::Link,
        wait::{LockInfo, Source, Wait},
    },
    resolve::mounts::Mount,
    sinks::{Sink, Snapshot, Start, Summary, Update},
};

/// The version of the JSON schema.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// One JSON object per line.
pub struct JsonSink<W: Write> {
    out: W,
}

impl<W: Write> JsonSink<W> {
    /// A sink writing to `out`.
    pub fn new(out: W) -> Self {
        JsonSink { out }
    }

    fn json_line(&mut self, value: &impl Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        writeln!(self.out)
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn start(&mut self, start: &Start<'_>) -> io::Result<()> {
        let record = serde_json::json!({
            "type": "start",
            "version": JSON_SCHEMA_VERSION,
            "program": start.program,
            "min_duration_ms": json_ms(start.min_duration_ns),
            "skipped": start.skipped,
        });
        self.json_line(&record)?;
        self.out.flush()
    }

    fn ongoing(&mut self, _title: &str, waits: &[Wait]) -> io::Result<()> {
        if waits.is_empty() {
            return Ok(());
        }
        for wait in waits {
            self.wait(wait)?;
        }
        self.out.flush()
    }

    fn wait(&mut self, wait: &Wait) -> io::Result<()> {
        self.json_line(&JsonWait::of(wait))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn update(&mut self, update: &Update<'_>) -> io::Result<()> {
        for wait in update.ongoing {
            self.json_line(&JsonWait::of(wait))?;
        }
        let record = serde_json::json!({
            "type": "interval",
            "end": rfc3339_utc(update.time),
            "seconds": update.seconds,
            "tasks_in_d": update.ongoing.len(),
            "groups": json_board(update.groups),
            "by_process": json_by_process(update.by_process),
            "advice": update.advice,
        });
        self.json_line(&record)?;
        self.out.flush()
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        let by_mount = board::by_mount(&summary.groups);
        let by_lock = board::by_lock(&summary.groups);
        let counters: serde_json::Map<String, serde_json::Value> =
            summary.counters.iter().map(|&(counter, n)| (counter.name().to_owned(), n.into())).collect();
        let ongoing: Vec<JsonWait<'_>> = summary.ongoing.iter().map(JsonWait::of).collect();
        let record = serde_json::json!({
            "type": "summary",
            "version": JSON_SCHEMA_VERSION,
            "shown": summary.shown,
            "min_duration_ms": json_ms(summary.min_duration_ns),
            "counters": counters,
            "bad_records": summary.bad_records,
            "groups": json_board(&summary.groups),
            "by_process": json_by_process(&summary.by_process),
            "by_mount": json_causes(&by_mount, "mountpoint"),
            "by_lock": json_causes(&by_lock, "lock"),
            "advice": summary.advice,
            "ongoing": ongoing,
        });
        self.json_line(&record)?;
        self.out.flush()
    }

    fn snapshot(&mut self, snapshot: &Snapshot) -> io::Result<()> {
        let record = serde_json::json!({
            "type": "snapshot",
            "version": JSON_SCHEMA_VERSION,
            "time": rfc3339_utc(snapshot.time),
            "tasks": snapshot.waits.iter().map(JsonWait::of).collect::<Vec<_>>(),
            "groups": json_board(&snapshot.groups),
            "by_mount": json_causes(&board::by_mount(&snapshot.groups), "mountpoint"),
            "by_lock": json_causes(&board::by_lock(&snapshot.groups), "lock"),
            "cannot_see": snapshot.cannot_see,
            "source": snapshot.source,
            "advice": snapshot.advice,
        });
        serde_json::to_writer_pretty(&mut self.out, &record)?;
        writeln!(self.out)?;
        self.out.flush()
    }
}

/// Waits by mount or by lock as JSON values, the key under `key`.
pub fn json_causes(groups: &[CauseGroup], key: &str) -> Vec<serde_json::Value> {
    groups
        .iter()
        .map(|group| {
            serde_json::json!({
                key: group.key,
                "detail": group.detail,
                "tasks_in_d": group.ongoing,
                "oldest_ms": json_ms(group.oldest_ns),
                "count": group.completed.count,
                "blocked_ms": json_ms(group.completed.total_ns),
                "max_ms": json_ms(group.completed.max_ns),
                "tgids": group.pids,
            })
        })
        .collect()
}

/// One wait as the JSON object `run --json` prints for it.
pub fn json_wait(wait: &Wait) -> serde_json::Value {
    serde_json::to_value(JsonWait::of(wait)).unwrap_or_default()
}

/// The in-kernel aggregation by process and function as JSON values.
pub fn json_by_process(groups: &[Group]) -> Vec<serde_json::Value> {
    groups
        .iter()
        .map(|group| {
            serde_json::json!({
                "tgid": group.pid,
                "comm": group.comm,
                "function": group.blocked_in,
                "count": group.totals.count,
                "blocked_ms": json_ms(group.totals.total_ns),
                "max_ms": json_ms(group.totals.max_ns),
                "hist_log2_us": group.totals.hist,
            })
        })
        .collect()
}

/// The board's groups as JSON values (README, "JSON output").
pub fn json_board(groups: &[BoardGroup]) -> Vec<serde_json::Value> {
    groups
        .iter()
        .map(|group| {
            serde_json::json!({
                "mount": group.mount.as_ref().map(JsonMount::of),
                "lock": group.lock.as_ref().map(JsonLock::of),
                "function": group.key.function,
                "tasks_in_d": group.tasks.len(),
                "oldest_ms": json_ms(group.oldest_ns()),
                "blocked_ms": json_ms(group.blocked_ns()),
                "completed": {
                    "count": group.completed.count,
                    "blocked_ms": json_ms(group.completed.total_ns),
                    "max_ms": json_ms(group.completed.max_ns),
                },
                "tgids": group.pids,
                "tids_in_d": group.tasks.iter().map(|wait| wait.tid).collect::<Vec<_>>(),
                "chain": group.chain().unwrap_or_default(),
            })
        })
        .collect()
}

#[derive(Serialize)]
struct JsonWait<'a> {
    /// `wait` (completed) or `ongoing`.
    r#type: &'static str,
    start: Option<String>,
    end: Option<String>,
    blocked_ms: f64,
    tid: u32,
    tgid: u32,
    comm: &'a str,
    /// `null` when unknown (a task seen in `/proc` only: its cgroup id is the
    /// kernel's, which `/proc` does not give), never 0.
    cgroup_id: Option<u64>,
    /// The cgroup v2 path.
    cgroup: Option<&'a str>,
    state: &'static str,
    function: Option<&'a str>,
    stack: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    user_stack: &'a [String],
    waker: Option<JsonWaker<'a>>,
    syscall: Option<&'static str>,
    mount: Option<JsonMount<'a>>,
    file: Option<JsonFile<'a>>,
    lock: Option<JsonLock<'a>>,
    /// The wait chain (waits still going on).
    #[serde(skip_serializing_if = "<[Link]>::is_empty")]
    chain: &'a [Link],
    /// File locks others hold on the file it waits to lock.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    file_locks: Vec<JsonFileLock<'a>>,
    source: &'static str,
}

#[derive(Serialize)]
struct JsonFileLock<'a> {
    kind: &'a str,
    access: &'a str,
    tgid: Option<u32>,
    start: u64,
    end: Option<u64>,
}

#[derive(Serialize)]
struct JsonLock<'a> {
    kind: &'static str,
    /// Hex, as the kernel prints addresses.
    addr: String,
    name: String,
    inode: Option<JsonInode>,
    holder: Option<JsonHolder<'a>>,
}

#[derive(Serialize)]
struct JsonInode {
    dev: String,
    ino: u64,
}

#[derive(Serialize)]
struct JsonHolder<'a> {
    tid: u32,
    tgid: u32,
    comm: &'a str,
    /// The rwsem is held for reading and this is only the last reader.
    reader_hint: bool,
    /// Its state letter now, null if it is gone.
    state: Option<String>,
    /// Where it is blocked now.
    function: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonMount<'a> {
    mountpoint: std::borrow::Cow<'a, str>,
    fstype: &'a str,
    source: &'a str,
    /// `major:minor`.
    dev: String,
    /// The mount ID (`/proc/PID/mountinfo`'s first field), `null` when unknown
    /// (read back from a recording).
    id: Option<u32>,
    /// The mount namespace it was named in (the inode number of
    /// `/proc/PID/ns/mnt`), `null` when unknown.
    namespace: Option<u64>,
}

#[derive(Serialize)]
struct JsonFile<'a> {
    path: Option<&'a str>,
    inode: Option<u64>,
}

#[derive(Serialize)]
struct JsonWaker<'a> {
    tid: u32,
    tgid: u32,
    comm: &'a str,
    /// Woken from interrupt context: the task named is only the one interrupted.
    interrupt: bool,
    stack: &'a [String],
}

impl<'a> JsonMount<'a> {
    fn of(mount: &'a Mount) -> JsonMount<'a> {
        JsonMount {
            mountpoint: mount.mount_point.to_string_lossy(),
            fstype: &mount.fs_type,
            source: &mount.source,
            dev: format!("{}:{}", mount.dev.0, mount.dev.1),
            id: (mount.id != 0).then_some(mount.id),
            namespace: (mount.namespace != 0).then_some(mount.namespace),
        }
    }
}

impl<'a> JsonLock<'a> {
    fn of(lock: &'a LockInfo) -> JsonLock<'a> {
        JsonLock {
            kind: lock.kind,
            addr: format!("{:#x}", lock.addr),
            name: lock.name(),
            inode: lock.inode.map(|((major, minor), ino)| JsonInode { dev: format!("{major}:{minor}"), ino }),
            holder: lock.holder.as_ref().map(|holder| JsonHolder {
                tid: holder.tid,
                tgid: holder.pid,
                comm: &holder.comm,
                reader_hint: holder.reader_hint,
                state: holder.state.map(String::from),
                function: holder.function.as_deref(),
            }),
        }
    }
}

impl<'a> JsonWait<'a> {
    fn of(wait: &'a Wait) -> JsonWait<'a> {
        JsonWait {
            r#type: if wait.is_ongoing() { "ongoing" } else { "wait" },
            start: wait.start.map(rfc3339_utc),
            end: wait.end.map(rfc3339_utc),
            blocked_ms: json_ms(wait.duration_ns),
            tid: wait.tid,
            tgid: wait.pid,
            comm: &wait.comm,
            cgroup_id: (wait.cgroup_id != 0).then_some(wait.cgroup_id),
            cgroup: wait.cgroup.as_deref(),
            state: wait.state.name(),
            function: wait.blocked_in.as_deref(),
            stack: &wait.stack,
            user_stack: &wait.user_stack,
            waker: wait.waker.as_ref().map(|waker| JsonWaker {
                tid: waker.tid,
                tgid: waker.pid,
                comm: &waker.comm,
                interrupt: waker.interrupt,
                stack: &waker.stack,
            }),
            syscall: wait.on.syscall,
            mount: wait.on.mount.as_ref().map(JsonMount::of),
            file: wait
                .on
                .file
                .as_ref()
                .map(|file| JsonFile { path: file.path.as_deref(), inode: file.inode }),
            lock: wait.lock.as_ref().map(JsonLock::of),
            chain: &wait.chain,
            file_locks: wait
                .on
                .file_locks
                .iter()
                .map(|lock| JsonFileLock {
                    kind: &lock.kind,
                    access: &lock.access,
                    tgid: lock.pid,
                    start: lock.range.0,
                    end: lock.range.1,
                })
                .collect(),
            source: match wait.source {
                Source::Traced => "traced",
                Source::Proc => "proc",
                Source::Iterator => "iterator",
            },
        }
    }
}
