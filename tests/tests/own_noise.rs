//! dstrace makes no noise of its own in what it shows: over a minute of a real FUSE
//! pile-up, no wait of dstrace itself is listed (not even when it runs in a pid
//! namespace of its own, where its pid is another number than the kernel's), and
//! the live view never reads `/proc/locks` while no task waits for a file lock (a
//! read takes the kernel's locks of every file lock of the host and puts dstrace
//! in D itself).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{process::Command, time::Duration};

use dstrace_tests::{
    children_of, dstrace_bin, fuse::FuseMount, json_lines, require_root, require_tool, scaled, Dstrace,
    Pileup, Scratch,
};
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(20);
/// A bound on a run of `--duration 60s` (a failure bound, not a measure).
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Whether the run printed its summary.
fn ended(lines: &[String]) -> bool {
    lines.iter().any(|line| line.contains(r#""type":"summary""#))
}

/// Whether `value` names `pid` as a task that waits (a `tgid`, or one of the
/// `tgids` of a group), anywhere but as a waker (a task dstrace wakes is not its
/// wait).
fn names_as_waiting(value: &Value, pid: u32) -> bool {
    match value {
        Value::Object(fields) => fields.iter().any(|(key, field)| match key.as_str() {
            "waker" => false,
            "tgid" => field.as_u64() == Some(u64::from(pid)),
            "tgids" => {
                field.as_array().is_some_and(|pids| pids.iter().any(|p| p.as_u64() == Some(pid.into())))
            }
            _ => names_as_waiting(field, pid),
        }),
        Value::Array(items) => items.iter().any(|item| names_as_waiting(item, pid)),
        _ => false,
    }
}

/// A minute of `run --json`, started in a pid namespace of its own (`unshare
/// --pid --fork`, `/proc` the host's), every wait of at least 0 s streamed and the
/// blocked time by process each second, while tasks pile up behind a FUSE daemon:
/// the stuck tasks are there, dstrace (its host pid, any of its threads) never.
#[test]
fn its_own_waits_are_never_listed() {
    if !require_root("its_own_waits_are_never_listed") {
        return;
    }
    let Some(unshare) = require_tool("its_own_waits_are_never_listed", "unshare") else { return };
    let mount = FuseMount::new("ownwaits").expect("mount the test filesystem");
    let mut cmd = Command::new(unshare);
    cmd.args(["--pid", "--fork"]).arg(dstrace_bin()).args([
        "run",
        "--json",
        "--min-duration",
        "0",
        "--interval",
        "1s",
        "--duration",
        "60s",
    ]);
    let mut dstrace = Dstrace::spawn_command(cmd);
    dstrace.wait_for_line(scaled(START_TIMEOUT), |line| line.contains(r#""type":"start""#));
    let own: Vec<u32> = children_of(dstrace.pid());
    assert_eq!(own.len(), 1, "one dstrace under unshare: {own:?}");
    let own = own[0];
    let pileup = Pileup::start(&mount, 2);
    let stuck = pileup.stuck.clone();
    dstrace.wait_until(scaled(RUN_TIMEOUT), ended);
    let (status, lines) = dstrace.finish();
    drop(pileup);
    assert!(status.success(), "{lines:?}");
    let records = json_lines(&lines);
    for pid in &stuck {
        assert!(
            records.iter().any(|r| r["type"] == "ongoing" && r["tgid"] == *pid),
            "the stuck task {pid} is not listed"
        );
    }
    let own_records: Vec<&Value> = records.iter().filter(|r| names_as_waiting(r, own)).collect();
    assert!(own_records.is_empty(), "dstrace's own waits (pid {own}) listed: {own_records:?}");
}

/// A minute of `run --json --interval 1s` under strace, a FUSE pile-up (no file
/// lock) in D the whole time: `/proc/locks` is opened at most once, for the
/// summary at the end (whose advice names every file lock queue, its waiters in
/// S); not at each interval.
#[test]
fn proc_locks_is_not_read_without_a_file_lock_wait() {
    if !require_root("proc_locks_is_not_read_without_a_file_lock_wait") {
        return;
    }
    let Some(strace) = require_tool("proc_locks_is_not_read_without_a_file_lock_wait", "strace") else {
        return;
    };
    let scratch = Scratch::new("ownlocks");
    let log = scratch.path("strace.log");
    let mount = FuseMount::new("ownlocks").expect("mount the test filesystem");
    let pileup = Pileup::start(&mount, 2);
    let mut cmd = Command::new(strace);
    cmd.args(["-f", "-qq", "-e", "trace=open,openat,openat2", "-o"]).arg(&log).arg(dstrace_bin()).args([
        "run",
        "--json",
        "--interval",
        "1s",
        "--duration",
        "60s",
    ]);
    let mut dstrace = Dstrace::spawn_command(cmd);
    dstrace.wait_until(scaled(RUN_TIMEOUT), ended);
    let (status, lines) = dstrace.finish();
    drop(pileup);
    assert!(status.success(), "{lines:?}");
    let records = json_lines(&lines);
    let intervals = records.iter().filter(|r| r["type"] == "interval").count();
    assert!(intervals >= 2, "a minute at 1 s intervals gave {intervals} intervals");
    let traced = std::fs::read_to_string(&log).unwrap();
    let opens = traced.lines().filter(|line| line.contains("\"/proc/locks\"")).count();
    assert!(opens <= 1, "/proc/locks opened {opens} times over {intervals} intervals");
}

/// A program the kernel refuses (here, where it refuses them: the fentry programs
/// on `d_alloc_parallel`) is listed whole in the `start` record; on standard
/// error, nothing of it without `--verbose`, one short line with it.
#[test]
fn a_refused_program_is_one_line_and_only_with_verbose() {
    if !require_root("a_refused_program_is_one_line_and_only_with_verbose") {
        return;
    }
    let run = |args: &[&str]| {
        let mut cmd = Command::new(dstrace_bin());
        cmd.args(["run", "--duration", "1s", "--interval", "0"]).args(args);
        dstrace_tests::output_bounded(&mut cmd, scaled(START_TIMEOUT), "dstrace run")
    };
    let json = run(&["--json"]);
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    let start: Value =
        serde_json::from_str(String::from_utf8_lossy(&json.stdout).lines().next().unwrap()).unwrap();
    // No `skipped` at all: the kernel took every program.
    let refused: Vec<&str> = start["skipped"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .filter(|what| what.contains("the kernel refused the program"))
        .collect();
    if refused.is_empty() {
        eprintln!("skipped: this kernel refuses no program of dstrace: {start}");
        return;
    }
    let quiet = run(&["--plain"]);
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(quiet.status.success(), "{stderr}");
    assert!(!stderr.contains("refuse") && !stderr.contains("Verifier"), "without --verbose: {stderr}");
    let verbose = run(&["--plain", "--verbose"]);
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    assert!(verbose.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| line.contains("refuses")).collect();
    assert_eq!(lines.len(), refused.len(), "one line per refused program: {stderr}");
    assert!(lines.iter().all(|line| line.contains(": not traced (this kernel refuses its ")), "{stderr}");
    assert!(!stderr.contains("Verifier"), "the verifier's log is for the start record: {stderr}");
}
