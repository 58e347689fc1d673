//! Recordings under faults, with the real binary: a disk that fills up while
//! `dstrace record` writes (a real tmpfs, filled by a file), a report told to
//! write over the recording it reads, and the final line of a recording capped
//! with `--rotate 0`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use dstrace::{
    model::aggregate::Totals,
    resolve::symbols::Stack,
    sinks::recording::{self, FileOptions, IntervalData, RowData, Session, Writer},
};
use dstrace_tests::{dstrace_bin, mounts, require_root, scaled, stop_recording, Scratch};
use serde_json::Value;

fn dstrace(args: &[&str]) -> Output {
    Command::new(dstrace_bin()).args(args).output().expect("dstrace runs")
}

/// A recording of `n` intervals of one row each, made by the library's writer.
fn recording_of(path: &Path, n: u64) {
    let options = FileOptions { path: path.to_owned(), max_size: 1 << 30, rotate: 0 };
    let mut writer = Writer::open(options, Session { dstrace: "test".into(), ..Session::default() }).unwrap();
    for i in 1..=n {
        let mut totals = Totals::default();
        totals.record(1_000_000);
        let stack: Stack = ["__schedule", "io_schedule", "folio_wait_bit_common"].map(String::from).into();
        let row = RowData {
            pid: i as u32,
            comm: "writer".into(),
            stack,
            mount: Some("/".into()),
            lock: None,
            totals,
        };
        let interval = IntervalData {
            start: recording::from_unix_ns(i * 1_000_000_000),
            end: recording::from_unix_ns((i + 1) * 1_000_000_000),
            rows: vec![row],
            waits: Vec::new(),
            counters: Vec::new(),
            in_d: Vec::new(),
        };
        assert!(writer.write_interval(&interval).unwrap());
    }
}

/// `dstrace record -o FILE ARGS...`, its standard error to `log`.
fn record_logged(file: &Path, log: &Path, args: &[&str]) -> Child {
    Command::new(dstrace_bin())
        .args(["record", "-o", file.to_str().unwrap()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits (bounded) until `log` has a line for which `pred` holds; returns it.
fn wait_for_line(log: &Path, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + scaled(timeout);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|line| pred(line)) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no such line in {}:\n{text}", log.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until `done` holds.
fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + scaled(timeout);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A small tmpfs mounted for a test, lazily unmounted on drop.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn mount(dir: PathBuf, size: &str) -> SmallTmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        mounts::mount(Some("tmpfs"), &dir, Some("tmpfs"), 0, Some(&format!("size={size},mode=0700")))
            .expect("mount a tmpfs");
        SmallTmpfs(dir)
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: umount2 with a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Fills the filesystem of `path` with one file, until it is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let block = [0u8; 4096];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(err) => panic!("cannot fill {}: {err}", path.display()),
        }
    }
}

/// A full disk does not end `dstrace record`: it says so once, holds what it
/// sees, says once when it writes again, and the recording it leaves reads
/// whole: one session, the intervals after the full disk, and a warning of the
/// gap saying when it was and what was lost.
#[test]
fn record_survives_a_full_disk_and_says_the_gap() {
    if !require_root("record_survives_a_full_disk_and_says_the_gap") {
        return;
    }
    let dir = Scratch::new("full-disk");
    let disk = SmallTmpfs::mount(dir.path("disk"), "256k");
    let rec = disk.0.join("incident.rec");
    let log = dir.path("record.log");
    let recorder = record_logged(&rec, &log, &["--interval", "1s"]);
    wait_for_line(&log, Duration::from_secs(60), |line| line.starts_with("dstrace: recording to"));
    let size = || std::fs::metadata(&rec).map_or(0, |meta| meta.len());
    let before = size();
    wait_until(Duration::from_secs(10), "an interval written", || size() > before);

    let filler = disk.0.join("filler");
    fill(&filler);
    let failed = wait_for_line(&log, Duration::from_secs(10), |line| line.contains("No space left"));
    assert!(failed.starts_with("dstrace: warning: cannot write to"), "{failed}");
    let held = size();
    std::fs::remove_file(&filler).unwrap();
    let resumed = wait_for_line(&log, Duration::from_secs(10), |line| line.contains("again"));
    assert!(resumed.starts_with(&format!("dstrace: writing to {} again", rec.display())), "{resumed}");
    // One interval more after the one that wrote what was held.
    let after = size();
    assert!(after > held);
    wait_until(Duration::from_secs(10), "an interval after the resume", || size() > after);
    stop_recording(recorder);

    let log_text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log_text.matches("No space left").count(), 1, "said once:\n{log_text}");
    assert_eq!(log_text.matches(" again").count(), 1, "said once:\n{log_text}");
    let out = dstrace(&["report", rec.to_str().unwrap(), "--format", "json"]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("nothing could be written from"), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["sessions"].as_array().unwrap().len(), 1, "{json}");
    let damage = json["damage"].as_array().unwrap();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert!(damage[0].as_str().unwrap().contains("nothing could be written from"), "{damage:?}");
    // The file's intervals: one after the resume, none cut.
    let file = recording::read(&std::fs::read(&rec).unwrap()).unwrap();
    assert!(file.intervals.len() >= 3, "{} intervals", file.intervals.len());
    let resume = file.damage[0].offset;
    let frames = recording::decode(&std::fs::read(&rec).unwrap()).unwrap().records;
    assert!(frames.iter().filter(|(at, _)| *at > resume).count() >= 2, "intervals after the resume");
}

