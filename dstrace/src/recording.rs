//! The recording file that `dstrace record` and `dstrace run --output` write and
//! `dstrace report` reads: its layout, the writer (rotation, size cap, safe
//! creation) and the reader (damage detected, reported and skipped).
//!
//! # Why this shape
//!
//! A recording runs for days on a machine in trouble and is read after a crash,
//! a full disk or a power cut. So it is a sequence of independent, checksummed
//! frames that is only ever appended to: a crash loses at most the frame being
//! written (the last interval), a reader finds every intact frame before and
//! after a damaged one, and a later dstrace appends a new session to an old file.
//!
//! # Layout (format version [`VERSION`]; integers little endian)
//!
//! ```text
//! file    = header frame*
//! header  = "DSTRREC\0" (8 bytes) | version: u16 | 6 reserved bytes (zero)
//! frame   = marker "\xd5FRM" (4 bytes) | len: u32 | crc32(payload): u32 | payload (len bytes)
//! payload = one Record, encoded with postcard 1.x (its wire format is specified and
//!           stable: variable-length integers, strings as length + UTF-8)
//! ```
//!
//! A [`Record`] is a [`Record::Session`] (who recorded, when, with what settings)
//! or a [`Record::Interval`]: the in-kernel aggregation drained over one interval
//! (one [`Row`] per process, command, kernel stack and cause, with count, total,
//! maximum and log2 histogram), the individual waits above the threshold of that
//! interval, and the kernel side's counters. Strings (symbols, commands, mount
//! points, lock names) and stacks are interned per session: an interval lists the
//! strings and stacks it uses for the first time, and refers to all of them by
//! number, so a symbol is written once per file. Every file starts with a session,
//! and so does each run of dstrace that appends to a file, so each file (and each
//! part of one) is read on its own. An id whose definition was in a damaged frame
//! reads as `<lost string N>`.
//!
//! The reader checks the header's magic and version, then each frame's marker,
//! length ([`MAX_FRAME_LEN`] at most) and checksum. A frame that fails is reported
//! as [`Damage`] (its offset and what was wrong) and skipped: the reader looks for
//! the next intact frame after it, so one bad frame costs one interval.
//!
//! # Files
//!
//! Recordings hold process names and paths: they are created with mode 0600 and
//! `O_NOFOLLOW` (a symbolic link planted in a shared directory is refused, not
//! followed), only ever appended to (never truncated), and an existing file is
//! appended to only if it is a dstrace recording of this user, by one dstrace at a
//! time (an exclusive `flock` while it is open). When a file would
//! grow past its size cap it is rotated: `FILE.N-1` becomes `FILE.N` (the oldest is
//! dropped), ..., `FILE` becomes `FILE.1`, and a new `FILE` starts; a file in the
//! way that is not a recording stops the rotation with an error.

use std::{
    collections::HashMap,
    fmt,
    fs::File,
    io::{self, Write as _},
    os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    aggregate::Totals,
    attribution::{Attribution, FileRef},
    mounts::Mount,
    record::{Holder, LockInfo, Source, TaskState, Wait, WakerInfo},
    symbols::Stack,
};

/// The first eight bytes of every recording.
pub const MAGIC: [u8; 8] = *b"DSTRREC\0";
/// The format version this dstrace writes and reads.
pub const VERSION: u16 = 1;
/// Bytes of the file header.
pub const HEADER_LEN: usize = 16;
/// The marker at the start of every frame.
pub const FRAME_MARKER: [u8; 4] = *b"\xd5FRM";
/// Bytes of a frame header: marker, length, checksum.
pub const FRAME_HEADER_LEN: usize = 12;
/// The largest payload a frame may have.
pub const MAX_FRAME_LEN: u32 = 64 << 20;

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

/// Strings and stacks of a session, as the writer numbers them.
#[derive(Default)]
pub struct Interner {
    strings: HashMap<String, u32>,
    stacks: HashMap<Vec<u32>, u32>,
    new_strings: Vec<String>,
    new_stacks: Vec<Vec<u32>>,
}

impl Interner {
    /// The id of a string, defining it if new.
    pub fn string(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.strings.get(text) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.insert(text.to_owned(), id);
        self.new_strings.push(text.to_owned());
        id
    }

    /// The id of a stack; `None` for an empty (lost) one.
    pub fn stack(&mut self, frames: &[String]) -> Option<u32> {
        if frames.is_empty() {
            return None;
        }
        let ids: Vec<u32> = frames.iter().map(|frame| self.string(frame)).collect();
        if let Some(&id) = self.stacks.get(&ids) {
            return Some(id);
        }
        let id = self.stacks.len() as u32;
        self.stacks.insert(ids.clone(), id);
        self.new_stacks.push(ids);
        Some(id)
    }

