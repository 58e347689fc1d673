//! `dstrace record` and `dstrace report`, end to end: recordings made during real D
//! states, read back in every format, fed to the real consumers (inferno, go tool
//! pprof), and recordings damaged on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Output},
    thread::sleep,
    time::Duration,
};

use dstrace::{
    model::aggregate::Totals,
    resolve::symbols::{is_wait_primitive, Stack},
    sinks::recording::{self, FileOptions, IntervalData, RowData, Session, Writer},
};
use dstrace_tests::{
    dstrace_bin, fuse::FuseMount, hostile_pileup, json_lines, require_root, require_tool, start_recording,
    stop_recording, Children, Dstrace, Scratch, HOSTILE_COMM,
};
use serde_json::Value;

fn dstrace(args: &[&str]) -> Output {
    Command::new(dstrace_bin()).args(args).output().expect("dstrace runs")
}

/// `dstrace report` with these arguments; panics unless it succeeds.
fn report(args: &[&str]) -> Output {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    let out = dstrace(&all);
    assert!(out.status.success(), "dstrace {all:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn report_json(file: &Path, extra: &[&str]) -> Value {
    let mut args = vec![file.to_str().unwrap(), "--format", "json"];
    args.extend_from_slice(extra);
    serde_json::from_slice(&report(&args).stdout).unwrap()
}

/// Sum of the weights of folded lines, checking each line's shape.
fn folded_total(text: &str) -> u64 {
    text.lines()
        .map(|line| {
            assert!(!line.chars().any(char::is_control), "a control character in {line:?}");
            let (stack, weight) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no weight: {line:?}"));
            assert!(!stack.is_empty());
            weight.parse::<u64>().unwrap_or_else(|_| panic!("bad weight in {line:?}"))
        })
        .sum()
}

/// Parses an SVG (flame graphs declare the SVG DTD), panicking unless well-formed.
fn parse_svg(svg: &str) -> roxmltree::Document<'_> {
    let options = roxmltree::ParsingOptions { allow_dtd: true, ..roxmltree::ParsingOptions::default() };
    roxmltree::Document::parse_with_options(svg, options)
        .unwrap_or_else(|err| panic!("not well-formed XML: {err}"))
}

