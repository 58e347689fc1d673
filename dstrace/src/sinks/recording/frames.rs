//! The bytes of a recording: the file header, the frames (marker, length,
//! checksum, payload) and the decoder that finds every intact frame and reports
//! the damaged ones. Nothing here knows what a record means beyond its encoding.
//!
//! Frames of format 3 are stamped: their checksum covers the file's identity
//! (from its header) and each says which session wrote it and its number in that
//! session ([`Stamp`]). So whole frames cannot be taken for one another: one of
//! another file fails its checksum, a copy is a number seen already, frames out of
//! order are put back in order, and a frame missing is a number skipped; each is
//! reported.

use std::{collections::HashMap, fmt};

use serde::{Deserialize, Serialize};

use anyhow::{bail, Context as _, Result};

use crate::sinks::recording::schema::Record;

/// The first eight bytes of every recording.
pub const MAGIC: [u8; 8] = *b"DSTRREC\0";
/// The format version this dstrace writes, and the newest it reads (it reads
/// every older one: see [`crate::sinks::recording`]).
pub const VERSION: u16 = 3;
/// Bytes of the file header.
pub const HEADER_LEN: usize = 16;
/// The marker at the start of every frame of formats 1 and 2.
pub const FRAME_MARKER: [u8; 4] = *b"\xd5FRM";
/// The marker at the start of every stamped frame (format 3).
pub const STAMPED_MARKER: [u8; 4] = *b"\xd5FRS";
/// Bytes of the file's identity in its header (after the version).
pub const FILE_ID_LEN: usize = 6;
/// A file's identity: random, in the header of a file of format 3 (zero in older
/// ones), covered by the checksum of each of its stamped frames.
pub type FileId = [u8; FILE_ID_LEN];

/// Which session wrote a stamped frame, and its number in that session (the
/// session's record is 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The session: random, drawn when it starts.
    pub session: u32,
    /// The frame's number in it.
    pub seq: u32,
}

/// Random bytes from the kernel (`getrandom`), or, if it fails, from the clock
/// and the process id: an identity needs to differ, not to be secret.
pub fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // SAFETY: getrandom writes at most `N` bytes into the buffer it is given.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), N, 0) };
    if usize::try_from(got).ok() != Some(N) {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        let mixed = (clock ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
        for (byte, from) in bytes.iter_mut().zip(mixed.iter().cycle()) {
            *byte = *from;
        }
    }
    bytes
}
/// Bytes of a frame header: marker, length, checksum.
pub const FRAME_HEADER_LEN: usize = 12;
/// The largest payload a frame may have.
pub const MAX_FRAME_LEN: u32 = 64 << 20;

/// A whole frame of format 2 (unstamped: header and payload) for a record; this
/// dstrace writes [`stamped_frame`]s.
pub fn frame(record: &Record) -> Result<Vec<u8>> {
    let payload = postcard::to_stdvec(record).context("cannot encode a recording frame")?;
    framed(FRAME_MARKER, crc32fast::hash(&payload), payload)
}

/// A whole stamped frame (format 3) for a record of the file `file`.
pub fn stamped_frame(file: &FileId, stamp: Stamp, record: &Record) -> Result<Vec<u8>> {
    let payload = postcard::to_stdvec(&(stamp, record)).context("cannot encode a recording frame")?;
    framed(STAMPED_MARKER, stamped_crc(file, &payload), payload)
}

fn framed(marker: [u8; 4], crc: u32, payload: Vec<u8>) -> Result<Vec<u8>> {
    let len = u32::try_from(payload.len()).ok().filter(|&len| len <= MAX_FRAME_LEN);
    let Some(len) = len else { bail!("a recording frame of {} bytes is too large", payload.len()) };
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&marker);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The checksum of a stamped frame: of the file's identity, then the payload.
pub(crate) fn stamped_crc(file: &FileId, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(file);
    hasher.update(payload);
    hasher.finalize()
}

/// The header of a new file, with a new identity.
pub fn header() -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..10].copy_from_slice(&VERSION.to_le_bytes());
    header[10..].copy_from_slice(&random::<FILE_ID_LEN>());
    header
}

/// The identity in a file's header (checked already).
pub fn file_id(header: &[u8]) -> FileId {
    let mut id = [0u8; FILE_ID_LEN];
    if let Some(bytes) = header.get(10..HEADER_LEN) {
        id.copy_from_slice(bytes);
    }
    id
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
        if self.skipped == 0 && !self.at_end {
            write!(f, "at byte {}: {}", self.offset, self.what)
        } else if self.at_end {
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
    /// Records, with the offset of their frame: in file order, but those of a
    /// stamped session together, at the place of its first, in their order.
    pub records: Vec<(u64, Record)>,
    /// The session of each record (`None`: unstamped, format 2 or older): its
    /// names are its own, whatever came before.
    pub sessions: Vec<Option<u32>>,
    /// Damaged parts, and frames copied, out of order or missing, by offset.
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
                write!(
                    f,
                    "a frame whose checksum does not match (stored {stored:#010x}, computed \
                     {computed:#010x}): damaged, or a frame of another recording"
                )
            }
        }
    }
}

