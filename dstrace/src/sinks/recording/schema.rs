//! What a recording holds: its records (a session, or an interval of aggregated
//! rows and individual waits, strings and stacks interned), and the same resolved
//! as dstrace works with them ([`IntervalData`], [`RowData`]).

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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
