//! What a recording holds: its records (a session, an interval of aggregated
//! rows and individual waits, the tasks in D at an interval's end; strings and
//! stacks interned), and the same resolved as dstrace works with them
//! ([`IntervalData`], [`RowData`]).
//!
//! The tasks in D ([`TasksInD`], format 2) are what an incident is made of: the
//! waits that have not ended, so are in no row yet. Each is described once
//! ([`InDRecord`]: everything `run --json` says of it, its times left out) and
//! numbered; an interval then lists the numbers of the tasks in D at its end and
//! how long each has been in D. A task still in D, as it was, costs a few bytes
//! per interval; one whose description changed (its holder woke, a request was
//! answered) is described again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{
    model::{aggregate::Totals, wait::Wait},
    resolve::symbols::Stack,
};

/// One record of the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A session starts: the tables of strings and stacks are empty again.
    Session(Session),
    /// What one interval saw.
    Interval(Interval),
    /// The tasks in D at the end of the interval just written (format 2; the
    /// frame after that interval's).
    InD(TasksInD),
    /// What one interval saw, with the ids its definitions start at (format 2),
    /// so that a damaged frame before it shifts no id after it.
    IntervalAt(First, Interval),
    /// Nothing could be written for a while (a full disk, a quota): what the
    /// interval after it holds instead, and what was lost (format 3).
    Gap(Gap),
}

/// A time the writer could not write (`ENOSPC`, `EDQUOT`), and what it kept: the
/// interval record after it is every interval that ended meanwhile, as one (the
/// aggregation is a difference, so nothing of it is lost); the waits one by one
/// past what it holds in memory and the tasks in D of the interval ends but the
/// last are lost, and counted here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// When writing first failed, in nanoseconds since the Unix epoch.
    pub failed_ns: u64,
    /// When it wrote again.
    pub resumed_ns: u64,
    /// Why it could not write.
    pub error: String,
    /// Intervals that ended meanwhile, in the next interval record as one.
    pub intervals: u64,
    /// Waits of at least the threshold not kept one by one (they are in the
    /// aggregation).
    pub waits_lost: u64,
    /// Lists of the tasks in D at an interval's end not kept (the last is).
    pub looks_lost: u64,
    /// Aggregated waits not kept (past the rows held in memory).
    pub aggregated_lost: u64,
}

/// The ids the definitions of a record start at: those of a damaged frame before
/// are lost, and no later id names another string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct First {
    /// The id of the record's first new string.
    pub string: u32,
    /// Of its first new stack.
    pub stack: u32,
    /// Of its first new description of a task in D.
    pub described: u32,
}

/// Who recorded, when, and with what settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// When the session started, in nanoseconds since the Unix epoch.
    pub started_ns: u64,
    /// The dstrace version that wrote it.
    pub dstrace: String,
    /// The machine's host name.
    pub hostname: String,
    /// The kernel release.
    pub kernel: String,
    /// The recording interval, in nanoseconds.
    pub interval_ns: u64,
    /// Individual waits are recorded from this long on, in nanoseconds.
    pub min_duration_ns: u64,
}

/// One interval, its strings and stacks interned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    /// When it began, in nanoseconds since the Unix epoch.
    pub start_ns: u64,
    /// When it ended.
    pub end_ns: u64,
    /// Strings used here for the first time in the session; their ids follow on
    /// from those defined before.
    pub strings: Vec<String>,
    /// Stacks (string ids, innermost frame first) used here for the first time.
    pub stacks: Vec<Vec<u32>>,
    /// Completed waits aggregated in the kernel (every wait, short ones included).
    pub rows: Vec<Row>,
    /// Completed waits of at least the session's threshold, one by one.
    pub waits: Vec<WaitRecord>,
    /// The kernel side's counters at the end (totals since tracing began).
    pub counters: Vec<(u32, u64)>,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let long = crate::clock::human_duration(self.resumed_ns.saturating_sub(self.failed_ns));
        write!(
            f,
            "nothing could be written from {} to {} ({long}: {}); the {} intervals that ended \
             meanwhile are the next one, whole; lost: {} waits one by one (they are in the \
             aggregation), the tasks in D at {} interval ends, {} aggregated waits",
            crate::clock::rfc3339_utc(from_unix_ns(self.failed_ns)),
            crate::clock::rfc3339_utc(from_unix_ns(self.resumed_ns)),
            self.error,
            self.intervals,
            self.waits_lost,
            self.looks_lost,
            self.aggregated_lost
        )
    }
}

/// Completed waits of one process, command, kernel stack and cause.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Process id.
    pub pid: u32,
    /// Command (string id).
    pub comm: u32,
    /// Kernel stack (stack id), `None` when it was lost.
    pub stack: Option<u32>,
    /// Mount point (string id), when known.
    pub mount: Option<u32>,
    /// Kernel lock (string id), when it waits for one.
    pub lock: Option<u32>,
    /// Number of waits.
    pub count: u64,
    /// Sum of their durations, in nanoseconds.
    pub total_ns: u64,
    /// The longest (an upper bound, see [`Totals::since`]).
    pub max_ns: u64,
    /// Log2 histogram in microseconds, trailing zeros left out.
    pub hist: Vec<u64>,
}

/// One completed wait ([`Wait`], strings interned).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WaitRecord {
    /// Start, in nanoseconds since the Unix epoch.
    pub start_ns: Option<u64>,
    /// End, likewise.
    pub end_ns: Option<u64>,
    /// Duration in nanoseconds.
    pub duration_ns: u64,
    /// Thread id.
    pub tid: u32,
    /// Process id.
    pub pid: u32,
    /// Command (string id).
    pub comm: u32,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// 0: `D`, 1: `D+killable`, 2: `D+idle`.
    pub state: u8,
    /// Kernel stack (stack id).
    pub stack: Option<u32>,
    /// Who woke it.
    pub waker: Option<WakerRecord>,
    /// Syscall name (string id).
    pub syscall: Option<u32>,
    /// Its mount.
    pub mount: Option<MountRecord>,
    /// Its file: path (string id) and inode.
    pub file: Option<(Option<u32>, Option<u64>)>,
    /// The kernel lock it waited for.
    pub lock: Option<LockRecord>,
}