/// The payload of the frame at `pos`, if it is intact, and whether it is stamped.
fn intact<'b>(bytes: &'b [u8], pos: usize, file: &FileId) -> Result<(&'b [u8], bool), Bad> {
    let Some(head) = bytes.get(pos..pos + FRAME_HEADER_LEN) else {
        return Err(Bad::TornHeader(bytes.len().saturating_sub(pos)));
    };
    let stamped = match head[..4].try_into() {
        Ok(FRAME_MARKER) => false,
        Ok(STAMPED_MARKER) => true,
        _ => return Err(Bad::Marker),
    };
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let stored = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if len > MAX_FRAME_LEN {
        return Err(Bad::Length(len));
    }
    let start = pos + FRAME_HEADER_LEN;
    let Some(payload) = bytes.get(start..start + len as usize) else {
        return Err(Bad::Torn { len, left: bytes.len() - start });
    };
    let computed = if stamped { stamped_crc(file, payload) } else { crc32fast::hash(payload) };
    if computed != stored {
        return Err(Bad::Checksum { stored, computed });
    }
    Ok((payload, stamped))
}

/// How many bytes the search for intact frames after damage may checksum, in all:
/// each candidate marker costs the length its header claims, so a file of
/// headers that each claim the rest of it would cost the square of its size
/// (hours for 64 MiB). Intact frames cost the file once, real damage about one
/// frame per damaged place; three times the file and a largest frame is far above
/// that.
fn resync_budget(file_len: usize) -> u64 {
    3 * file_len as u64 + u64::from(MAX_FRAME_LEN)
}

/// Said when [`resync_budget`] is spent.
const GAVE_UP: &str =
    "no intact frame looked for past here: the file's frames claim more bytes than it has many \
     times over (forged?)";

/// [`intact`], its checksum paid from `budget`: `None` when it cannot pay (the
/// budget is then 0).
fn intact_within<'b>(
    bytes: &'b [u8],
    at: usize,
    file: &FileId,
    budget: &mut u64,
) -> Option<Result<(&'b [u8], bool), Bad>> {
    let claimed = bytes
        .get(at + 4..at + 8)
        .map_or(0, |len| u64::from(u32::from_le_bytes([len[0], len[1], len[2], len[3]])));
    // What `intact` would checksum: nothing for a length past the frame limit or
    // the file's end, which it refuses first.
    let fits =
        claimed <= u64::from(MAX_FRAME_LEN) && (at + FRAME_HEADER_LEN) as u64 + claimed <= bytes.len() as u64;
    let cost = if fits { claimed } else { 0 };
    if cost > *budget {
        *budget = 0;
        return None;
    }
    *budget -= cost;
    Some(intact(bytes, at, file))
}

/// The first frame at or after `from` that is intact, each candidate's checksum
/// paid from `budget` (none past it: `budget` is then 0).
fn next_intact(bytes: &[u8], from: usize, file: &FileId, budget: &mut u64) -> Option<usize> {
    for at in from..bytes.len() {
        let rest = &bytes[at..];
        if !(rest.starts_with(&FRAME_MARKER) || rest.starts_with(&STAMPED_MARKER)) {
            continue;
        }
        match intact_within(bytes, at, file, budget) {
            None => return None,
            Some(Ok(_)) => return Some(at),
            Some(Err(_)) => {}
        }
    }
    None
}

/// Decodes a whole recording. Never panics, whatever the bytes: damage is
/// reported in [`Decoded::damage`] and skipped.
pub fn decode(bytes: &[u8]) -> Result<Decoded, NotARecording> {
    check_header(bytes)?;
    let file = file_id(bytes);
    let mut frames: Vec<(u64, Option<Stamp>, Record)> = Vec::new();
    let mut damage = Vec::new();
    let mut pos = HEADER_LEN;
    let mut budget = resync_budget(bytes.len());
    while pos < bytes.len() {
        let Some(checked) = intact_within(bytes, pos, &file, &mut budget) else {
            damage.push(Damage {
                offset: pos as u64,
                what: GAVE_UP.to_owned(),
                skipped: (bytes.len() - pos) as u64,
                at_end: true,
            });
            break;
        };
        match checked {
            Ok((payload, stamped)) => {
                let decoded = if stamped {
                    postcard::take_from_bytes::<(Stamp, Record)>(payload)
                        .map(|((stamp, record), rest)| ((Some(stamp), record), rest))
                } else {
                    postcard::take_from_bytes::<Record>(payload).map(|(record, rest)| ((None, record), rest))
                };
                let skipped = (FRAME_HEADER_LEN + payload.len()) as u64;
                match decoded {
                    Ok(((stamp, record), [])) => frames.push((pos as u64, stamp, record)),
                    Ok((_, rest)) => damage.push(Damage {
                        offset: pos as u64,
                        what: format!("a frame with {} bytes left over after its record", rest.len()),
                        skipped,
                        at_end: false,
                    }),
                    Err(err) => damage.push(Damage {
                        offset: pos as u64,
                        what: format!(
                            "an intact frame whose record cannot be decoded ({err}; a newer dstrace?)"
                        ),
                        skipped,
                        at_end: false,
                    }),
                }
                pos += FRAME_HEADER_LEN + payload.len();
            }
            Err(bad) => {
                // Look for the next intact frame after this one, within what is
                // left of the checksum budget.
                let next = next_intact(bytes, pos + 1, &file, &mut budget);
                let end = next.unwrap_or(bytes.len());
                let what =
                    if next.is_none() && budget == 0 { format!("{bad}; {GAVE_UP}") } else { bad.to_string() };
                damage.push(Damage {
                    offset: pos as u64,
                    what,
                    skipped: (end - pos) as u64,
                    at_end: next.is_none(),
                });
                pos = end;
            }
        }
    }
    Ok(in_order(frames, damage))
}

