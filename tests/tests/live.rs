//! The incident view of `dstrace run` against real D states: the full-screen view
//! in a real terminal (tmux), the plain tables and the JSON lines, each showing the
//! tasks piled up behind a FUSE daemon that stopped answering, grouped by mount and
//! function, with ages that grow while the wait lasts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{thread::sleep, time::Duration};

use dstrace_tests::{dstrace_bin, fuse::FuseMount, json_lines, require_root, tmux::Tmux, Dstrace, Pileup};
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The full-screen view, driven in a tmux pane: it shows the group of the stuck
/// tasks with its chain, answers the keys, and `q` ends it with the summary on the
/// normal screen and the terminal as it was.
#[test]
fn full_screen_view_shows_the_groups_and_quits_cleanly() {
    if !require_root("full_screen_view_shows_the_groups_and_quits_cleanly") {
        return;
    }
    let mount = FuseMount::new("tui").expect("mount the test filesystem");
    let dir = std::env::temp_dir().join(format!("dstrace-tui-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stty = dir.join("stty");
    let command = format!(
        "stty -a > '{}.before'; '{}' run --comm stat --min-duration 0; echo \"exit=$?\"; stty -a > '{}'",
        stty.display(),
        dstrace_bin().display(),
        stty.display()
    );
    // Wide enough for a whole chain: behind the lookup's owner, to the daemon.
    let tmux = Tmux::start("tui", &command, 360, 50);
    let mountpoint = mount.path().to_str().unwrap().to_owned();
    tmux.wait_for(START_TIMEOUT, "tracing", |s| s.contains("tracing for"));
    // The tasks pile up once tracing is on, so their paths (and the mount) are seen.
    let pileup = Pileup::start(&mount, 2);

    // Other tests may pile tasks up at the same time: this mount's row says 2.
    let ours = |screen: &str| {
        screen.lines().any(|l| l.contains(&mountpoint) && l.split_whitespace().next() == Some("2"))
    };
    let screen = tmux
        .wait_for(START_TIMEOUT, "group of the stuck tasks", |s| ours(s) && s.contains("d_alloc_parallel"));
    assert!(screen.contains("chain: stat["), "the chain of the group: {screen}");
    assert!(screen.contains("FUSE requests unanswered"), "the chain reaches the daemon: {screen}");
    assert!(screen.contains("q quit"), "the keys are listed: {screen}");

    // A filter keeps this mount's group only; Enter expands it to its tasks and stacks.
    let name = mount.path().file_name().unwrap().to_str().unwrap().to_owned();
    tmux.keys(&["/"]);
    tmux.keys(&["-l", &name]);
    tmux.keys(&["Enter"]);
    tmux.wait_for(Duration::from_secs(5), "filtered view", |s| {
        s.contains(&format!("[filter: {name}")) && ours(s)
    });
    tmux.keys(&["Enter"]);
    tmux.wait_for(Duration::from_secs(5), "expanded group", |s| s.contains("stack of 2 task(s):"));
    // `s` changes the order.
    tmux.keys(&["s"]);
    tmux.wait_for(Duration::from_secs(5), "new order", |s| s.contains("sort (oldest wait)"));
    // A filter that matches nothing, then Escape clears it.
    tmux.keys(&["Escape", "/", "n", "o", "m", "a", "t", "c", "h", "Enter"]);
    tmux.wait_for(Duration::from_secs(5), "empty filter result", |s| {
        s.contains("No group matches the filter")
    });
    tmux.keys(&["Escape"]);
    tmux.wait_for(Duration::from_secs(5), "group again", ours);

    tmux.keys(&["q"]);
    let screen = tmux.wait_for(Duration::from_secs(10), "exit", |s| s.contains("exit="));
    drop(pileup);
    assert!(screen.contains("exit=0"), "{screen}");
    // The summary may be longer than the pane (other tests' pile-ups are in it
    // too): its start is in the pane's history.
    let history = tmux.history();
    assert!(
        history.contains("== Summary") && history.contains("Still in D:"),
        "the summary stays: {history}"
    );
    // The terminal settings are those from before the run (raw mode undone).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !stty.exists() && std::time::Instant::now() < deadline {
        sleep(Duration::from_millis(50));
    }
    let before = std::fs::read_to_string(stty.with_extension("before")).unwrap();
    let after = std::fs::read_to_string(&stty).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(before, after, "stty -a differs after the run");
    assert!(after.contains(" icanon") && after.contains(" echo "), "{after}");
}

/// `--json`: each interval lists the tasks in D with ages that grow, and a groups
/// record with the mount; when the daemon answers, the waits end as `wait` records.
#[test]
fn json_lines_show_growing_ages_then_completed_waits() {
    if !require_root("json_lines_show_growing_ages_then_completed_waits") {
        return;
    }
    let mount = FuseMount::new("jsonlive").expect("mount the test filesystem");
    let mut dstrace =
        Dstrace::spawn(&["run", "--json", "--comm", "stat", "--interval", "1s", "--duration", "60s"]);
    dstrace.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));
    let pileup = Pileup::start(&mount, 2);
    let stuck = pileup.stuck.clone();
    // Three interval records with both tasks in D.
    let intervals_with_both = |lines: &[String]| {
        json_lines(lines)
            .iter()
            .filter(|r| r["type"] == "interval" && r["tasks_in_d"].as_u64().is_some_and(|n| n >= 2))
            .count()
    };
    dstrace.wait_until(Duration::from_secs(15), |lines| intervals_with_both(lines) >= 3);
    drop(pileup); // the daemon answers
    dstrace.wait_until(Duration::from_secs(10), |lines| {
        let records = json_lines(lines);
        stuck.iter().all(|pid| records.iter().any(|r| r["type"] == "wait" && r["tgid"] == *pid))
    });
    let (status, lines) = dstrace.interrupt();
    assert!(status.success());
    let records = json_lines(&lines);

    for pid in &stuck {
        let ages: Vec<f64> = records
            .iter()
            .filter(|r| r["type"] == "ongoing" && r["tgid"] == *pid && r["source"] == "traced")
            .map(|r| r["blocked_ms"].as_f64().unwrap())
            .collect();
        assert!(ages.len() >= 2, "pid {pid} listed as ongoing fewer than twice: {ages:?}");
        assert!(ages.windows(2).all(|w| w[1] > w[0]), "the ages of pid {pid} do not grow: {ages:?}");
        // Its wait behind the lookup (its exec may have waited for a page first).
        let done = records
            .iter()
            .find(|r| r["type"] == "wait" && r["tgid"] == *pid && r["function"] == "d_alloc_parallel")
            .unwrap_or_else(|| panic!("no wait of {pid} in d_alloc_parallel"));
        assert!(
            done["blocked_ms"].as_f64().unwrap() >= ages[ages.len() - 1],
            "the completed wait is shorter than its last age: {done}"
        );
    }
    let mountpoint = mount.path().to_str().unwrap();
    let group = records
        .iter()
        .filter(|r| r["type"] == "interval")
        .flat_map(|r| r["groups"].as_array().unwrap())
        .find(|g| g["mount"]["mountpoint"] == mountpoint && g["tasks_in_d"] == 2)
        .unwrap_or_else(|| panic!("no interval group for {mountpoint}"));
    assert_eq!(group["function"], "d_alloc_parallel", "{group}");
    assert_eq!(group["mount"]["fstype"], "fuse.dstrace-test", "{group}");
    let summary = records.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["version"], 1);
    let done = summary["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["mount"]["mountpoint"] == mountpoint && g["function"] == "d_alloc_parallel")
        .unwrap_or_else(|| panic!("no summary group: {summary}"));
    assert!(done["completed"]["count"].as_u64().unwrap() >= 2, "{done}");
}