/// [`WakerInfo`], interned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WakerRecord {
    /// Thread id.
    pub tid: u32,
    /// Process id.
    pub pid: u32,
    /// Command (string id).
    pub comm: u32,
    /// Woken from interrupt context.
    pub interrupt: bool,
    /// Its kernel stack (stack id).
    pub stack: Option<u32>,
}

/// A mount: mount point, type and source (string ids), device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MountRecord {
    /// Mount point.
    pub mount_point: u32,
    /// Filesystem type.
    pub fs_type: u32,
    /// Source.
    pub source: u32,
    /// Device `(major, minor)`.
    pub dev: (u32, u32),
}

/// [`LockInfo`], interned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LockRecord {
    /// Kind (string id).
    pub kind: u32,
    /// Address.
    pub addr: u64,
    /// For an inode's `i_rwsem`: device and inode.
    pub inode: Option<((u32, u32), u64)>,
    /// Who held it.
    pub holder: Option<HolderRecord>,
}

/// [`Holder`], interned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HolderRecord {
    /// Thread id.
    pub tid: u32,
    /// Process id.
    pub pid: u32,
    /// Command (string id).
    pub comm: u32,
    /// Only the last reader of a rwsem.
    pub reader_hint: bool,
    /// Its state letter when the wait was seen.
    pub state: Option<char>,
    /// Where it was blocked (string id).
    pub function: Option<u32>,
}

/// The tasks in D at the end of an interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TasksInD {
    /// The end of the interval they belong to, in nanoseconds since the Unix epoch.
    pub end_ns: u64,
    /// The ids of its first definitions.
    pub first: First,
    /// Strings used here for the first time in the session.
    pub strings: Vec<String>,
    /// Stacks used here for the first time.
    pub stacks: Vec<Vec<u32>>,
    /// Descriptions used here for the first time; their ids follow on from those
    /// defined before in the session.
    pub described: Vec<InDRecord>,
    /// Each task in D: the id of its description, and how long it had been in D
    /// at `end_ns`, in milliseconds.
    pub tasks: Vec<(u32, u64)>,
}

/// A task in D as `run --json` describes it, strings interned, without its times
/// (so that it stays the same from one interval to the next).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InDRecord {
    /// The wait (its `start_ns`, `end_ns` and `duration_ns` unset).
    pub wait: WaitRecord,
    /// Its cgroup v2 path (string id).
    pub cgroup: Option<u32>,
    /// Its mount's ID and mount namespace (0 when unknown).
    pub mount_id: (u32, u64),
    /// 0: traced, 1: `/proc`, 2: the task iterator.
    pub source: u8,
    /// Its wait chain.
    pub chain: Vec<LinkRecord>,
    /// File locks others hold on its file.
    pub file_locks: Vec<FileLockRecord>,
}

/// A file lock someone holds: kind and access (string ids), holder, byte range
/// (start, end or `None` for `EOF`).
pub type FileLockRecord = (u32, u32, Option<u32>, u64, Option<u64>);

/// A [`crate::model::link::Link`], strings interned, ages as the times (whole
/// seconds since the Unix epoch) they count from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LinkRecord {
    /// A task: tid, pid, command, state letter, function.
    Task(u32, u32, u32, Option<char>, Option<u32>),
    /// A kernel lock by name.
    Lock(u32),
    /// A file lock's kind.
    FileLock(u32),
    /// A mount: mount point, type, source.
    Mount(u32, u32, u32),
    /// FUSE requests: in flight, when the oldest was sent, its opcode, its
    /// sender's tid and command, how many the daemon read.
    FuseRequests(u64, Option<u64>, u32, u32, u32, Option<u64>),
    /// A FUSE daemon: pid, command, state letter, requests waiting.
    FuseDaemon(u32, u32, Option<char>, Option<u64>),
    /// RPCs: program, version, procedure, xid, when it began, transmissions,
    /// major timeouts, since when not responding, other RPCs.
    Rpc(u32, u32, u32, Option<u32>, Option<u64>, u32, u32, Option<u64>, u32),
    /// An NFS server: address, NFS version.
    NfsServer(u32, Option<u32>),
}

/// One interval as dstrace works with it: strings and stacks resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntervalData {
    /// When it began.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// The aggregated rows.
    pub rows: Vec<RowData>,
    /// The individual waits.
    pub waits: Vec<Wait>,
    /// The kernel side's counters by name.
    pub counters: Vec<(String, u64)>,
    /// The tasks in D at its end (ongoing waits, with their chains), longest
    /// first; empty in a recording of format 1, which did not keep them.
    pub in_d: Vec<Wait>,
}

/// An aggregated row, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowData {
    /// Process id.
    pub pid: u32,
    /// Command.
    pub comm: String,
    /// Kernel stack, innermost frame first (empty when lost).
    pub stack: Stack,
    /// Mount point, when known.
    pub mount: Option<String>,
    /// Kernel lock, when it waits for one.
    pub lock: Option<String>,
    /// Its counters.
    pub totals: Totals,
}

/// Nanoseconds since the Unix epoch (0 before it).
pub fn unix_ns(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, crate::clock::duration_ns)
}

/// The time of nanoseconds since the Unix epoch.
pub fn from_unix_ns(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}
