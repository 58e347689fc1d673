//! Recordings under faults, with the real binary: a disk that fills up while
//! `dstrace record` writes (a real tmpfs, filled by a file), a report told to
//! write over the recording it reads, and the final line of a recording capped
//! with `--rotate 0`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
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
use dstrace_tests::{
    dstrace_bin, fuse::FuseMount, hostile_pileup, mounts, require_root, scaled, start_recording,
    stop_recording, Pileup, Rng, Scratch,
};
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
    // The file's last page may hold a few more intervals (tmpfs gives whole pages).
    let failed = wait_for_line(&log, Duration::from_secs(90), |line| line.contains("No space left"));
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
    let stderr = dstrace_tests::without_kernel_losses(&String::from_utf8(out.stderr).unwrap());
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
/// over the recording: one line naming both and the fix, exit 1; nor over any
/// other recording.
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
    // A recording it does not read: refused too.
    let other_bytes = std::fs::read(&other).unwrap();
    let out = dstrace(&["report", rec.to_str().unwrap(), "-o", other.to_str().unwrap()]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is a dstrace recording") && stderr.contains("give -o another path"), "{stderr}");
    assert_eq!(std::fs::read(&other).unwrap(), other_bytes);
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

/// Records `rec` while `pileup` stands, until two intervals have tasks in D at
/// their end, then lets it go.
fn record_pileup<'m>(rec: &Path, mount: &'m FuseMount, pileup: impl FnOnce() -> Pileup<'m>) {
    let recorder = start_recording(rec, &["--interval", "1s", "--min-duration", "100ms"]);
    let mut pileup = pileup();
    let with_in_d = || {
        let bytes = std::fs::read(rec).unwrap_or_default();
        recording::read(&bytes).map_or(0, |r| r.intervals.iter().filter(|i| !i.in_d.is_empty()).count())
    };
    wait_until(Duration::from_secs(20), "two intervals with tasks in D", || with_in_d() >= 2);
    mount.release();
    pileup.children.wait_all(Duration::from_secs(10));
    let before = recording::read(&std::fs::read(rec).unwrap()).unwrap().intervals.len();
    wait_until(Duration::from_secs(10), "an interval after the release", || {
        recording::read(&std::fs::read(rec).unwrap()).unwrap().intervals.len() > before
    });
    stop_recording(recorder);
}