    /// Encodes an interval: what it refers to is defined in it or before it.
    pub fn interval(&mut self, data: &IntervalData) -> Interval {
        let rows = data
            .rows
            .iter()
            .map(|row| Row {
                pid: row.pid,
                comm: self.string(&row.comm),
                stack: self.stack(&row.stack),
                mount: row.mount.as_deref().map(|mount| self.string(mount)),
                lock: row.lock.as_deref().map(|lock| self.string(lock)),
                count: row.totals.count,
                total_ns: row.totals.total_ns,
                max_ns: row.totals.max_ns,
                hist: {
                    let used = row.totals.hist.iter().rposition(|&n| n != 0).map_or(0, |i| i + 1);
                    row.totals.hist[..used].to_vec()
                },
            })
            .collect();
        let waits = data.waits.iter().map(|wait| self.wait(wait)).collect();
        let counters = data.counters.iter().map(|(name, n)| (self.string(name), *n)).collect();
        Interval {
            start_ns: unix_ns(data.start),
            end_ns: unix_ns(data.end),
            strings: std::mem::take(&mut self.new_strings),
            stacks: std::mem::take(&mut self.new_stacks),
            rows,
            waits,
            counters,
        }
    }

    fn wait(&mut self, wait: &Wait) -> WaitRecord {
        WaitRecord {
            start_ns: wait.start.map(unix_ns),
            end_ns: wait.end.map(unix_ns),
            duration_ns: wait.duration_ns,
            tid: wait.tid,
            pid: wait.pid,
            comm: self.string(&wait.comm),
            cgroup_id: wait.cgroup_id,
            state: match wait.state {
                TaskState::Uninterruptible => 0,
                TaskState::Killable => 1,
                TaskState::Idle => 2,
            },
            stack: self.stack(&wait.stack),
            waker: wait.waker.as_ref().map(|waker| WakerRecord {
                tid: waker.tid,
                pid: waker.pid,
                comm: self.string(&waker.comm),
                interrupt: waker.interrupt,
                stack: self.stack(&waker.stack),
            }),
            syscall: wait.on.syscall.map(|name| self.string(name)),
            mount: wait.on.mount.as_ref().map(|mount| MountRecord {
                mount_point: self.string(&mount.mount_point.to_string_lossy()),
                fs_type: self.string(&mount.fs_type),
                source: self.string(&mount.source),
                dev: mount.dev,
            }),
            file: wait
                .on
                .file
                .as_ref()
                .map(|file| (file.path.as_deref().map(|p| self.string(p)), file.inode)),
            lock: wait.lock.as_ref().map(|lock| LockRecord {
                kind: self.string(lock.kind),
                addr: lock.addr,
                inode: lock.inode,
                holder: lock.holder.as_ref().map(|holder| HolderRecord {
                    tid: holder.tid,
                    pid: holder.pid,
                    comm: self.string(&holder.comm),
                    reader_hint: holder.reader_hint,
                    state: holder.state,
                    function: holder.function.as_deref().map(|f| self.string(f)),
                }),
            }),
        }
    }
}

/// Strings and stacks of a session, as the reader has them so far.
#[derive(Default)]
pub struct Table {
    strings: Vec<String>,
    stacks: Vec<Stack>,
}

impl Table {
    fn string(&self, id: u32) -> String {
        self.strings.get(id as usize).cloned().unwrap_or_else(|| format!("<lost string {id}>"))
    }

    fn stack(&self, id: Option<u32>) -> Stack {
        match id {
            None => Stack::from([]),
            Some(id) => self
                .stacks
                .get(id as usize)
                .cloned()
                .unwrap_or_else(|| Stack::from([format!("<lost stack {id}>")])),
        }
    }

    /// Takes in the definitions of an interval and resolves it.
    pub fn interval(&mut self, interval: &Interval) -> IntervalData {
        self.strings.extend(interval.strings.iter().cloned());
        for ids in &interval.stacks {
            let stack: Stack = ids.iter().map(|&id| self.string(id)).collect();
            self.stacks.push(stack);
        }
        let rows = interval
            .rows
            .iter()
            .map(|row| {
                let mut totals = Totals {
                    count: row.count,
                    total_ns: row.total_ns,
                    max_ns: row.max_ns,
                    ..Totals::default()
                };
                for (slot, n) in totals.hist.iter_mut().zip(&row.hist) {
                    *slot = *n;
                }
                RowData {
                    pid: row.pid,
                    comm: self.string(row.comm),
                    stack: self.stack(row.stack),
                    mount: row.mount.map(|id| self.string(id)),
                    lock: row.lock.map(|id| self.string(id)),
                    totals,
                }
            })
            .collect();
        let waits = interval.waits.iter().map(|wait| self.wait(wait)).collect();
        let counters = interval.counters.iter().map(|&(name, n)| (self.string(name), n)).collect();
        IntervalData {
            start: from_unix_ns(interval.start_ns),
            end: from_unix_ns(interval.end_ns),
            rows,
            waits,
            counters,
        }
    }