/// Piped (or `--plain`): the same groups as periodic tables, with the chain.
#[test]
fn plain_tables_show_the_same_groups() {
    if !require_root("plain_tables_show_the_same_groups") {
        return;
    }
    let mount = FuseMount::new("plain").expect("mount the test filesystem");
    let mut dstrace =
        Dstrace::spawn(&["run", "--plain", "--comm", "stat", "--interval", "1s", "--duration", "60s"]);
    dstrace.wait_for_line(START_TIMEOUT, |line| line.starts_with("TIME "));
    let pileup = Pileup::start(&mount, 2);
    let mountpoint = mount.path().to_str().unwrap().to_owned();
    // Other tests may pile tasks up at the same time: this mount's row says 2.
    let ours = |line: &str| line.contains(&mountpoint) && line.split_whitespace().next() == Some("2");
    dstrace.wait_until(START_TIMEOUT, |lines| lines.iter().filter(|l| ours(l)).count() >= 2);
    drop(pileup);
    let (status, lines) = dstrace.interrupt();
    assert!(status.success());
    let text = lines.join("\n");
    let table = text.split("\n-- ").find(|t| t.lines().any(ours)).unwrap();
    let rows: Vec<&str> = table.lines().collect();
    let mount_row = rows.iter().position(|r| r.contains(&mountpoint)).unwrap_or_else(|| panic!("{table}"));
    let function_row = rows[mount_row..].iter().find(|r| r.contains("d_alloc_parallel")).unwrap();
    let in_d: Vec<&str> = function_row.split_whitespace().collect();
    assert_eq!(in_d[0], "2", "two tasks in D in the group: {function_row}");
    assert!(table.contains("chain: stat["), "{table}");
    assert!(text.contains("== Summary"), "{text}");
}

/// The JSON schema's fields, as the README documents them, in a snapshot task.
#[test]
fn snapshot_json_has_the_documented_fields() {
    if !require_root("snapshot_json_has_the_documented_fields") {
        return;
    }
    let mount = FuseMount::new("schema").expect("mount the test filesystem");
    let pileup = Pileup::writers(&mount, 1);
    sleep(Duration::from_millis(300));
    let out = std::process::Command::new(dstrace_bin()).args(["snapshot", "--json"]).output().unwrap();
    let snapshot: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snapshot["version"], 1);
    let task = snapshot["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tgid"] == pileup.stuck[0])
        .unwrap_or_else(|| panic!("{snapshot:#}"));
    for field in
        ["tid", "tgid", "comm", "state", "blocked_ms", "function", "stack", "mount", "file", "lock", "chain"]
    {
        assert!(task.get(field).is_some(), "no {field:?} in {task:#}");
    }
    for field in ["mountpoint", "fstype", "source", "dev"] {
        assert!(task["mount"][field].is_string(), "no mount.{field} in {task:#}");
    }
    for field in ["path", "inode"] {
        assert!(!task["file"][field].is_null(), "no file.{field} in {task:#}");
    }
    assert!(task["stack"].as_array().is_some_and(|s| !s.is_empty()), "{task}");
    drop(pileup);
}
