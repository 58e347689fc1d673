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
//! The layers: [`schema`] is what a record holds; this file reads and resolves a
//! whole file; [`intern`] numbers strings and stacks per session;
//! [`frames`] is bytes only (header, framing, checksums, damage); [`file`] is the
//! safe handling of the files on disk (0600, no symbolic links, `flock`,
//! rotation); [`recorder`] feeds a recording from a trace loop.
//!
//! # Layout (format version [`VERSION`]; integers little endian)
//!
//! ```text
//! file    = header frame*
//! header  = "DSTRREC\0" (8 bytes) | version: u16 | file identity (6 random bytes; zero before format 3)
//! frame   = marker "\xd5FRS" (4 bytes) | len: u32 | crc32(identity ++ payload): u32 | payload (len bytes)
//! payload = stamp, then one Record, encoded with postcard 1.x (its wire format is
//!           specified and stable: variable-length integers, strings as length + UTF-8)
//! stamp   = session: u32 (random, drawn when it starts) | seq: u32 (its frames numbered from 0)
//! ```
//!
//! Formats 1 and 2 had unstamped frames: marker `"\xd5FRM"`, `crc32(payload)`, the
//! record alone. The reader reads both kinds, in any file (a dstrace of format 3
//! appends stamped frames to an older file and leaves its header alone).
//!
//! A [`Record`] is a [`Record::Session`] (who recorded, when, with what settings),
//! a [`Record::IntervalAt`] (format 2; [`Record::Interval`] in format 1): the
//! in-kernel aggregation drained over one interval (one [`Row`] per process,
//! command, kernel stack and cause, with count, total, maximum and log2
//! histogram), the individual waits above the threshold of that interval, and the
//! kernel side's counters; a [`Record::InD`] (format 2), the frame after an
//! interval's: the tasks in D at its end, each described once
//! ([`schema::InDRecord`]: all `run --json` says of it) and then a number and an
//! age per interval while it stays as it was; or a [`Record::Gap`] (format 3):
//! nothing could be written for a while (a full disk), what the next interval
//! holds instead (every interval that ended meanwhile, as one) and what was lost.
//! Strings (symbols, commands, mount
//! points, lock names), stacks and descriptions are interned per session: a record
//! lists those it uses for the first time, and refers to all of them by number, so
//! a symbol is written once per file. A record of format 2 says which ids its
//! definitions start at ([`schema::First`]), and the writer defines everything
//! again under new ids every [`intern::DEFINE_AGAIN`] records: an id whose
//! definition was in a damaged frame reads as `<lost string N>` until then, and
//! no id ever names something else. Every file starts with a session, and so
//! does each run of dstrace that appends to a file, so each file (and each part
//! of one) is read on its own.
//!
//! Versions: the header holds the format of the dstrace that created the file.
//! Format 2 only added record kinds, so format 1 files read as they are; format 3
//! stamped the frames (a new marker, so both kinds read in one file) and added
//! [`Record::Gap`]. A reader of format N refuses a file of a later format, and
//! reports a frame it does not know (in an older file a later dstrace appended
//! to) as damage.
//!
//! The reader checks the header's magic and version, then each frame's marker,
//! length ([`MAX_FRAME_LEN`] at most) and checksum. A frame that fails is reported
//! as [`Damage`] (its offset and what was wrong) and skipped: the reader looks for
//! the next intact frame after it, so one bad frame costs one interval. Whole
//! frames moved about, every checksum intact, cannot be taken for one another
//! ([`frames`]): one of another file fails its checksum (the file's identity is
//! in it), a copy is a number seen already (skipped), frames out of order are
//! read in their order, numbers missing are frames lost; each is reported, and a
//! session's names are its own even when its session record was lost.
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

pub mod file;
pub mod frames;
pub mod intern;
pub mod recorder;
pub mod schema;