    fn wait(&self, record: &WaitRecord) -> Wait {
        let stack = self.stack(record.stack);
        Wait {
            start: record.start_ns.map(from_unix_ns),
            end: record.end_ns.map(from_unix_ns),
            duration_ns: record.duration_ns,
            tid: record.tid,
            pid: record.pid,
            comm: self.string(record.comm),
            cgroup_id: record.cgroup_id,
            state: match record.state {
                1 => TaskState::Killable,
                2 => TaskState::Idle,
                _ => TaskState::Uninterruptible,
            },
            blocked_in: crate::symbols::blocking_function(stack.iter().map(String::as_str))
                .map(str::to_owned),
            stack,
            user_stack: Stack::from([]),
            waker: record.waker.as_ref().map(|waker| WakerInfo {
                tid: waker.tid,
                pid: waker.pid,
                comm: self.string(waker.comm),
                interrupt: waker.interrupt,
                stack: self.stack(waker.stack),
            }),
            on: Attribution {
                syscall: record
                    .syscall
                    .and_then(|id| crate::syscalls::by_name(&self.string(id)).map(|syscall| syscall.name)),
                mount: record.mount.as_ref().map(|mount| Mount {
                    id: 0,
                    parent_id: 0,
                    dev: mount.dev,
                    root: PathBuf::from("/"),
                    mount_point: PathBuf::from(self.string(mount.mount_point)),
                    fs_type: self.string(mount.fs_type),
                    source: self.string(mount.source),
                    super_options: String::new(),
                }),
                file: record
                    .file
                    .map(|(path, inode)| FileRef { path: path.map(|id| self.string(id)), inode }),
                file_locks: Vec::new(),
            },
            lock: record.lock.as_ref().map(|lock| LockInfo {
                kind: crate::record::lock_kind(&self.string(lock.kind)),
                addr: lock.addr,
                inode: lock.inode,
                holder: lock.holder.as_ref().map(|holder| Holder {
                    tid: holder.tid,
                    pid: holder.pid,
                    comm: self.string(holder.comm),
                    reader_hint: holder.reader_hint,
                    state: holder.state,
                    function: holder.function.map(|id| self.string(id)),
                }),
            }),
            chain: Vec::new(),
            source: Source::Traced,
        }
    }
}

/// Nanoseconds since the Unix epoch (0 before it).
pub fn unix_ns(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, crate::clock::duration_ns)
}

/// The time of nanoseconds since the Unix epoch.
pub fn from_unix_ns(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// A whole frame (header and payload) for a record.
pub fn frame(record: &Record) -> Result<Vec<u8>> {
    let payload = postcard::to_stdvec(record).context("cannot encode a recording frame")?;
    let len = u32::try_from(payload.len()).ok().filter(|&len| len <= MAX_FRAME_LEN);
    let Some(len) = len else { bail!("a recording frame of {} bytes is too large", payload.len()) };
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&FRAME_MARKER);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The file header.
pub fn header() -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..10].copy_from_slice(&VERSION.to_le_bytes());
    header
}

/// Why a file cannot be read as a recording at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotARecording {
    /// Too short for a header.
    Short(usize),
    /// The magic is not there.
    Magic,
    /// Written by a dstrace with a newer format.
    Version(u16),
}

impl fmt::Display for NotARecording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotARecording::Short(len) => {
                write!(f, "not a dstrace recording: {len} bytes, shorter than the {HEADER_LEN}-byte header")
            }
            NotARecording::Magic => write!(f, "not a dstrace recording (it does not start with DSTRREC)"),
            NotARecording::Version(version) => write!(
                f,
                "a dstrace recording of format {version}, newer than this dstrace reads ({VERSION}): \
                 read it with a newer dstrace"
            ),
        }
    }
}

impl std::error::Error for NotARecording {}

/// Checks a file header.
pub fn check_header(bytes: &[u8]) -> Result<(), NotARecording> {
    if bytes.len() < HEADER_LEN {
        return Err(NotARecording::Short(bytes.len()));
    }
    if bytes[..8] != MAGIC {
        return Err(NotARecording::Magic);
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version == 0 || version > VERSION {
        return Err(NotARecording::Version(version));
    }
    Ok(())
}

/// A damaged part of a recording, skipped by the reader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Where it starts (bytes from the start of the file).
    pub offset: u64,
    /// What was wrong.
    pub what: String,
    /// Bytes skipped.
    pub skipped: u64,
    /// Whether it ran to the end of the file (a torn tail).
    pub at_end: bool,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at_end {
            write!(
                f,
                "at byte {}: {}; the last {} bytes were skipped (a recording cut short by a crash or a \
                 full disk loses its last interval)",
                self.offset, self.what, self.skipped
            )
        } else {
            write!(
                f,
                "at byte {}: {}; skipped {} bytes to the next intact frame",
                self.offset, self.what, self.skipped
            )
        }
    }
}

