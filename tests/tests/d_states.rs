//! Real D states, traced by the real eBPF object in the running kernel.
//!
//! A FUSE server that stops answering makes tasks pile up in D behind it, as behind
//! a dead NFS server; `dstrace run` must report them with their pid, a plausible
//! duration and the function they blocked in, and leave idle kernel threads out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use dstrace_tests::{fuse::FuseMount, json_lines, require_root, Dstrace, Pileup};
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the server holds the lookups.
const HOLD: Duration = Duration::from_secs(2);

fn waits(records: &[Value]) -> impl Iterator<Item = &Value> {
    records.iter().filter(|r| r["type"] == "wait")
}

/// Whether `pid` is a kernel thread (`PF_KTHREAD` in its flags).
fn is_kernel_thread(pid: u64) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    dstrace::procfs::parse_stat(&stat).is_some_and(|stat| stat.flags & PF_KTHREAD != 0)
}

#[test]
fn tasks_stuck_behind_a_dead_fuse_server_are_reported() {
    if !require_root("tasks_stuck_behind_a_dead_fuse_server_are_reported") {
        return;
    }
    let mount = FuseMount::new("pileup").expect("mount the test filesystem");

    let mut dstrace = Dstrace::spawn(&["run", "--json", "--min-duration", "200ms", "--duration", "60s"]);
    dstrace.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));

    // The server goes away; the first lookup waits for its answer, the others
    // pile up behind it in D.
    let mut pileup = Pileup::start(&mount, 3);
    let (first, stuck) = (pileup.owner, pileup.stuck.clone());
    let held_at = Instant::now();
    sleep(HOLD);
    mount.release();
    pileup.children.wait_all(Duration::from_secs(10));
    let held = held_at.elapsed();

    dstrace.wait_until(Duration::from_secs(10), |seen| {
        stuck.iter().all(|pid| seen.iter().any(|line| line.contains(&format!(r#""pid":{pid},"#))))
    });
    let (status, lines) = dstrace.interrupt();
    assert!(status.success(), "dstrace exited with {status}");
    let records = json_lines(&lines);
    assert_eq!(records.last().map(|r| r["type"].clone()), Some("summary".into()), "no summary at the end");

    for pid in &stuck {
        let wait = waits(&records)
            .find(|w| w["pid"] == *pid)
            .unwrap_or_else(|| panic!("no wait for stuck pid {pid} in:\n{}", lines.join("\n")));
        assert_eq!(wait["tid"], *pid);
        assert_eq!(wait["comm"], "stat");
        let duration = Duration::from_nanos(wait["duration_ns"].as_u64().unwrap());
        assert!(
            duration >= HOLD - Duration::from_millis(500) && duration <= held + Duration::from_secs(2),
            "pid {pid} waited {duration:?}, the server held for {held:?}"
        );
        let blocked_in = wait["blocked_in"].as_str().unwrap_or_default();
        assert!(
            ["d_alloc_parallel", "d_wait_lookup", "__lookup_slow", "lookup_slow"].contains(&blocked_in),
            "pid {pid} blocked in {blocked_in:?}; stack: {}",
            wait["stack"]
        );
        eprintln!("stuck pid {pid}: {} {duration:?} in {blocked_in}", wait["state"]);
        assert!(wait["stack"].as_array().is_some_and(|s| s.iter().any(|f| f == "__schedule")));
        assert!(wait["state"].as_str().is_some_and(|s| s.starts_with('D')));
        // The lookup owner, answered, wakes those waiting for its dentry.
        assert_eq!(wait["waker"]["tid"], first, "pid {pid} was woken by {}", wait["waker"]);
        assert_eq!(wait["waker"]["comm"], "stat");
        assert!(wait["waker"]["stack"].as_array().is_some_and(|s| !s.is_empty()), "no waker stack");
    }
    // The first task waits for the server's answer in S (interruptible), not in D.
    assert!(waits(&records).all(|w| w["pid"] != first), "the first lookup is not a D wait");

    let summary = records.last().unwrap();
    assert!(summary["counters"]["waits_ended"].as_u64().unwrap() >= stuck.len() as u64);
    // The in-kernel aggregation counted them too.
    for pid in &stuck {
        let group = summary["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["pid"] == *pid && g["blocked_in"] == "d_alloc_parallel")
            .unwrap_or_else(|| panic!("no group for pid {pid}: {}", summary["groups"]));
        // Woken, a waiter looks the name up again and may wait a second, short time.
        let count = group["count"].as_u64().unwrap();
        assert!(count >= 1);
        assert!(group["max_ns"].as_u64().unwrap() >= (HOLD - Duration::from_millis(500)).as_nanos() as u64);
        assert!(group["total_ns"].as_u64().unwrap() >= group["max_ns"].as_u64().unwrap());
        let hist: u64 = group["hist_log2_us"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum();
        assert_eq!(hist, count, "the histogram counts every wait once");
    }
    assert_eq!(summary["counters"]["ring_buffer_full"], 0);
    assert_eq!(summary["counters"]["inflight_map_full"], 0);
}

/// Idle kernel threads sleep in TASK_IDLE all day: left out by default, there
/// with `--include-idle`.
#[test]
fn idle_kernel_threads_are_left_out_unless_asked() {
    if !require_root("idle_kernel_threads_are_left_out_unless_asked") {
        return;
    }
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--json", "--min-duration", "0", "--duration", "3s"];
        args.extend_from_slice(extra);
        let (status, lines) = Dstrace::spawn(&args).finish();
        assert!(status.success(), "dstrace exited with {status}");
        json_lines(&lines)
    };

    let with_idle = run(&["--include-idle"]);
    let idle: Vec<&Value> = waits(&with_idle).filter(|w| w["state"] == "D+idle").collect();
    assert!(!idle.is_empty(), "no TASK_IDLE wait in 3 s with --include-idle");
    eprintln!("{} TASK_IDLE waits with --include-idle, e.g. {}", idle.len(), idle[0]["comm"]);
    assert!(
        idle.iter().any(|w| is_kernel_thread(w["pid"].as_u64().unwrap())),
        "TASK_IDLE waits, but none by a kernel thread: {idle:?}"
    );

    let default = run(&[]);
    let leaked: Vec<&Value> = waits(&default).filter(|w| w["state"] == "D+idle").collect();
    assert!(leaked.is_empty(), "idle waits reported without --include-idle: {leaked:?}");
}