/// The names a report gives, each with its role: the path of keys to it in the
/// JSON document (array indices left out), for the keys that hold names.
fn names(json: &Value) -> BTreeSet<(String, String)> {
    const NAME_KEYS: [&str; 17] = [
        "comm",
        "function",
        "mountpoint",
        "path",
        "fstype",
        "lock",
        "name",
        "kind",
        "syscall",
        "stack[]",
        "cgroup",
        "hostname",
        "kernel",
        "procedure",
        "program",
        "address",
        "oldest_opcode",
    ];
    fn walk(value: &Value, path: &str, out: &mut BTreeSet<(String, String)>) {
        match value {
            Value::Object(map) => map.iter().for_each(|(key, v)| walk(v, &format!("{path}.{key}"), out)),
            Value::Array(items) => items.iter().for_each(|v| walk(v, &format!("{path}[]"), out)),
            Value::String(text) => {
                let key = path.rsplit('.').next().unwrap_or_default();
                if NAME_KEYS.contains(&key) {
                    out.insert((path.to_owned(), text.clone()));
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(json, "", &mut out);
    out
}

/// The frames of a recording, as byte ranges in file order.
fn frame_spans(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut starts: Vec<usize> =
        recording::decode(bytes).unwrap().records.iter().map(|(at, _)| *at as usize).collect();
    starts.sort_unstable();
    starts.iter().enumerate().map(|(i, &at)| at..starts.get(i + 1).copied().unwrap_or(bytes.len())).collect()
}

/// Whole frames of real recordings (made by `dstrace record` during real D
/// states) copied, swapped, deleted, or spliced in from another recording: every
/// mutant is reported as damaged (stderr and JSON), and every name its report
/// gives is one the undamaged report gives, in the same role, or reads as lost.
#[test]
fn whole_frame_damage_of_real_recordings_is_reported_and_names_nothing_wrongly() {
    if !require_root("whole_frame_damage_of_real_recordings_is_reported_and_names_nothing_wrongly") {
        return;
    }
    let dir = Scratch::new("frame-damage");
    let mount = FuseMount::new("frames").expect("mount the test filesystem");
    let ours = dir.path("ours.rec");
    record_pileup(&ours, &mount, || Pileup::start(&mount, 3));
    // Another recording, other names: another command, another path.
    let theirs = dir.path("theirs.rec");
    record_pileup(&theirs, &mount, || {
        hostile_pileup(&mount, &dir, "other-stat".as_ref(), "elsewhere".as_ref(), 2)
    });

    let report = |path: &Path| -> (Value, String) {
        let out = dstrace(&["report", path.to_str().unwrap(), "--format", "json"]);
        assert!(out.status.success(), "{out:?}");
        (serde_json::from_slice(&out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (whole_json, whole_stderr) = report(&ours);
    assert_eq!(whole_json["damage"], serde_json::json!([]), "{whole_stderr}");
    // The names of the undamaged recording in their roles: of its whole report,
    // and of those of each part of it (a frame lost may leave a wait in D that
    // the whole saw end: it is then a row of a task still in D, as in the report
    // of the intervals up to then).
    let mut known = names(&whole_json);
    for interval in recording::read(&std::fs::read(&ours).unwrap()).unwrap().intervals {
        let at = dstrace::clock::rfc3339_utc(interval.end + Duration::from_micros(1));
        let before = dstrace::clock::rfc3339_utc(interval.end - Duration::from_micros(1));
        for window in [["--until", at.as_str()], ["--since", before.as_str()]] {
            let mut args = vec!["report", ours.to_str().unwrap(), "--format", "json"];
            args.extend_from_slice(&window);
            // A part where nothing happened is an error (nothing matches).
            if let Ok(json) = serde_json::from_slice(&dstrace(&args).stdout) {
                known.extend(names(&json));
            }
        }
    }
    assert!(known.iter().any(|(role, name)| role == ".in_d[].comm" && name == "stat"), "{known:?}");
    assert!(
        known.iter().any(|(role, name)| role.ends_with("file.path") && name.ends_with("/missing")),
        "{known:?}"
    );
    let whole = std::fs::read(&ours).unwrap();
    let other = std::fs::read(&theirs).unwrap();
    let (our_frames, their_frames) = (frame_spans(&whole), frame_spans(&other));
    let n = our_frames.len();
    assert!(n >= 6, "{n} frames");

    let mut rng = Rng::seeded("whole_frame_damage_of_real_recordings_is_reported_and_names_nothing_wrongly");
    let mutant = dir.path("mutant.rec");
    let mut lost_names = 0;
    for round in 0..2000 {
        let mut frames: Vec<Vec<u8>> = our_frames.iter().map(|span| whole[span.clone()].to_vec()).collect();
        let mut done = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let len = frames.len() as u64;
            match rng.below(4) {
                0 => {
                    let (i, j) = (rng.below(len) as usize, rng.below(len + 1) as usize);
                    frames.insert(j, frames[i].clone());
                    done.push(format!("copied {i} to {j}"));
                }
                1 => {
                    let i = rng.below(len) as usize;
                    let j = (i + 1 + rng.below(len - 1) as usize) % frames.len();
                    frames.swap(i, j);
                    done.push(format!("swapped {i} and {j}"));
                }
                2 if len > 2 => {
                    // Never the last frame of the recording: a recording that lost
                    // it is one that stopped earlier, which nothing can tell.
                    let last = &whole[our_frames[n - 1].clone()];
                    let i = rng.below(len) as usize;
                    if frames[i] != last {
                        frames.remove(i);
                        done.push(format!("deleted {i}"));
                    }
                }
                _ => {
                    let (i, j) = (rng.below(their_frames.len() as u64) as usize, rng.below(len + 1) as usize);
                    frames.insert(j, other[their_frames[i].clone()].to_vec());
                    done.push(format!("theirs {i} put at {j}"));
                }
            }
        }
        let mut bytes = whole[..recording::HEADER_LEN].to_vec();
        bytes.extend(frames.concat());
        if bytes == whole {
            continue;
        }
        std::fs::write(&mutant, &bytes).unwrap();
        let (json, stderr) = report(&mutant);
        let stderr = dstrace_tests::without_kernel_losses(&stderr);
        let damage = json["damage"].as_array().unwrap();
        assert!(!damage.is_empty(), "round {round} ({done:?}): no damage reported");
        assert_eq!(stderr.lines().count(), damage.len(), "round {round} ({done:?}): {stderr}");
        assert!(stderr.lines().all(|line| line.starts_with("dstrace: warning: ")), "{stderr}");
        let got = names(&json);
        lost_names += got.iter().filter(|(_, name)| name.starts_with("<lost ")).count();
        let unknown: Vec<&(String, String)> = got
            .iter()
            .filter(|(_, name)| !name.starts_with("<lost "))
            .filter(|pair| !known.contains(*pair))
            .collect();
        assert!(
            unknown.is_empty(),
            "round {round} ({done:?}): names not in the undamaged report: {unknown:?}"
        );
    }
    eprintln!("names that read as lost (reported as damage): {lost_names}");
}