/// What a recording holds: its records in order, and what was damaged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Records, with the offset of their frame.
    pub records: Vec<(u64, Record)>,
    /// Damaged parts, in order.
    pub damage: Vec<Damage>,
}

/// Why a frame at some offset is not intact.
enum Bad {
    Marker,
    TornHeader(usize),
    Length(u32),
    Torn { len: u32, left: usize },
    Checksum { stored: u32, computed: u32 },
}

impl fmt::Display for Bad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bad::Marker => write!(f, "no frame marker"),
            Bad::TornHeader(left) => {
                write!(f, "a torn frame: {left} of the {FRAME_HEADER_LEN} bytes of its header")
            }
            Bad::Length(len) => write!(f, "a frame length of {len} bytes (at most {MAX_FRAME_LEN})"),
            Bad::Torn { len, left } => {
                write!(f, "a torn frame: its header says {len} bytes, {left} follow")
            }
            Bad::Checksum { stored, computed } => {
                write!(f, "a frame whose checksum does not match (stored {stored:#010x}, computed {computed:#010x})")
            }
        }
    }
}

/// The payload of the frame at `pos`, if it is intact.
fn intact(bytes: &[u8], pos: usize) -> Result<&[u8], Bad> {
    let Some(head) = bytes.get(pos..pos + FRAME_HEADER_LEN) else {
        return Err(Bad::TornHeader(bytes.len().saturating_sub(pos)));
    };
    if head[..4] != FRAME_MARKER {
        return Err(Bad::Marker);
    }
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let stored = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if len > MAX_FRAME_LEN {
        return Err(Bad::Length(len));
    }
    let start = pos + FRAME_HEADER_LEN;
    let Some(payload) = bytes.get(start..start + len as usize) else {
        return Err(Bad::Torn { len, left: bytes.len() - start });
    };
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(Bad::Checksum { stored, computed });
    }
    Ok(payload)
}

/// Decodes a whole recording. Never panics, whatever the bytes: damage is
/// reported in [`Decoded::damage`] and skipped.
pub fn decode(bytes: &[u8]) -> Result<Decoded, NotARecording> {
    check_header(bytes)?;
    let mut decoded = Decoded::default();
    let mut pos = HEADER_LEN;
    while pos < bytes.len() {
        match intact(bytes, pos) {
            Ok(payload) => {
                match postcard::take_from_bytes::<Record>(payload) {
                    Ok((record, [])) => decoded.records.push((pos as u64, record)),
                    Ok((_, rest)) => decoded.damage.push(Damage {
                        offset: pos as u64,
                        what: format!("a frame with {} bytes left over after its record", rest.len()),
                        skipped: (FRAME_HEADER_LEN + payload.len()) as u64,
                        at_end: false,
                    }),
                    Err(err) => decoded.damage.push(Damage {
                        offset: pos as u64,
                        what: format!(
                            "an intact frame whose record cannot be decoded ({err}; a newer dstrace?)"
                        ),
                        skipped: (FRAME_HEADER_LEN + payload.len()) as u64,
                        at_end: false,
                    }),
                }
                pos += FRAME_HEADER_LEN + payload.len();
            }
            Err(bad) => {
                // Look for the next intact frame after this one.
                let next = (pos + 1..bytes.len())
                    .filter(|&at| bytes[at..].starts_with(&FRAME_MARKER))
                    .find(|&at| intact(bytes, at).is_ok());
                let end = next.unwrap_or(bytes.len());
                decoded.damage.push(Damage {
                    offset: pos as u64,
                    what: bad.to_string(),
                    skipped: (end - pos) as u64,
                    at_end: next.is_none(),
                });
                pos = end;
            }
        }
    }
    Ok(decoded)
}

/// A recording read and resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recording {
    /// Its sessions.
    pub sessions: Vec<Session>,
    /// Its intervals, in file order.
    pub intervals: Vec<IntervalData>,
    /// What was damaged.
    pub damage: Vec<Damage>,
}

/// Reads a recording's bytes: decodes the frames and resolves their strings.
pub fn read(bytes: &[u8]) -> Result<Recording, NotARecording> {
    let decoded = decode(bytes)?;
    let mut recording = Recording { damage: decoded.damage, ..Recording::default() };
    let mut table = Table::default();
    for (_, record) in decoded.records {
        match record {
            Record::Session(session) => {
                table = Table::default();
                recording.sessions.push(session);
            }
            Record::Interval(interval) => recording.intervals.push(table.interval(&interval)),
        }
    }
    Ok(recording)
}