/// Puts the frames of each stamped session together, at the place of its first
/// frame, in their order; reports (in `damage`) the copies (skipped), the frames
/// out of order, and the numbers missing that no damage explains.
fn in_order(frames: Vec<(u64, Option<Stamp>, Record)>, mut damage: Vec<Damage>) -> Decoded {
    // Offsets of the damage found in the bytes, in file order.
    let bytes_damaged: Vec<u64> = damage.iter().map(|d| d.offset).collect();
    let explained = |from: u64, to: u64| {
        let first_after = bytes_damaged.partition_point(|&at| at <= from);
        bytes_damaged.get(first_after).is_some_and(|&at| at < to)
    };
    let mut by_session: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, (_, stamp, _)) in frames.iter().enumerate() {
        if let Some(stamp) = stamp {
            by_session.entry(stamp.session).or_default().push(i);
        }
    }
    let mut order: Vec<usize> = Vec::with_capacity(frames.len());
    for (i, (_, stamp, _)) in frames.iter().enumerate() {
        let Some(stamp) = stamp else {
            order.push(i);
            continue;
        };
        let Some(mut members) = by_session.remove(&stamp.session) else { continue };
        let seq_of = |i: usize| frames[i].1.map_or(0, |stamp| stamp.seq);
        // Out of order: a frame numbered below the one before it in the file.
        for pair in members.windows(2) {
            let (before, after) = (seq_of(pair[0]), seq_of(pair[1]));
            if after < before {
                damage.push(Damage {
                    offset: frames[pair[1]].0,
                    what: format!(
                        "frame {after} of session {:08x} comes after its frame {before} (frames out of \
                         order): read in its place",
                        stamp.session
                    ),
                    skipped: 0,
                    at_end: false,
                });
            }
        }
        members.sort_by_key(|&i| (seq_of(i), i));
        let mut kept: Vec<usize> = Vec::with_capacity(members.len());
        for i in members {
            match kept.last() {
                Some(&last) if seq_of(last) == seq_of(i) => damage.push(Damage {
                    offset: frames[i].0,
                    what: format!(
                        "a copy of frame {} of session {:08x} (at byte {}): skipped",
                        seq_of(i),
                        stamp.session,
                        frames[last].0
                    ),
                    skipped: 0,
                    at_end: false,
                }),
                _ => kept.push(i),
            }
        }
        // Numbers missing: before the first (the session's start), and between.
        let before_first = frames[..i].last().map_or(0, |(at, _, _)| *at);
        let mut previous: Option<usize> = None;
        for &k in &kept {
            let (from, lo, hi) = match previous {
                None => (0, before_first, frames[k].0),
                Some(p) => (seq_of(p) + 1, frames[p].0.min(frames[k].0), frames[p].0.max(frames[k].0)),
            };
            if seq_of(k) > from && !explained(lo, hi) {
                let start = if from == 0 { " (its start: who recorded, when)" } else { "" };
                damage.push(Damage {
                    offset: frames[k].0,
                    what: format!(
                        "frames {from} to {} of session {:08x}{start} are missing before its frame {} \
                         (deleted, or cut out): what they defined reads as lost",
                        seq_of(k) - 1,
                        stamp.session,
                        seq_of(k)
                    ),
                    skipped: 0,
                    at_end: false,
                });
            }
            previous = Some(k);
        }
        order.extend(kept);
    }
    damage.sort_by_key(|d| d.offset);
    let mut slots: Vec<Option<(u64, Option<Stamp>, Record)>> = frames.into_iter().map(Some).collect();
    let mut decoded = Decoded::default();
    for i in order {
        if let Some((offset, stamp, record)) = slots[i].take() {
            decoded.records.push((offset, record));
            decoded.sessions.push(stamp.map(|stamp| stamp.session));
        }
    }
    decoded.damage = damage;
    decoded
}