/// A recording made while tasks are stuck behind a dead FUSE server reports the
/// same totals in every format; each consumer accepts its format; hostile names
/// stay inside their frames and labels.
#[test]
fn a_recording_of_real_d_states_reports_the_same_totals_in_every_format() {
    if !require_root("a_recording_of_real_d_states_reports_the_same_totals_in_every_format") {
        return;
    }
    let dir = Scratch::new("round-trip");
    let rec = dir.path("incident.rec");
    let mount = FuseMount::new("record").expect("mount the test filesystem");

    let recorder = start_recording(&rec, &["--interval", "1s", "--min-duration", "100ms"]);
    let mut pileup = hostile_pileup(&mount, &dir, HOSTILE_COMM.as_ref(), "missing".as_ref(), 3);
    let stuck = pileup.stuck.clone();
    sleep(Duration::from_secs(2));
    mount.release();
    pileup.children.wait_all(Duration::from_secs(10));
    sleep(Duration::from_millis(1500));
    stop_recording(recorder);
    assert_eq!(std::fs::metadata(&rec).unwrap().permissions().mode() & 0o777, 0o600);

    let mount_point = mount.path().to_str().unwrap().to_owned();
    // JSON: the groups, the waits recorded one by one, the totals.
    let json = report_json(&rec, &[]);
    assert_eq!(json["damage"], serde_json::json!([]), "{json}");
    // Blocked time in whole microseconds (JSON has milliseconds to the microsecond).
    let us = |ms: &Value| (ms.as_f64().unwrap() * 1000.0).round() as u64;
    let total_us = us(&json["blocked_ms"]);
    let count = json["count"].as_u64().unwrap();
    let groups = json["by_process"].as_array().unwrap();
    let groups_us = groups.iter().map(|g| us(&g["blocked_ms"])).sum::<u64>();
    assert!(
        groups_us <= total_us && total_us <= groups_us + groups.len() as u64,
        "{groups_us} vs {total_us}"
    );
    for pid in &stuck {
        let group = groups
            .iter()
            .find(|g| g["tgid"] == *pid && g["function"] == "d_alloc_parallel")
            .unwrap_or_else(|| panic!("no group for stuck pid {pid}: {json}"));
        assert_eq!(group["comm"], HOSTILE_COMM, "JSON keeps the name as it is, escaped by JSON");
        assert!(group["max_ms"].as_f64().unwrap() >= 1_500.0, "{group}");
        let wait = json["waits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["tgid"] == *pid && w["blocked_ms"].as_f64().unwrap() >= 1_500.0)
            .unwrap_or_else(|| panic!("no wait recorded for {pid}"));
        assert_eq!(wait["mount"]["mountpoint"], mount_point.as_str(), "{wait}");
        assert_eq!(wait["function"], "d_alloc_parallel");
    }
    let by_mount = json["by_mount"].as_array().unwrap();
    assert!(by_mount.iter().any(|m| m["mountpoint"] == mount_point.as_str()), "{by_mount:?}");

    // Folded, by time and by count: the same totals.
    let folded = String::from_utf8(report(&[rec.to_str().unwrap()]).stdout).unwrap();
    let folded_us = folded_total(&folded);
    let lines = folded.lines().count() as u64;
    assert!(
        total_us <= folded_us + lines && folded_us <= total_us + lines,
        "{folded_us} us vs {total_us} us"
    );
    let by_count = String::from_utf8(report(&[rec.to_str().unwrap(), "--weight", "count"]).stdout).unwrap();
    assert_eq!(folded_total(&by_count), count);
    // The command at the root, the blocking function at the leaf: never the
    // scheduler nor a wait primitive (unless a stack has nothing else).
    let escaped_comm = r"comm:dst\x3bat \x0a\x1b[1m";
    for line in folded.lines() {
        let frames: Vec<&str> = line.rsplit_once(' ').unwrap().0.split(';').collect();
        assert!(frames[0].starts_with("comm:"), "the command is not the root: {line}");
        let kernel = &frames[1..];
        if kernel.iter().any(|frame| !is_wait_primitive(frame)) {
            assert!(!is_wait_primitive(kernel[kernel.len() - 1]), "a primitive as the leaf: {line}");
        }
    }
    let stuck_lines: Vec<&str> =
        folded.lines().filter(|line| line.starts_with(&format!("{escaped_comm};"))).collect();
    assert!(!stuck_lines.is_empty(), "no line for the hostile name at the root:\n{folded}");
    assert!(
        stuck_lines.iter().any(|line| line.rsplit_once(' ').unwrap().0.ends_with(";d_alloc_parallel")),
        "the stuck lookups do not end in d_alloc_parallel: {stuck_lines:?}"
    );
    // --no-comm: the kernel stacks alone, the same total.
    let bare = String::from_utf8(report(&[rec.to_str().unwrap(), "--no-comm"]).stdout).unwrap();
    assert!(bare.lines().all(|line| !line.contains("comm:")), "{bare}");
    assert!(folded_total(&bare).abs_diff(folded_us) <= lines, "{bare}");
    // Grouped by mount and comm: the dead mount at the root, the hostile name
    // escaped inside its frame.
    let grouped =
        String::from_utf8(report(&[rec.to_str().unwrap(), "--group-by", "mount,comm"]).stdout).unwrap();
    // Leading frames change no weight, but for rounding to microseconds per line.
    let grouped_us = folded_total(&grouped);
    let grouped_lines = grouped.lines().count() as u64;
    assert!(grouped_us.abs_diff(folded_us) <= grouped_lines, "{grouped_us} us vs {folded_us} us");
    let stuck_line = grouped
        .lines()
        .find(|line| line.starts_with(&format!("mount:{mount_point};{escaped_comm};")))
        .unwrap_or_else(|| panic!("no line for the dead mount and the hostile name:\n{grouped}"));
    assert!(stuck_line.rsplit_once(' ').unwrap().0.ends_with(";d_alloc_parallel"), "{stuck_line}");
    assert_eq!(
        stuck_line.rsplit_once(' ').unwrap().0.split(';').next(),
        Some(&*format!("mount:{mount_point}"))
    );

    // --comm, --pid and --mount select; a time window before the recording is empty.
    let only = report_json(&rec, &["--mount", &mount_point]);
    assert!(only["by_process"].as_array().unwrap().iter().all(|g| g["comm"] == HOSTILE_COMM), "{only}");
    let one = report_json(&rec, &["--pid", &stuck[0].to_string()]);
    assert!(one["by_process"].as_array().unwrap().iter().all(|g| g["tgid"] == stuck[0]));
    let before = dstrace(&["report", rec.to_str().unwrap(), "--until", "2000-01-01T00:00:00Z"]);
    assert_eq!(before.status.code(), Some(1), "a window with nothing in it is an error");
    assert_eq!(us(&report_json(&rec, &["--since", "1h"])["blocked_ms"]), total_us);

    // speedscope: its own format, a sampled profile with its unit, the folded
    // lines' weights: the same total, to the microsecond.
    for (weight, unit, total) in [("time", "microseconds", folded_us), ("count", "none", count)] {
        let path = dir.path(format!("blocked-{weight}.speedscope.json"));
        report(&[
            rec.to_str().unwrap(),
            "--format",
            "speedscope",
            "--weight",
            weight,
            "-o",
            path.to_str().unwrap(),
        ]);
        let file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("speedscope JSON");
        check_speedscope(&file, unit, total);
        let frames = file["shared"]["frames"].as_array().unwrap();
        assert!(frames.iter().any(|f| f["name"] == "d_alloc_parallel"), "no d_alloc_parallel frame");
        assert!(frames.iter().all(|f| f["name"] != "__schedule"), "the scheduler is a frame");
        assert!(frames.iter().any(|f| f["name"] == r"comm:dst;at \x0a\x1b[1m"), "the hostile comm, escaped");
    }

    // pprof: the same blocked time in nanoseconds, the same count.
    let pb = dir.path("blocked.pb.gz");
    report(&[rec.to_str().unwrap(), "--format", "pprof", "-o", pb.to_str().unwrap()]);
    let profile = dstrace::sinks::pprof::decode(&std::fs::read(&pb).unwrap()).unwrap();
    let sum = |i: usize| profile.sample.iter().map(|s| s.value[i] as u64).sum::<u64>();
    assert_eq!((sum(0) / 1000, sum(1)), (total_us, count));

    // SVG: well-formed XML whose root frame holds the same total, with the frames.
    let svg_path = dir.path("blocked.svg");
    report(&[
        rec.to_str().unwrap(),
        "--format",
        "svg",
        "--group-by",
        "mount",
        "-o",
        svg_path.to_str().unwrap(),
    ]);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = parse_svg(&svg);
    let titles: Vec<&str> =
        doc.descendants().filter(|n| n.has_tag_name("title")).filter_map(|n| n.text()).collect();
    let all =
        titles.iter().find(|t| t.starts_with("all (")).unwrap_or_else(|| panic!("no root frame: {titles:?}"));
    let all_us: u64 = all["all (".len()..].split(' ').next().unwrap().replace(',', "").parse().unwrap();
    let by_mount = report(&[rec.to_str().unwrap(), "--group-by", "mount"]).stdout;
    assert_eq!(all_us, folded_total(std::str::from_utf8(&by_mount).unwrap()), "{all}");
    assert!(titles.iter().any(|t| t.starts_with("d_alloc_parallel (")), "no d_alloc_parallel frame");
    assert!(titles.iter().any(|t| t.starts_with(&format!("mount:{mount_point} ("))), "no mount frame");
    assert!(svg.contains("Off-CPU (D state)"));
    assert!(!svg.contains('\x1b'), "an escape sequence reached the SVG");

    // Real consumers.
    if let Some(inferno) = require_tool("report: inferno-flamegraph", "inferno-flamegraph") {
        let folded_path = dir.path("blocked.folded");
        std::fs::write(&folded_path, &grouped).unwrap();
        let out = Command::new(inferno).arg(&folded_path).output().unwrap();
        assert!(out.status.success(), "inferno-flamegraph: {}", String::from_utf8_lossy(&out.stderr));
        let drawn = String::from_utf8(out.stdout).unwrap();
        parse_svg(&drawn);
        assert!(
            drawn.contains("d_alloc_parallel") && drawn.contains(r"dst\x3bat"),
            "inferno drew other frames"
        );
    }
    if let Some(go) = require_tool("report: go tool pprof", "go") {
        let pprof = |args: &[&str]| {
            let out = Command::new(&go)
                .args(["tool", "pprof"])
                .args(args)
                .arg(&pb)
                .env("PPROF_TMPDIR", dir.dir())
                .output()
                .unwrap();
            assert!(out.status.success(), "go tool pprof {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let top = pprof(&["-top", "-cum"]);
        assert!(top.contains("d_alloc_parallel"), "{top}");
        assert!(top.lines().any(|l| l.trim_start().starts_with("Type: blocked")), "{top}");
        // By flat (self) time: the blocking functions, the stuck lookups first;
        // the scheduler is in no stack.
        let top = pprof(&["-top"]);
        let ranked = top_functions(&top);
        assert_eq!(ranked.first().map(|(name, _)| name.as_str()), Some("d_alloc_parallel"), "{top}");
        assert!(!top.contains("__schedule") && !top.contains(" schedule\n"), "{top}");
        for (name, flat) in &ranked {
            assert!(*flat == 0.0 || !is_wait_primitive(name), "{name} has flat time:\n{top}");
        }
        // The command at the root, from its label: a frame of its own, the
        // outermost (a line by itself, where the label line has `comm:` first).
        let rooted = pprof(&["-traces", "-tagroot=comm"]);
        assert!(rooted.lines().any(|line| line.trim() == r"dst;at \x0a\x1b[1m"), "{rooted}");
        // Only the waits on the dead mount: d_alloc_parallel is most of them.
        let focused = pprof(&["-top", "-cum", &format!("-tagfocus=mount={}", mount.path().display())]);
        assert!(focused.contains("d_alloc_parallel"), "{focused}");
        assert!(!focused.contains("jbd2"), "{focused}");
        let tags = pprof(&["-tags"]);
        for label in ["comm:", "mount:", "pid:", &mount_point, r"dst;at \x0a\x1b[1m"] {
            assert!(tags.contains(label), "-tags lacks {label:?}:\n{tags}");
        }
        assert!(!tags.contains('\x1b'), "an escape sequence reached go tool pprof's output");
    }
}

/// The functions of `go tool pprof -top`, in its order, with their flat values
/// (in the unit it shows them in).
fn top_functions(top: &str) -> Vec<(String, f64)> {
    top.lines()
        .skip_while(|line| !line.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flat = fields.first()?;
            let number = flat.trim_end_matches(|c: char| c.is_ascii_alphabetic() || c == 'µ');
            Some((fields[5..].join(" "), number.parse().ok()?))
        })
        .collect()
}

/// Checks a speedscope file against the essentials of its schema
/// (https://www.speedscope.app/file-format-schema.json): the schema named, frames
/// with names, one sampled profile with this unit whose samples index the frames,
/// as many weights as samples, `endValue - startValue` their sum, and `total`.
fn check_speedscope(file: &Value, unit: &str, total: u64) {
    assert_eq!(file["$schema"], "https://www.speedscope.app/file-format-schema.json");
    let frames = file["shared"]["frames"].as_array().expect("shared.frames");
    assert!(!frames.is_empty());
    for frame in frames {
        let name = frame["name"].as_str().unwrap_or_else(|| panic!("a frame without a name: {frame}"));
        assert!(!name.chars().any(char::is_control), "a control character in {name:?}");
    }
    let profiles = file["profiles"].as_array().expect("profiles");
    assert_eq!(profiles.len(), 1);
    let index = file["activeProfileIndex"].as_u64().unwrap_or(0) as usize;
    assert!(index < profiles.len());
    let profile = &profiles[0];
    assert_eq!(profile["type"], "sampled");
    assert_eq!(profile["unit"], unit);
    assert!(profile["name"].is_string());
    let samples = profile["samples"].as_array().expect("samples");
    let weights: Vec<u64> = profile["weights"]
        .as_array()
        .expect("weights")
        .iter()
        .map(|w| w.as_u64().expect("a weight"))
        .collect();
    assert_eq!(samples.len(), weights.len(), "a weight per sample");
    for sample in samples {
        let sample = sample.as_array().expect("a sample is a list of frame indices");
        assert!(!sample.is_empty());
        for i in sample {
            assert!((i.as_u64().expect("an index") as usize) < frames.len(), "{i} is no frame");
        }
    }
    let sum: u64 = weights.iter().sum();
    let (start, end) = (profile["startValue"].as_u64().unwrap(), profile["endValue"].as_u64().unwrap());
    assert_eq!(end - start, sum);
    assert_eq!(sum, total, "speedscope's total is not the folded one");
}

/// The incident as it usually is: a pile-up already standing when recording
/// starts, two more tasks joining it, none of them waking before the recording
/// ends. The stuck tasks are the recording: their blocked time within it is in
/// every format, `--mount` finds them, `--at` names them with their chain, and a
/// selection matching nothing says so and fails.
#[test]
fn a_pileup_standing_through_a_recording_is_the_recording() {
    if !require_root("a_pileup_standing_through_a_recording_is_the_recording") {
        return;
    }
    let dir = Scratch::new("standing");
    let rec = dir.path("standing.rec");
    let mount = FuseMount::new("standing").expect("mount the test filesystem");
    let mut pileup = dstrace_tests::Pileup::start(&mount, 3);
    let before = pileup.stuck.clone();

    let recorder = start_recording(&rec, &["--interval", "1s", "--min-duration", "100ms"]);
    sleep(Duration::from_secs(3));
    let target = mount.path().join("missing");
    let joined: Vec<u32> = (0..2).map(|_| pileup.children.spawn(Command::new("stat").arg(&target))).collect();
    for &pid in &joined {
        dstrace_tests::wait_for_state(pid, 'D', Duration::from_secs(10));
    }
    sleep(Duration::from_secs(3));
    stop_recording(recorder);
    let file = rec.to_str().unwrap();
    let mount_point = mount.path().to_str().unwrap().to_owned();

    // JSON: each stuck task with at least its time in D within the recording.
    let json = report_json(&rec, &[]);
    assert_eq!(json["damage"], serde_json::json!([]), "{json}");
    let groups = json["by_process"].as_array().unwrap();
    let blocked_ms = |pid: u32| {
        groups
            .iter()
            .filter(|g| g["tgid"] == pid && g["function"] == "d_alloc_parallel")
            .map(|g| g["blocked_ms"].as_f64().unwrap())
            .sum::<f64>()
    };
    for &pid in &before {
        assert!(blocked_ms(pid) >= 5_000.0, "pid {pid} in D all along: {} ms: {json}", blocked_ms(pid));
    }
    for &pid in &joined {
        assert!(blocked_ms(pid) >= 2_000.0, "pid {pid} in D from 3 s in: {} ms: {json}", blocked_ms(pid));
    }
    assert!(json["still_in_d"].as_u64().unwrap() >= 5, "{json}");
    let in_d = json["in_d"].as_array().unwrap();
    for pid in before.iter().chain(&joined) {
        let task =
            in_d.iter().find(|w| w["tgid"] == *pid).unwrap_or_else(|| panic!("{pid} not in D: {json}"));
        assert_eq!(task["mount"]["mountpoint"], mount_point.as_str(), "{task}");
        assert_eq!(task["function"], "d_alloc_parallel", "{task}");
        // Behind the lookup's owner, for those that joined while tracing too.
        assert_eq!(task["lock"]["holder"]["tgid"], pileup.owner, "{task}");
    }
    let by_mount = json["by_mount"].as_array().unwrap();
    assert!(by_mount.iter().any(|m| m["mountpoint"] == mount_point.as_str()), "{by_mount:?}");
    // Each counted once, however many interval ends saw it in D.
    assert_eq!(report_json(&rec, &["--mount", &mount_point])["still_in_d"], 5);

    // Folded and pprof: the same stuck time, the widest tower.
    let folded = String::from_utf8(report(&[file, "--mount", &mount_point]).stdout).unwrap();
    let stuck_us: u64 = folded
        .lines()
        .filter(|line| line.contains(";d_alloc_parallel"))
        .map(|line| line.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert!(stuck_us >= (3 * 5_000 + 2 * 2_000) * 1000, "{stuck_us} us:\n{folded}");
    let pb = dir.path("standing.pb.gz");
    report(&[file, "--format", "pprof", "-o", pb.to_str().unwrap()]);
    let profile = dstrace::sinks::pprof::decode(&std::fs::read(&pb).unwrap()).unwrap();
    let total_ns: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    assert!(total_ns as u64 >= (3 * 5_000 + 2 * 2_000) * 1_000_000, "{total_ns} ns");

    // --at: what was in D two seconds before the end, on what, behind whom.
    let at = String::from_utf8(report(&[file, "--at", "2s", "--mount", &mount_point]).stdout).unwrap();
    assert!(at.starts_with("Recorded at "), "{at}");
    assert!(at.lines().nth(1).unwrap().starts_with("5 tasks in D, the oldest for "), "{at}");
    for pid in before.iter().chain(&joined) {
        assert!(at.contains(&pid.to_string()), "{pid} not listed:\n{at}");
    }
    assert!(at.contains(&mount_point), "{at}");
    let at_json: Value =
        serde_json::from_slice(&report(&[file, "--at", "2s", "--format", "json"]).stdout).unwrap();
    assert_eq!(at_json["type"], "in_d");
    assert!(at_json["in_d"].as_array().unwrap().len() >= 5, "{at_json}");

    // A selection that matches nothing: one line on standard error, status 1.
    let none = dstrace(&["report", file, "--mount", "/no/such mount"]);
    assert_eq!(none.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("nothing recorded matches --mount '/no/such mount'"), "{stderr}");
    assert!(none.stdout.is_empty());
    mount.release();
    pileup.children.wait_all(Duration::from_secs(10));
}

/// The mount of a wait is the one it waited on, even when the wait ended because
/// the mount was detached (`umount -l`, dstrace's own advice for a dead server):
/// never the mount below it.
#[test]
fn a_wait_ended_by_a_lazy_unmount_keeps_its_mount() {
    if !require_root("a_wait_ended_by_a_lazy_unmount_keeps_its_mount") {
        return;
    }
    let dir = Scratch::new("lazy");
    let rec = dir.path("lazy.rec");
    let mount = FuseMount::new("lazy").expect("mount the test filesystem");
    let mount_point = mount.path().to_str().unwrap().to_owned();
    let recorder = start_recording(&rec, &["--interval", "1s", "--min-duration", "100ms"]);
    sleep(Duration::from_secs(1));
    let mut pileup = dstrace_tests::Pileup::start(&mount, 3);
    let stuck = pileup.stuck.clone();
    sleep(Duration::from_secs(2));
    let out = Command::new("umount").args(["-l", &mount_point]).output().unwrap();
    assert!(out.status.success(), "umount -l: {}", String::from_utf8_lossy(&out.stderr));
    // Detached, the connection lives on with its waiters: the server going away
    // ends them (as a daemon killed after `umount -l`).
    mount.release();
    pileup.children.wait_all(Duration::from_secs(10));
    sleep(Duration::from_millis(1500));
    stop_recording(recorder);

    let json = report_json(&rec, &[]);
    for pid in &stuck {
        let wait = json["waits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["tgid"] == *pid && w["function"] == "d_alloc_parallel")
            .unwrap_or_else(|| panic!("no wait recorded for {pid}: {json}"));
        assert_eq!(wait["mount"]["mountpoint"], mount_point.as_str(), "{wait}");
    }
    let pids = stuck.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let grouped =
        String::from_utf8(report(&[rec.to_str().unwrap(), "--group-by", "mount", "--pid", &pids]).stdout)
            .unwrap();
    let lines: Vec<&str> = grouped.lines().filter(|line| line.contains(";d_alloc_parallel")).collect();
    assert!(!lines.is_empty(), "{grouped}");
    for line in lines {
        assert!(line.starts_with(&format!("mount:{mount_point};")), "on another mount: {line}");
    }
}

/// `run --output` writes the same recording while printing the live view.
#[test]
fn run_writes_a_recording_beside_the_live_view() {
    if !require_root("run_writes_a_recording_beside_the_live_view") {
        return;
    }
    let dir = Scratch::new("run-output");
    let rec = dir.path("run.rec");
    let mut run = Dstrace::spawn(&[
        "run",
        "--json",
        "--min-duration",
        "0",
        "--interval",
        "1s",
        "--comm",
        "dd",
        "--output",
        rec.to_str().unwrap(),
    ]);
    run.wait_for_line(Duration::from_secs(20), |line| line.contains(r#""type":"start""#));
    let data = dir.path("data");
    let mut writers = Children::default();
    for _ in 0..3 {
        writers.spawn(
            Command::new("dd")
                .args(["if=/dev/zero", "bs=64k", "count=8", "conv=fsync"])
                .arg(format!("of={}", data.display())),
        );
        writers.wait_all(Duration::from_secs(30));
    }
    sleep(Duration::from_millis(1200));
    let (status, lines) = run.interrupt();
    assert!(status.success());
    let records = json_lines(&lines);
    let summary = records.last().unwrap();
    assert_eq!(summary["type"], "summary");
    let shown = records.iter().filter(|r| r["type"] == "wait").count();
    assert!(shown > 0, "no dd wait in D");

    let json = report_json(&rec, &[]);
    assert_eq!(json["waits"].as_array().unwrap().len(), shown, "every wait shown is recorded");
    let summary_count: u64 =
        summary["by_process"].as_array().unwrap().iter().map(|g| g["count"].as_u64().unwrap()).sum();
    let count = json["count"].as_u64().unwrap();
    assert!(count > 0 && count <= summary_count, "recorded {count}, summary {summary_count}");
    assert!(json["by_process"].as_array().unwrap().iter().all(|g| g["comm"] == "dd"));
}

/// An interval of `count` waits of 1 ms by process `pid`.
fn interval(second: u64, pid: u32) -> IntervalData {
    let mut totals = Totals::default();
    totals.record(1_000_000);
    IntervalData {
        start: recording::from_unix_ns(second * 1_000_000_000),
        end: recording::from_unix_ns((second + 1) * 1_000_000_000),
        rows: vec![RowData {
            pid,
            comm: "writer".into(),
            stack: ["__schedule", "io_schedule", "folio_wait_bit_common", "filemap_fdatawait_range"]
                .map(String::from)
                .into_iter()
                .collect::<Stack>(),
            mount: Some("/".into()),
            lock: None,
            totals,
        }],
        waits: Vec::new(),
        counters: Vec::new(),
        in_d: Vec::new(),
    }
}

/// A recording of `n` intervals, pids 1..=n, made by the library's writer.
fn recording_of(path: &Path, n: u32) {
    let options = FileOptions { path: path.to_owned(), max_size: 1 << 30, rotate: 0 };
    let mut writer = Writer::open(options, Session::default()).unwrap();
    for i in 1..=n {
        writer.write_interval(&interval(u64::from(i), i)).unwrap();
    }
}

/// A truncated and a corrupted recording are reported up to the damage, with a
/// one-line warning naming the file, the offset and what was wrong; no panic.
#[test]
fn damaged_recordings_are_reported_up_to_the_damage() {
    let dir = Scratch::new("damage");
    let whole = dir.path("whole.rec");
    recording_of(&whole, 5);
    let bytes = std::fs::read(&whole).unwrap();
    let frames = recording::decode(&bytes).unwrap().records;
    assert_eq!(frames.len(), 6, "a session and five intervals");
    let pids = |json: &Value| -> Vec<u64> {
        let mut pids: Vec<u64> =
            json["by_process"].as_array().unwrap().iter().map(|g| g["tgid"].as_u64().unwrap()).collect();
        pids.sort_unstable();
        pids
    };
    assert_eq!(pids(&report_json(&whole, &[])), [1, 2, 3, 4, 5]);

    // Cut in the middle of the last frame: a crash while writing it.
    let torn = dir.path("torn.rec");
    let last = frames[5].0 as usize;
    std::fs::write(&torn, &bytes[..last + 20]).unwrap();
    let out = report(&[torn.to_str().unwrap(), "--format", "json"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("dstrace: warning: {}: at byte {last}: a torn frame", torn.display())),
        "{stderr}"
    );
    assert!(stderr.contains("last interval"), "{stderr}");
    assert_eq!(pids(&serde_json::from_slice(&out.stdout).unwrap()), [1, 2, 3, 4]);

    // One byte flipped in the third interval's payload: that interval is lost,
    // those after it are read.
    let corrupt = dir.path("corrupt.rec");
    let third = frames[3].0 as usize;
    let mut bad = bytes.clone();
    bad[third + recording::FRAME_HEADER_LEN + 2] ^= 0x20;
    std::fs::write(&corrupt, &bad).unwrap();
    let out = report(&[corrupt.to_str().unwrap(), "--format", "json"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains(&format!("at byte {third}: a frame whose checksum does not match")), "{stderr}");
    assert!(stderr.contains("skipped") && stderr.contains("next intact frame"), "{stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pids(&json), [1, 2, 4, 5]);
    assert_eq!(json["damage"].as_array().unwrap().len(), 1);

    // Garbage where the header should be: one line, exit 1, no panic.
    let garbage = dir.path("garbage.rec");
    std::fs::write(&garbage, b"this is not a recording at all").unwrap();
    let out = dstrace(&["report", garbage.to_str().unwrap()]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not a dstrace recording"), "{stderr}");

    // Every prefix of the file reads without a panic.
    let prefix = dir.path("prefix.rec");
    for len in (0..bytes.len()).step_by(7) {
        std::fs::write(&prefix, &bytes[..len]).unwrap();
        let out = dstrace(&["report", prefix.to_str().unwrap()]);
        assert!(matches!(out.status.code(), Some(0 | 1)), "prefix {len}: {out:?}");
    }
}

/// `record -o` never follows a symbolic link nor overwrites a file that is not a
/// recording; it says so on one line before loading anything.
#[test]
fn record_refuses_links_and_other_files() {
    let dir = Scratch::new("refuse");
    let precious = dir.path("precious");
    std::fs::write(&precious, b"keep me").unwrap();
    let link = dir.path("link.rec");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    for (path, why) in [(&link, "symbolic link"), (&precious, "not a dstrace recording")] {
        let out = dstrace(&["record", "-o", path.to_str().unwrap(), "--duration", "1s"]);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        if !dstrace_tests::is_root() {
            // Without root, the privilege check comes first.
            continue;
        }
        assert!(stderr.contains(why), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
}

/// SIGKILL at any moment loses at most the interval in progress: the recording
/// reads up to the last complete interval, damage (if any) only at its end.
#[test]
fn a_killed_recorder_leaves_a_readable_recording() {
    if !require_root("a_killed_recorder_leaves_a_readable_recording") {
        return;
    }
    let dir = Scratch::new("killed");
    let rec = dir.path("killed.rec");
    let mut recorder = start_recording(&rec, &["--interval", "500ms", "--min-duration", "0"]);
    // D waits to record: fsync on a disk-backed filesystem.
    let data = Path::new(if Path::new("/var/tmp").is_dir() { "/var/tmp" } else { "/tmp" })
        .join(format!("dstrace-report-killed-{}", std::process::id()));
    let mut file = std::fs::File::create(&data).unwrap();
    // Intervals are written every 500 ms: kill it once some are in the file.
    let mut intervals = 0;
    for _ in 0..100 {
        std::io::Write::write_all(&mut file, &[0x5a; 4096]).unwrap();
        file.sync_all().unwrap();
        sleep(Duration::from_millis(100));
        intervals = recording::read(&std::fs::read(&rec).unwrap()).unwrap().intervals.len();
        if intervals >= 2 {
            break;
        }
    }
    assert!(intervals >= 2, "{intervals} intervals written in 10 s");
    sleep(Duration::from_millis(250));
    recorder.kill().unwrap();
    recorder.wait().unwrap();
    drop(file);
    let _ = std::fs::remove_file(&data);
    let recording = recording::read(&std::fs::read(&rec).unwrap()).unwrap();
    assert!(recording.intervals.len() >= intervals);
    assert!(recording.damage.iter().all(|d| d.at_end), "{:?}", recording.damage);
    let out = report(&[rec.to_str().unwrap(), "--format", "json"]);
    assert!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["count"].as_u64().unwrap() > 0);
}

/// Process churn cannot push a long wait out of a recording: 12,000 short-lived
/// processes, each waiting in D for its `fsync`, make more aggregation keys than
/// the kernel's map holds (10,240); `record` moves the entries of ended
/// processes out of it as it fills, so three waits of 1.5 s made after the churn
/// are in the report, and nothing was dropped. Fails without the pruning (the
/// full map drops every new key's waits: `aggregation_map_full`).
#[test]
fn process_churn_pushes_no_wait_out_of_a_recording() {
    if !require_root("process_churn_pushes_no_wait_out_of_a_recording") {
        return;
    }
    let dir = Scratch::new("churn");
    let fs = Command::new("stat").args(["-f", "-c", "%T", dir.dir().to_str().unwrap()]).output().unwrap();
    let fs = String::from_utf8_lossy(&fs.stdout).trim().to_owned();
    assert_ne!(
        fs, "tmpfs",
        "the churn needs a directory where fsync waits in D; the scratch directory is on tmpfs"
    );
    let rec = dir.path("churn.rec");
    let recorder = start_recording(&rec, &["--interval", "1s"]);
    const PROCESSES: usize = 12_000;
    let churn: Vec<_> = (0..2)
        .map(|lane| {
            let file = dir.path(format!("churn-{lane}"));
            std::thread::spawn(move || {
                for _ in 0..PROCESSES / 2 {
                    let status = Command::new("dd")
                        .args(["if=/dev/zero", "bs=4k", "count=1", "conv=fsync", "status=none"])
                        .arg(format!("of={}", file.display()))
                        .status()
                        .unwrap();
                    assert!(status.success());
                }
            })
        })
        .collect();
    for lane in churn {
        lane.join().unwrap();
    }
    let mount = FuseMount::new("churn").expect("mount the test filesystem");
    let mut late = Vec::new();
    for _ in 0..3 {
        let mut pileup = dstrace_tests::Pileup::start(&mount, 1);
        late.push(pileup.stuck[0]);
        sleep(Duration::from_millis(1500));
        mount.release();
        pileup.children.wait_all(Duration::from_secs(10));
    }
    sleep(Duration::from_millis(1500));
    stop_recording(recorder);

    let json = report_json(&rec, &[]);
    let groups = json["by_process"].as_array().unwrap();
    assert!(
        groups.len() > 10_240,
        "the churn made only {} process rows: not more than the map holds",
        groups.len()
    );
    assert_eq!(json["drops"], serde_json::json!({}), "lost: {}", json["drops"]);
    for pid in &late {
        let waited: f64 = groups
            .iter()
            .filter(|g| g["tgid"] == *pid && g["function"] == "d_alloc_parallel")
            .map(|g| g["blocked_ms"].as_f64().unwrap())
            .sum();
        assert!(waited >= 1400.0, "pid {pid} waited 1.5 s after the churn; the report has {waited} ms");
    }
}
