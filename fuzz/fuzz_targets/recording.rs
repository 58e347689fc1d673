//! Fuzz target: the recording reader, [`dstrace::sinks::recording::read`], the
//! function `dstrace report` turns a file's bytes into intervals with. Whatever the
//! bytes, it must return (the recording, its damage listed, or why it is not one),
//! never panic, and never claim more than the file holds; libFuzzer's `-timeout` and
//! `-rss_limit_mb` (`cargo xtask fuzz` sets both) make a hang or a blow-up a crash.
//!
//! Random bytes almost never pass a frame's CRC-32, so each input is read twice: as it
//! is (the header, the framing, the checksums, the search for the next intact frame
//! after damage), and with every frame's checksum made right, so that the record
//! decoder and the string tables see arbitrary payloads (ids out of range, huge
//! lengths, unknown variants).

#![no_main]

use dstrace::sinks::recording::{self, FRAME_HEADER_LEN, FRAME_MARKER, HEADER_LEN, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    check(bytes);
    let mut sealed = bytes.to_vec();
    if seal(&mut sealed) {
        check(&sealed);
    }
});

/// Reads `bytes` as `dstrace report` does and checks that what it says is in them.
fn check(bytes: &[u8]) {
    let Ok(recording) = recording::read(bytes) else { return };
    // Each session and each interval comes from a frame of its own, and a frame
    // takes at least its header.
    let frames = (bytes.len() - HEADER_LEN) / FRAME_HEADER_LEN;
    assert!(
        recording.sessions.len() + recording.intervals.len() <= frames,
        "{} sessions and {} intervals from {frames} frames at most",
        recording.sessions.len(),
        recording.intervals.len()
    );
    for damage in &recording.damage {
        let end = damage.offset.checked_add(damage.skipped);
        assert!(
            damage.offset < bytes.len() as u64 && end.is_some_and(|end| end <= bytes.len() as u64),
            "damage outside a file of {} bytes: {damage:?}",
            bytes.len()
        );
        // `dstrace report` prints each on one line.
        assert!(!damage.to_string().contains('\n'), "a damage line with a newline: {damage}");
    }
}

/// Gives every frame found in `bytes` its right checksum, as a writer would have;
/// whether there was a frame.
fn seal(bytes: &mut [u8]) -> bool {
    let mut sealed = false;
    let mut pos = HEADER_LEN;
    while pos + FRAME_HEADER_LEN <= bytes.len() {
        let head = &bytes[pos..pos + FRAME_HEADER_LEN];
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let end = pos + FRAME_HEADER_LEN + len as usize;
        if head[..4] != FRAME_MARKER || len > MAX_FRAME_LEN || end > bytes.len() {
            pos += 1;
            continue;
        }
        let crc = crc32fast::hash(&bytes[pos + FRAME_HEADER_LEN..end]);
        bytes[pos + 8..pos + FRAME_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        sealed = true;
        pos = end;
    }
    sealed
}
