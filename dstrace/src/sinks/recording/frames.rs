//! The bytes of a recording: the file header, the frames (marker, length,
//! checksum, payload) and the decoder that finds every intact frame and reports
//! the damaged ones. Nothing here knows what a record means beyond its encoding.

use std::fmt;

use anyhow::{bail, Context as _, Result};

use crate::sinks::recording::schema::Record;

/// The first eight bytes of every recording.
pub const MAGIC: [u8; 8] = *b"DSTRREC\0";
/// The format version this dstrace writes, and the newest it reads (it reads
/// every older one: see [`crate::sinks::recording`]).
pub const VERSION: u16 = 2;
/// Bytes of the file header.
pub const HEADER_LEN: usize = 16;
/// The marker at the start of every frame.
pub const FRAME_MARKER: [u8; 4] = *b"\xd5FRM";
/// Bytes of a frame header: marker, length, checksum.
pub const FRAME_HEADER_LEN: usize = 12;
/// The largest payload a frame may have.
pub const MAX_FRAME_LEN: u32 = 64 << 20;

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