/// Where a recording goes, and how big its files may grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOptions {
    /// The file.
    pub path: PathBuf,
    /// Bytes a file may hold before it is rotated.
    pub max_size: u64,
    /// Rotated files kept (`FILE.1` ... `FILE.N`); 0: when the file is full,
    /// recording stops.
    pub rotate: u32,
}

/// Writes a recording: frames appended, files rotated at their size cap.
pub struct Writer {
    options: FileOptions,
    session: Session,
    file: File,
    size: u64,
    interner: Interner,
    /// A write failed: the next frame must start a new session.
    needs_session: bool,
    /// The file's size when its last session began.
    session_end: u64,
    full: bool,
    /// Bytes written, all files together.
    pub written: u64,
}

impl Writer {
    /// Opens (or creates) the file and starts a session in it.
    pub fn open(options: FileOptions, session: Session) -> Result<Writer> {
        let (file, size) = open_recording(&options.path)?;
        let mut writer = Writer {
            options,
            session,
            file,
            size,
            interner: Interner::default(),
            needs_session: false,
            session_end: 0,
            full: false,
            written: 0,
        };
        writer.start_session()?;
        Ok(writer)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.options.path
    }

    /// Whether the file is full and recording has stopped (`rotate` 0).
    pub fn is_full(&self) -> bool {
        self.full
    }

    fn start_session(&mut self) -> Result<()> {
        self.interner = Interner::default();
        self.needs_session = false;
        let frame = frame(&Record::Session(self.session.clone()))?;
        self.append(&frame)?;
        self.session_end = self.size;
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let result = self.file.write_all(bytes);
        if let Err(err) = result {
            // The frame may be half written: the next one starts a new session,
            // so that nothing refers to what the reader may not have.
            self.needs_session = true;
            return Err(err).with_context(|| format!("cannot write to {}", self.options.path.display()));
        }
        self.size += bytes.len() as u64;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes one interval, rotating first if the file would grow past its cap.
    pub fn write_interval(&mut self, data: &IntervalData) -> Result<()> {
        if self.full {
            return Ok(());
        }
        if self.needs_session {
            self.start_session()?;
        }
        let mut bytes = frame(&Record::Interval(self.interner.interval(data)))?;
        // A file holding no interval yet takes one whatever its size: rotating it
        // would only make another such file.
        if self.size + bytes.len() as u64 > self.options.max_size && self.size > self.session_end {
            if self.options.rotate == 0 {
                self.full = true;
                eprintln!(
                    "dstrace: warning: {} reached its size cap of {} bytes: recording stops \
                     (use --rotate N to keep the last N files instead)",
                    self.options.path.display(),
                    self.options.max_size
                );
                return Ok(());
            }
            self.rotate()?;
            self.start_session()?;
            bytes = frame(&Record::Interval(self.interner.interval(data)))?;
        }
        self.append(&bytes)
    }

    /// `FILE.N-1` to `FILE.N`, ..., `FILE` to `FILE.1`; then a new `FILE`.
    fn rotate(&mut self) -> Result<()> {
        let path = &self.options.path;
        let numbered = |n: u32| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        for n in (1..=self.options.rotate).rev() {
            let from = if n == 1 { path.clone() } else { numbered(n - 1) };
            let to = numbered(n);
            if !exists(&from) {
                continue;
            }
            if exists(&to) {
                is_recording_file(&to).with_context(|| {
                    format!("cannot rotate {}: {} is in the way", path.display(), to.display())
                })?;
            }
            std::fs::rename(&from, &to)
                .with_context(|| format!("cannot rotate {} to {}", from.display(), to.display()))?;
        }
        let (file, size) = open_recording(path)?;
        self.file = file;
        self.size = size;
        Ok(())
    }
}

/// Whether a path exists, without following a final symbolic link.
fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Checks that `path` is a regular file of this user that starts like a recording.
fn is_recording_file(path: &Path) -> Result<()> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| open_error(path, err))?;
    check_existing(path, &file).map(|_| ())
}

fn open_error(path: &Path, err: io::Error) -> anyhow::Error {
    if err.raw_os_error() == Some(libc::ELOOP) {
        anyhow::anyhow!(
            "{} is a symbolic link: recordings are never written through one (it could point \
             anywhere); give the real path",
            path.display()
        )
    } else {
        anyhow::anyhow!("cannot open {}: {err}", path.display())
    }
}