pub use file::{FileOptions, Writer};
pub use frames::{
    check_header, decode, file_id, frame, header, stamped_frame, Damage, Decoded, FileId, NotARecording,
    Stamp, FRAME_HEADER_LEN, FRAME_MARKER, HEADER_LEN, MAGIC, MAX_FRAME_LEN, STAMPED_MARKER, VERSION,
};
pub use intern::{Interner, Table};
pub use schema::{
    from_unix_ns, unix_ns, First, Gap, HolderRecord, Interval, IntervalData, LockRecord, MountRecord, Record,
    Row, RowData, Session, TasksInD, WaitRecord, WakerRecord,
};

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
    let mut session = None;
    for ((offset, record), stamped) in decoded.records.into_iter().zip(decoded.sessions) {
        // A session's names are its own: a new table at its start, even when
        // its session record was lost.
        if stamped != session {
            table = Table::default();
            session = stamped;
        }
        match record {
            Record::Session(session) => {
                table = Table::default();
                recording.sessions.push(session);
            }
            Record::Interval(interval) => recording.intervals.push(table.interval(None, &interval)),
            Record::IntervalAt(first, interval) => {
                recording.intervals.push(table.interval(Some(first), &interval));
            }
            Record::Gap(gap) => {
                recording.damage.push(Damage { offset, what: gap.to_string(), skipped: 0, at_end: false });
            }
            Record::InD(in_d) => {
                let (waits, lost, too_big) = table.tasks_in_d(&in_d);
                if lost > 0 {
                    recording.damage.push(Damage {
                        offset,
                        what: format!("{lost} tasks in D whose description was in a damaged frame"),
                        skipped: 0,
                        at_end: false,
                    });
                }
                if too_big > 0 {
                    recording.damage.push(Damage {
                        offset,
                        what: format!(
                            "{too_big} tasks in D left out: their descriptions would make more text than a \
                             recording of dstrace holds (a damaged or forged frame)"
                        ),
                        skipped: 0,
                        at_end: false,
                    });
                }
                let end = from_unix_ns(in_d.end_ns);
                match recording.intervals.last_mut().filter(|last| last.end == end) {
                    Some(last) => last.in_d = waits,
                    // Its interval's frame was damaged: the tasks in D stand alone.
                    None => recording.intervals.push(IntervalData {
                        start: end,
                        end,
                        rows: Vec::new(),
                        waits: Vec::new(),
                        counters: Vec::new(),
                        in_d: waits,
                    }),
                }
            }
        }
    }
    Ok(recording)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use std::{collections::HashMap, time::SystemTime};

    use super::*;
    use crate::{
        model::{
            aggregate::Totals,
            link::Link,
            wait::{Holder, LockInfo, Source, TaskState, Wait, WakerInfo},
        },
        resolve::{
            attribution::{Attribution, FileRef},
            mounts::Mount,
            symbols::Stack,
        },
    };

    pub(crate) fn sample_interval(seconds: u64) -> IntervalData {
        let stack: Stack =
            ["__schedule", "schedule", "d_alloc_parallel", "path_openat"].map(String::from).into();
        let mut totals = Totals::default();
        totals.record(2_000_000_000);
        totals.record(3_000);
        let mount =
            crate::resolve::mounts::parse("92 22 0:55 / /tmp/fuse rw - fuse.dstrace-test dstrace-test rw\n")
                .pop();
        let wait = Wait {
            start: Some(from_unix_ns(seconds * 1_000_000_000)),
            end: Some(from_unix_ns(seconds * 1_000_000_000 + 2_000_000_000)),
            duration_ns: 2_000_000_000,
            tid: 11,
            pid: 10,
            comm: "st;at \n\u{fffd}".into(),
            cgroup_id: 5,
            cgroup: None,
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
                syscall: crate::kernel::syscalls::TABLE.first().map(|s| s.name),
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
                    looked: true,
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
            in_d: Vec::new(),
        }
    }

    /// An interval with `n` tasks in D at its end, the sample wait going on since
    /// second 90.25 with a chain, times that a recording keeps exactly (whole
    /// milliseconds, ages in whole seconds).
    pub(crate) fn interval_with_tasks_in_d(seconds: u64, n: u32) -> IntervalData {
        let mut interval = sample_interval(seconds);
        let end_ns = unix_ns(interval.end);
        let since = |s: u64| Some(end_ns - s * 1_000_000_000);
        let mut wait = interval.waits[0].clone();
        wait.end = None;
        wait.duration_ns = end_ns - 90_250_000_000;
        wait.start = Some(from_unix_ns(end_ns - wait.duration_ns));
        wait.source = Source::Iterator;
        wait.cgroup = Some("/system.slice/nova-compute.service".into());
        if let Some(mount) = wait.on.mount.as_mut() {
            (mount.id, mount.namespace) = (92, 4_026_531_841);
        }
        let dev = wait.on.mount.as_ref().map(|mount| mount.dev).unwrap_or_default();
        wait.on.file_locks = vec![crate::resolve::file_locks::FileLock {
            id: 0,
            kind: "POSIX".into(),
            access: "WRITE".into(),
            pid: Some(8),
            dev,
            ino: 0,
            range: (0, None),
            waiting: false,
        }];
        wait.chain = vec![
            Link::Task {
                tid: 11,
                pid: 10,
                comm: "stat".into(),
                state: Some('D'),
                function: Some("f".into()),
            },
            Link::Lock { name: "lookup of a name".into() },
            Link::FileLock { kind: "POSIX".into() },
            Link::Mount { mountpoint: "/tmp/fuse".into(), fstype: "fuse".into(), source: "x".into() },
            Link::FuseRequests {
                in_flight: 3,
                oldest_ns: since(91),
                oldest_opcode: "LOOKUP".into(),
                oldest_tid: 11,
                oldest_comm: "stat".into(),
                read_by_daemon: Some(1),
            },
            Link::FuseDaemon { pid: 9, comm: "fused".into(), state: Some('T'), waiting: Some(3) },
            Link::Rpc {
                program: "nfs".into(),
                version: 4,
                procedure: "GETATTR".into(),
                xid: Some(7),
                age_ns: since(80),
                transmits: 3,
                timeouts: 1,
                not_responding_ns: None,
                others: 0,
            },
            Link::NfsServer { address: "10.0.0.1".into(), nfs_version: Some("4.2".into()) },
        ];
        interval.in_d = (0..n).map(|i| Wait { tid: 100 + i, pid: 100 + i, ..wait.clone() }).collect();
        interval
    }

    /// The identity of the files the tests make (a session appended to one
    /// keeps it, as a dstrace appending to a file does).
    const TEST_FILE: FileId = *b"tests!";

    /// A file of one session (stamped frames, format 3) with these intervals.
    fn file_of(intervals: &[IntervalData]) -> Vec<u8> {
        file_of_id(intervals, TEST_FILE, Some(u32::from_le_bytes(frames::random())))
    }

    /// A file of the identity `id`, one session with these intervals: stamped
    /// frames of that session, or unstamped ones (format 2) for `None`.
    fn file_of_id(intervals: &[IntervalData], id: FileId, session: Option<u32>) -> Vec<u8> {
        let mut bytes = header().to_vec();
        bytes[10..].copy_from_slice(&id);
        let mut interner = Interner::default();
        let mut seq = 0;
        let mut frame_of = |record: Record| match session {
            Some(session) => {
                seq += 1;
                stamped_frame(&id, Stamp { session, seq: seq - 1 }, &record).unwrap()
            }
            None => frame(&record).unwrap(),
        };
        bytes.extend(frame_of(Record::Session(Session { dstrace: "test".into(), ..Session::default() })));
        for interval in intervals {
            let (first, encoded) = interner.interval(interval);
            bytes.extend(frame_of(Record::IntervalAt(first, encoded)));
            if !interval.in_d.is_empty() {
                let in_d = interner.tasks_in_d(interval.end, &interval.in_d);
                bytes.extend(frame_of(Record::InD(in_d)));
            }
        }
        bytes
    }

    /// Whole frames duplicated, swapped, deleted or taken from another
    /// recording (every checksum intact): each is reported, and no name is ever
    /// another's (a name is the one it was, or reads as lost). Seeded, bounded.
    #[test]
    fn whole_frames_copied_swapped_lost_or_foreign_are_reported_and_name_nothing_wrongly() {
        // Each interval its own command; stacks, mounts and locks shared, so that
        // later frames refer to what earlier ones defined. The other recording
        // has other names under the same ids.
        let named = |seconds: u64, prefix: &str| {
            let mut interval = interval_with_tasks_in_d(seconds, 1 + (seconds % 3) as u32);
            interval.rows[1].comm = format!("{prefix}{seconds}");
            if prefix != "c" {
                for row in &mut interval.rows {
                    row.stack = row.stack.iter().map(|f| format!("{prefix}{f}")).collect();
                    row.mount = row.mount.as_ref().map(|m| format!("{prefix}{m}"));
                }
                for wait in interval.waits.iter_mut().chain(&mut interval.in_d) {
                    wait.comm = format!("{prefix}{}", wait.comm);
                    wait.stack = wait.stack.iter().map(|f| format!("{prefix}{f}")).collect();
                }
            }
            interval
        };
        let ours: Vec<IntervalData> = (0..70).map(|i| named(100 + 10 * i, "c")).collect();
        let theirs: Vec<IntervalData> = (0..70).map(|i| named(100 + 10 * i, "other-")).collect();
        let whole = file_of(&ours);
        let other = file_of_id(&theirs, *b"other!", Some(7));
        let spans = |bytes: &[u8]| -> Vec<std::ops::Range<usize>> {
            let records = decode(bytes).unwrap().records;
            let starts: Vec<usize> = records.iter().map(|(at, _)| *at as usize).collect();
            starts
                .iter()
                .enumerate()
                .map(|(i, &at)| at..starts.get(i + 1).copied().unwrap_or(bytes.len()))
                .collect()
        };
        let (our_frames, their_frames) = (spans(&whole), spans(&other));
        let expected: HashMap<SystemTime, &IntervalData> = ours.iter().map(|i| (i.end, i)).collect();
        let lost = |name: &str| name.starts_with("<lost ");
        let mut seed = 0x5eed_f4a3_e5c0_0001u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut kinds = [0usize; 4];
        for round in 0..2000 {
            let mut frames: Vec<Vec<u8>> =
                our_frames.iter().map(|span| whole[span.clone()].to_vec()).collect();
            let kind = next(4);
            kinds[kind] += 1;
            let n = frames.len();
            let what = match kind {
                0 => {
                    let (i, j) = (next(n), next(n + 1));
                    frames.insert(j, frames[i].clone());
                    format!("frame {i} copied to {j}")
                }
                1 => {
                    let i = next(n);
                    let j = (i + 1 + next(n - 1)) % n;
                    frames.swap(i, j);
                    format!("frames {i} and {j} swapped")
                }
                2 => {
                    // Not the last: losing the last frame is a recording that ended
                    // earlier (a crash), which nothing can tell.
                    let i = next(n - 1);
                    frames.remove(i);
                    format!("frame {i} deleted")
                }
                _ => {
                    let (i, j) = (next(their_frames.len()), next(n + 1));
                    frames.insert(j, other[their_frames[i].clone()].to_vec());
                    format!("their frame {i} put at {j}")
                }
            };
            let mut bytes = whole[..HEADER_LEN].to_vec();
            bytes.extend(frames.concat());
            let recording = read(&bytes).unwrap();
            assert!(!recording.damage.is_empty(), "round {round}: {what}: not reported");
            for interval in &recording.intervals {
                let Some(original) = expected.get(&interval.end) else {
                    panic!("round {round}: {what}: an interval ending at {:?} out of nowhere", interval.end)
                };
                for row in interval.rows.iter().filter(|row| !lost(&row.comm)) {
                    let same = original.rows.iter().find(|o| o.comm == row.comm && o.pid == row.pid);
                    let Some(same) = same else { panic!("round {round}: {what}: a row of {}", row.comm) };
                    assert!(
                        row.stack.iter().any(|f| lost(f)) || row.stack == same.stack,
                        "round {round}: {what}: {:?} for {:?}",
                        row.stack,
                        same.stack
                    );
                    assert!(
                        row.mount == same.mount || row.mount.as_deref().is_some_and(lost),
                        "round {round}"
                    );
                    assert!(row.lock == same.lock || row.lock.as_deref().is_some_and(lost), "round {round}");
                }
                let pairs = interval
                    .waits
                    .iter()
                    .map(|w| (w, &original.waits))
                    .chain(interval.in_d.iter().map(|w| (w, &original.in_d)));
                for (wait, list) in pairs {
                    let Some(same) = list.iter().find(|o| o.tid == wait.tid) else {
                        panic!("round {round}: {what}: a wait of tid {}", wait.tid)
                    };
                    let path = |w: &Wait| w.on.file.as_ref().and_then(|f| f.path.clone()).unwrap_or_default();
                    let mount = |w: &Wait| {
                        w.on.mount
                            .as_ref()
                            .map(|m| m.mount_point.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    };
                    for (got, want) in [
                        (wait.comm.clone(), same.comm.clone()),
                        (path(wait), path(same)),
                        (mount(wait), mount(same)),
                        (
                            wait.blocked_in.clone().unwrap_or_default(),
                            same.blocked_in.clone().unwrap_or_default(),
                        ),
                    ] {
                        assert!(got == want || lost(&got), "round {round}: {what}: {got:?} for {want:?}");
                    }
                    assert!(
                        wait.stack.iter().any(|f| lost(f)) || wait.stack == same.stack,
                        "round {round}: {what}"
                    );
                }
            }
        }
        assert!(kinds.iter().all(|&k| k > 300), "{kinds:?}");
    }

    #[test]
    fn tasks_in_d_round_trip_with_their_chains() {
        let intervals = [interval_with_tasks_in_d(100, 2), interval_with_tasks_in_d(110, 2)];
        let recording = read(&file_of(&intervals)).unwrap();
        assert_eq!(recording.damage, []);
        assert_eq!(recording.intervals, intervals);
    }

    /// A task still in D as it was costs a few bytes per interval, not its record.
    #[test]
    fn a_task_still_in_d_costs_a_few_bytes_per_interval() {
        let first = file_of(&[interval_with_tasks_in_d(100, 100)]).len();
        let two = file_of(&[interval_with_tasks_in_d(100, 100), interval_with_tasks_in_d(110, 100)]).len();
        let without = file_of(&[sample_interval(100), sample_interval(110)]).len()
            - file_of(&[sample_interval(100)]).len();
        let per_task = (two - first - without) as f64 / 100.0;
        assert!(per_task <= 6.0, "{per_task} bytes per task in D still in D");
        // Its first description costs more: it is the whole record.
        assert!((first - file_of(&[sample_interval(100)]).len()) as f64 / 100.0 > per_task);
    }

    /// The names a damaged frame defined are lost, and the ids after it still
    /// name what they named: a later interval never shows another's name.
    #[test]
    fn a_damaged_frame_shifts_no_name() {
        let named = |seconds: u64, comm: &str| {
            let mut interval = sample_interval(seconds);
            interval.rows[1].comm = comm.into();
            interval
        };
        let intervals = [named(100, "first"), named(110, "second"), named(120, "third")];
        let mut bad = file_of(&intervals);
        let frames = decode(&bad).unwrap().records;
        bad[frames[2].0 as usize + FRAME_HEADER_LEN + 2] ^= 0x10;
        let recording = read(&bad).unwrap();
        let comms: Vec<&str> = recording.intervals.iter().map(|i| i.rows[1].comm.as_str()).collect();
        assert_eq!(comms, ["first", "third"]);
    }

    /// A recording of format 1 (before the tasks in D were kept) is read as it was.
    #[test]
    fn a_recording_of_format_1_is_read() {
        let mut bytes = file_of_id(&[sample_interval(100)], [0; 6], None);
        bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
        let recording = read(&bytes).unwrap();
        assert_eq!(recording.intervals, [sample_interval(100)]);
    }

    /// A recording of format 2 (unstamped frames, no identity) is read as it was,
    /// and this dstrace appends its stamped session to it, header untouched: both
    /// read, with no damage.
    #[test]
    fn a_recording_of_format_2_is_read_and_appended_to() {
        let intervals = [interval_with_tasks_in_d(100, 2), interval_with_tasks_in_d(110, 1)];
        let mut bytes = file_of_id(&intervals, [0; 6], None);
        bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
        let recording = read(&bytes).unwrap();
        assert_eq!((recording.intervals.as_slice(), recording.damage.as_slice()), (&intervals[..], &[][..]));

        let dir = std::env::temp_dir().join(format!("dstrace-format-2-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("old.rec");
        std::fs::write(&path, &bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let options = FileOptions { path: path.clone(), max_size: 1 << 20, rotate: 0 };
        let mut writer = Writer::open(options, Session::default()).unwrap();
        assert!(writer.write_interval(&interval_with_tasks_in_d(200, 2)).unwrap());
        drop(writer);
        let appended = std::fs::read(&path).unwrap();
        assert_eq!(appended[..HEADER_LEN], bytes[..HEADER_LEN], "the header is left alone");
        let recording = read(&appended).unwrap();
        assert_eq!(recording.damage, []);
        assert_eq!(recording.sessions.len(), 2);
        let all: Vec<IntervalData> =
            intervals.iter().cloned().chain([interval_with_tasks_in_d(200, 2)]).collect();
        assert_eq!(recording.intervals, all);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The tasks in D of a damaged interval frame are kept, and a damaged frame of
    /// tasks in D costs its interval's list only.
    #[test]
    fn damage_costs_only_its_interval_of_tasks_in_d() {
        let intervals = [interval_with_tasks_in_d(100, 2), interval_with_tasks_in_d(110, 2)];
        let whole = file_of(&intervals);
        let frames = decode(&whole).unwrap().records;
        // session, interval, in D, interval, in D: damage the second interval.
        assert!(matches!(frames[4].1, Record::InD(_)));
        let mut bad = whole.clone();
        bad[frames[3].0 as usize + FRAME_HEADER_LEN + 2] ^= 0x10;
        let recording = read(&bad).unwrap();
        assert_eq!(recording.intervals.len(), 2);
        assert_eq!(recording.intervals[1].in_d, intervals[1].in_d);
        assert!(recording.intervals[1].rows.is_empty());
        // Damage the first list of tasks in D: the interval keeps its rows; the
        // second list refers to descriptions lost with it (reported as damage).
        let mut bad = whole;
        bad[frames[2].0 as usize + FRAME_HEADER_LEN + 2] ^= 0x10;
        let recording = read(&bad).unwrap();
        assert_eq!(recording.intervals[0].in_d, []);
        assert_eq!(recording.intervals[0].rows, intervals[0].rows);
        assert!(recording.damage.iter().any(|d| d.what.contains("2 tasks in D whose description")));

        // Until they are defined again: lost, never named wrongly.
        let intervals: Vec<IntervalData> =
            (0..40).map(|i| interval_with_tasks_in_d(100 + 10 * i, 2)).collect();
        let mut bad = file_of(&intervals);
        let frames = decode(&bad).unwrap().records;
        bad[frames[2].0 as usize + FRAME_HEADER_LEN + 2] ^= 0x10;
        let recording = read(&bad).unwrap();
        let lists: Vec<usize> = recording.intervals.iter().map(|i| i.in_d.len()).collect();
        // Interval and list: two records each, so the 31st interval defines again.
        let again = intern::DEFINE_AGAIN as usize / 2;
        assert_eq!(lists[..again], vec![0; again]);
        assert_eq!(lists[again..], vec![2; 40 - again]);
        assert_eq!(recording.intervals[35].in_d, intervals[35].in_d);
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
            let crc = frames::stamped_crc(&TEST_FILE, &bytes[payload]);
            bytes[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
            let recording = read(&bytes).unwrap();
            undecodable += recording.damage.len();
            assert!(
                recording.damage.iter().all(|d| !d.at_end
                    && (d.what.contains("record")
                        || d.what.contains("of session")
                        || d.what.contains("in D"))),
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

    /// A file of frame headers each claiming the rest of it (a checksum of the
    /// rest at each), and one where such headers follow intact frames: both are
    /// read in bounded work, the search given up and said. Without the budget a
    /// 64 MiB file of them took hours.
    #[test]
    fn frames_that_claim_the_rest_of_the_file_cost_bounded_work() {
        let claim_rest = |bytes: &mut Vec<u8>, total: usize| {
            let len = (total - bytes.len() - FRAME_HEADER_LEN) as u32;
            bytes.extend_from_slice(&frames::FRAME_MARKER);
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&[0; 4]);
        };
        let total = HEADER_LEN + FRAME_HEADER_LEN * 20_000;
        let mut headers = header().to_vec();
        while headers.len() < total {
            claim_rest(&mut headers, total);
        }
        let read_back = read(&headers).unwrap();
        let gave_up = read_back.damage.iter().any(|d| d.what.contains("no intact frame looked for"));
        assert!(gave_up, "{} damages, none giving up", read_back.damage.len());

        let whole = file_of(&[sample_interval(100)]);
        let frames_part = &whole[HEADER_LEN..];
        // Each claim checksums the rest: about n x the file in all, past the
        // budget (three times the file and a largest frame).
        let n = 2_000;
        let total = HEADER_LEN + n * (frames_part.len() + FRAME_HEADER_LEN) + 64 * 1024;
        let mut mixed = whole[..HEADER_LEN].to_vec();
        for _ in 0..n {
            mixed.extend_from_slice(frames_part);
            claim_rest(&mut mixed, total);
        }
        mixed.resize(total, 0);
        let read_back = read(&mixed).unwrap();
        assert!(!read_back.intervals.is_empty());
        let gave_up = read_back.damage.iter().any(|d| d.what.contains("no intact frame looked for"));
        assert!(gave_up, "{} damages, none giving up", read_back.damage.len());
    }

    /// A description of a task in D with a chain of 10,000 links of a 10 KB
    /// string, named by 200 tasks (20 GB of text from a few KB): those past the
    /// budget are left out and counted, not resolved.
    #[test]
    fn tasks_in_d_that_would_make_gigabytes_of_text_are_left_out() {
        let interval = interval_with_tasks_in_d(100, 1);
        let mut interner = Interner::default();
        let mut in_d = interner.tasks_in_d(interval.end, &interval.in_d);
        let long = in_d.first.string + in_d.strings.len() as u32;
        in_d.strings.push("x".repeat(10_000));
        in_d.described[0].chain.extend(std::iter::repeat_n(schema::LinkRecord::Lock(long), 10_000));
        in_d.tasks = vec![in_d.tasks[0]; 200];
        let (waits, lost, too_big) = intern::Table::default().tasks_in_d(&in_d);
        assert_eq!(lost, 0);
        assert_eq!(waits.len() + too_big, 200);
        assert!(waits.len() <= 1 && too_big >= 199, "{} resolved, {too_big} left out", waits.len());
    }
}