/// `dstrace report REC -o REC` (or a symbolic or hard link to it) writes nothing
/// over the recording: one line naming both and the fix, exit 1.
#[test]
fn report_never_writes_over_a_recording_it_reads() {
    let dir = Scratch::new("report-over");
    let rec = dir.path("incident.rec");
    recording_of(&rec, 3);
    let bytes = std::fs::read(&rec).unwrap();
    let symlink = dir.path("symlink.rec");
    std::os::unix::fs::symlink(&rec, &symlink).unwrap();
    let hard = dir.path("hard.rec");
    std::fs::hard_link(&rec, &hard).unwrap();
    let other = dir.path("other.rec");
    recording_of(&other, 1);
    for out_path in [&rec, &symlink, &hard] {
        for format in ["folded", "json"] {
            let out = dstrace(&[
                "report",
                other.to_str().unwrap(),
                rec.to_str().unwrap(),
                "--format",
                format,
                "-o",
                out_path.to_str().unwrap(),
            ]);
            let stderr = String::from_utf8(out.stderr).unwrap();
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.contains(&format!("-o {}", out_path.display())), "{stderr}");
            assert!(stderr.contains(&format!("is {},", rec.display())), "{stderr}");
            assert!(stderr.contains("give -o another path"), "{stderr}");
            assert_eq!(std::fs::read(&rec).unwrap(), bytes, "the recording is untouched");
        }
    }
    // Another path is written as before.
    let out = dstrace(&["report", rec.to_str().unwrap(), "-o", dir.path("out.folded").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

/// With `--rotate 0` the recording stops at its cap, and the final line counts
/// what is in the file, not what was not written (said apart).
#[test]
fn a_capped_recording_counts_only_what_it_wrote() {
    if !require_root("a_capped_recording_counts_only_what_it_wrote") {
        return;
    }
    let dir = Scratch::new("capped");
    let rec = dir.path("capped.rec");
    // Past the cap already: the new session's first interval is written, no other.
    recording_of(&rec, 200);
    let earlier = recording::read(&std::fs::read(&rec).unwrap()).unwrap().intervals.len();
    assert!(std::fs::metadata(&rec).unwrap().len() > 4096);
    let log = dir.path("record.log");
    let recorder = record_logged(&rec, &log, &["--interval", "1s", "--max-size", "4KiB", "--rotate", "0"]);
    wait_for_line(&log, Duration::from_secs(60), |line| line.contains("reached its size cap"));
    stop_recording(recorder);
    let last = std::fs::read_to_string(&log).unwrap().lines().last().unwrap().to_owned();
    let file = recording::read(&std::fs::read(&rec).unwrap()).unwrap();
    let written = file.intervals.len() - earlier;
    let waits: usize = file.intervals[earlier..].iter().map(|i| i.waits.len()).sum();
    assert_eq!(written, 1, "{last}");
    assert!(last.starts_with(&format!("dstrace: recorded 1 intervals and {waits} waits")), "{last}");
    assert!(last.contains("not written, past its size cap (--rotate 0): "), "{last}");
}