/// Checks an open file that may hold a recording: a regular file owned by us,
/// empty or starting with a recording's header. Returns its size.
fn check_existing(path: &Path, file: &File) -> Result<u64> {
    let meta = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.file_type().is_file() {
        bail!("{} is not a regular file: give the path of a recording file", path.display());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        bail!(
            "{} belongs to uid {}, not to this user ({euid}): recordings are only appended to by their \
             owner; choose another path",
            path.display(),
            meta.uid()
        );
    }
    if meta.len() > 0 {
        let mut head = [0u8; HEADER_LEN];
        let read = file.read_at(&mut head, 0).with_context(|| format!("cannot read {}", path.display()))?;
        check_header(&head[..read]).map_err(|err| {
            anyhow::anyhow!(
                "{} exists and is {err}: dstrace never overwrites it; choose another path or remove it",
                path.display()
            )
        })?;
    }
    Ok(meta.len())
}

/// Takes the file's write lock (`flock`, held while the file is open): two
/// dstrace processes appending to one file would interleave their frames.
fn lock_for_writing(path: &Path, file: &File) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor this `File` owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        bail!(
            "{} is being written by another dstrace (record or run --output): give each its own file",
            path.display()
        );
    }
    Err(err).with_context(|| format!("cannot lock {}", path.display()))
}

/// Opens a recording for appending, creating it (mode 0600) if missing, never
/// through a symbolic link; writes the header of a new file.
fn open_recording(path: &Path) -> Result<(File, u64)> {
    let mut file = File::options()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| open_error(path, err))?;
    let mut size = check_existing(path, &file)?;
    lock_for_writing(path, &file)?;
    let mode = file.metadata().map(|meta| meta.permissions().mode()).unwrap_or(0);
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private (mode 0600)", path.display()))?;
    }
    if size == 0 {
        file.write_all(&header()).with_context(|| format!("cannot write to {}", path.display()))?;
        size = HEADER_LEN as u64;
    }
    Ok((file, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_interval(seconds: u64) -> IntervalData {
        let stack: Stack =
            ["__schedule", "schedule", "d_alloc_parallel", "path_openat"].map(String::from).into();
        let mut totals = Totals::default();
        totals.record(2_000_000_000);
        totals.record(3_000);
        let mount =
            crate::mounts::parse("92 22 0:55 / /tmp/fuse rw - fuse.dstrace-test dstrace-test rw\n").pop();
        let wait = Wait {
            start: Some(from_unix_ns(seconds * 1_000_000_000)),
            end: Some(from_unix_ns(seconds * 1_000_000_000 + 2_000_000_000)),
            duration_ns: 2_000_000_000,
            tid: 11,
            pid: 10,
            comm: "st;at \n\u{fffd}".into(),
            cgroup_id: 5,
            state: TaskState::Killable,
            blocked_in: Some("d_alloc_parallel".into()),
            stack: stack.clone(),
            user_stack: Stack::from([]),
            waker: Some(WakerInfo {
                tid: 9,
                pid: 9,
                comm: "fuse".into(),
                interrupt: false,
                stack: ["try_to_wake_up"].map(String::from).into(),
            }),
            on: Attribution {
                syscall: crate::syscalls::TABLE.first().map(|s| s.name),
                mount: mount.map(|m| Mount { id: 0, parent_id: 0, super_options: String::new(), ..m }),
                file: Some(FileRef { path: Some("/tmp/fuse/missing".into()), inode: None }),
                file_locks: Vec::new(),
            },
            lock: Some(LockInfo {
                kind: "dentry-lookup",
                addr: 0xffff_8880_0000_1000,
                inode: None,
                holder: Some(Holder {
                    tid: 8,
                    pid: 8,
                    comm: "stat".into(),
                    reader_hint: false,
                    state: Some('S'),
                    function: Some("request_wait_answer".into()),
                }),
            }),
            chain: Vec::new(),
            source: Source::Traced,
        };
        IntervalData {
            start: from_unix_ns(seconds * 1_000_000_000),
            end: from_unix_ns((seconds + 10) * 1_000_000_000),
            rows: vec![
                RowData {
                    pid: 10,
                    comm: "st;at \n\u{fffd}".into(),
                    stack: stack.clone(),
                    mount: Some("/tmp/fuse".into()),
                    lock: Some("lookup of a name in dentry 0xffff888000001000".into()),
                    totals,
                },
                RowData {
                    pid: 1,
                    comm: "jbd2/sda1-8".into(),
                    stack: Stack::from([]),
                    mount: None,
                    lock: None,
                    totals,
                },
            ],
            waits: vec![wait],
            counters: vec![("waits_ended".into(), 42), ("ring_buffer_full".into(), 0)],
        }
    }

    fn file_of(intervals: &[IntervalData]) -> Vec<u8> {
        let mut bytes = header().to_vec();
        let mut interner = Interner::default();
        bytes.extend(
            frame(&Record::Session(Session { dstrace: "test".into(), ..Session::default() })).unwrap(),
        );
        for interval in intervals {
            bytes.extend(frame(&Record::Interval(interner.interval(interval))).unwrap());
        }
        bytes
    }

    #[test]
    fn intervals_round_trip() {
        let intervals = [sample_interval(100), sample_interval(110)];
        let bytes = file_of(&intervals);
        let recording = read(&bytes).unwrap();
        assert_eq!(recording.damage, []);
        assert_eq!(recording.sessions.len(), 1);
        assert_eq!(recording.intervals, intervals);
    }

    #[test]
    fn symbols_are_written_once_per_session() {
        let one = file_of(&[sample_interval(100)]).len();
        let two = file_of(&[sample_interval(100), sample_interval(110)]).len();
        assert!(two - one < one / 2, "a second interval with the same stacks costs {} bytes", two - one);
    }

    #[test]
    fn headers_are_checked() {
        assert_eq!(read(b"DSTR"), Err(NotARecording::Short(4)));
        assert_eq!(read(&[0u8; 32]), Err(NotARecording::Magic));
        let mut newer = header();
        newer[8] = 99;
        assert_eq!(read(&newer), Err(NotARecording::Version(99)));
        assert!(NotARecording::Version(99).to_string().contains("newer dstrace"));
        assert_eq!(read(&header()).unwrap(), Recording::default());
    }

    #[test]
    fn a_torn_tail_is_reported_and_skipped() {
        let whole = file_of(&[sample_interval(100), sample_interval(110)]);
        let first_two = read(&whole).unwrap().intervals.len();
        assert_eq!(first_two, 2);
        let last = decode(&whole).unwrap().records.last().unwrap().0 as usize;
        // Cut inside the last frame's header, just after it, and one byte short.
        for cut in [last + 5, last + FRAME_HEADER_LEN + 1, whole.len() - 1] {
            let recording = read(&whole[..cut]).unwrap();
            assert_eq!(recording.intervals.len(), 1, "cut at {cut}");
            assert_eq!(recording.damage.len(), 1);
            let damage = &recording.damage[0];
            assert!(damage.at_end, "{damage}");
            assert!(damage.to_string().contains("torn frame"), "{damage}");
            assert_eq!(damage.offset + damage.skipped, cut as u64);
        }
    }

    #[test]
    fn a_corrupted_frame_costs_that_frame_only() {
        let whole = file_of(&[sample_interval(100), sample_interval(110), sample_interval(120)]);
        let frames = decode(&whole).unwrap().records;
        let second = frames[2].0 as usize; // session, first, second
        let mut bad = whole.clone();
        bad[second + FRAME_HEADER_LEN + 3] ^= 0x40;
        let recording = read(&bad).unwrap();
        assert_eq!(recording.intervals.len(), 2, "the first and third survive");
        assert_eq!(recording.damage.len(), 1);
        let damage = &recording.damage[0];
        assert_eq!(damage.offset, second as u64);
        assert!(!damage.at_end);
        assert!(damage.to_string().contains("checksum does not match"), "{damage}");
        assert_eq!(recording.intervals[1].end, sample_interval(120).end);
    }

    #[test]
    fn appended_sessions_start_their_own_tables() {
        let mut bytes = file_of(&[sample_interval(100)]);
        // A crash left half a frame; a new dstrace appends its own session.
        bytes.extend_from_slice(&FRAME_MARKER);
        bytes.extend_from_slice(&[0xff, 0, 0]);
        bytes.extend_from_slice(&file_of(&[sample_interval(200)])[HEADER_LEN..]);
        let recording = read(&bytes).unwrap();
        assert_eq!(recording.sessions.len(), 2);
        assert_eq!(recording.intervals, [sample_interval(100), sample_interval(200)]);
        assert_eq!(recording.damage.len(), 1);
    }

    /// Bounded mutation fuzzing of the decoder: it must never panic nor loop, and
    /// what it reads from a damaged file must be a prefix-and-suffix of the intact
    /// intervals (never invented data). cargo-fuzz needs a nightly toolchain with
    /// sanitizers, which CI machines may lack; this runs everywhere, in well
    /// under a second, from a fixed seed.
    #[test]
    fn decoder_survives_random_damage() {
        let intervals: Vec<IntervalData> = (0..4).map(|i| sample_interval(100 + 10 * i)).collect();
        let whole = file_of(&intervals);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..3000 {
            let mut bytes = whole.clone();
            let edits = 1 + next() % 4;
            for _ in 0..edits {
                let at = (next() as usize) % bytes.len();
                match next() % 4 {
                    0 => bytes[at] ^= 1 << (next() % 8),
                    1 => bytes[at] = next() as u8,
                    2 => bytes.truncate(at.max(HEADER_LEN)),
                    _ => {
                        let len = (next() % 16) as usize;
                        bytes.splice(at..at, (0..len).map(|_| next() as u8));
                    }
                }
            }
            let Ok(recording) = read(&bytes) else { continue };
            for interval in &recording.intervals {
                // A frame that passed its checksum was written as it is: with
                // overwhelming likelihood one of ours (strings may be lost).
                assert!(
                    intervals.iter().any(|i| i.end == interval.end),
                    "round {round}: an interval out of nowhere"
                );
            }
        }
    }

    /// The same, inside the checksum: payloads mutated and checksummed again, so
    /// that the record decoder and the string tables see arbitrary input (ids out
    /// of range, huge lengths, bad variants). No panic, no unbounded allocation.
    #[test]
    fn record_decoder_survives_random_payloads() {
        let intervals: Vec<IntervalData> = (0..3).map(|i| sample_interval(100 + 10 * i)).collect();
        let whole = file_of(&intervals);
        let frames: Vec<usize> = decode(&whole).unwrap().records.iter().map(|(at, _)| *at as usize).collect();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut undecodable = 0;
        for _ in 0..3000 {
            let mut bytes = whole.clone();
            let at = frames[(next() as usize) % frames.len()];
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            let payload = at + FRAME_HEADER_LEN..at + FRAME_HEADER_LEN + len;
            for _ in 0..1 + next() % 4 {
                let i = payload.start + (next() as usize) % len;
                bytes[i] = match next() % 3 {
                    0 => bytes[i] ^ (1 << (next() % 8)),
                    1 => 0xff,
                    _ => next() as u8,
                };
            }
            let crc = crc32fast::hash(&bytes[payload]);
            bytes[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
            let recording = read(&bytes).unwrap();
            undecodable += recording.damage.len();
            assert!(
                recording.damage.iter().all(|d| !d.at_end && d.what.contains("record")),
                "{:?}",
                recording.damage
            );
        }
        assert!(undecodable > 0, "no mutation made a record undecodable: the test tests nothing");
    }

    #[test]
    fn files_are_private_never_followed_and_never_clobbered() {
        let dir = std::env::temp_dir().join(format!("dstrace-recording-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rec");
        let options = FileOptions { path: path.clone(), max_size: 1 << 20, rotate: 2 };
        let mut writer = Writer::open(options.clone(), Session::default()).unwrap();
        writer.write_interval(&sample_interval(100)).unwrap();
        drop(writer);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // Appending a second session keeps the first; a second writer at the same
        // time is refused, in one line that says why.
        let mut writer = Writer::open(options.clone(), Session::default()).unwrap();
        let err = Writer::open(options.clone(), Session::default()).err().unwrap();
        assert!(err.to_string().contains("being written by another dstrace"), "{err}");
        writer.write_interval(&sample_interval(200)).unwrap();
        drop(writer);
        let recording = read(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(recording.intervals.len(), 2);
        assert_eq!(recording.sessions.len(), 2);

        // Not a recording: refused, untouched.
        let other = dir.join("notes.txt");
        std::fs::write(&other, b"precious").unwrap();
        let err = Writer::open(FileOptions { path: other.clone(), ..options.clone() }, Session::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a dstrace recording"), "{err}");
        assert_eq!(std::fs::read(&other).unwrap(), b"precious");

        // A symbolic link: refused, its target untouched.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&other, &link).unwrap();
        let err =
            Writer::open(FileOptions { path: link, ..options.clone() }, Session::default()).err().unwrap();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&other).unwrap(), b"precious");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_rotate_at_their_cap() {
        let dir = std::env::temp_dir().join(format!("dstrace-rotation-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rec");
        let one = file_of(&[sample_interval(100)]).len() as u64;
        let options = FileOptions { path: path.clone(), max_size: one + 100, rotate: 2 };
        let mut writer = Writer::open(options, Session::default()).unwrap();
        for i in 0..5 {
            writer.write_interval(&sample_interval(100 + 10 * i)).unwrap();
        }
        drop(writer);
        let read_file = |name: &str| read(&std::fs::read(dir.join(name)).unwrap()).unwrap();
        // Every file is a whole recording of its own: a session, then intervals.
        assert_eq!(read_file("rec").intervals, [sample_interval(140)]);
        assert_eq!(read_file("rec.1").intervals, [sample_interval(130)]);
        assert_eq!(read_file("rec.2").intervals, [sample_interval(120)]);
        assert!(!dir.join("rec.3").exists());
        for name in ["rec", "rec.1", "rec.2"] {
            assert!(std::fs::metadata(dir.join(name)).unwrap().len() <= one + 100);
        }

        // Full, without rotation: recording stops, nothing is lost or truncated.
        let options = FileOptions { path: dir.join("capped"), max_size: one + 100, rotate: 0 };
        let mut writer = Writer::open(options, Session::default()).unwrap();
        for i in 0..3 {
            writer.write_interval(&sample_interval(100 + 10 * i)).unwrap();
        }
        assert!(writer.is_full());
        drop(writer);
        assert_eq!(read_file("capped").intervals, [sample_interval(100)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
