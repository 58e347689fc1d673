//! Hostile input: process names and paths made of terminal escape sequences,
//! control characters, newlines, `;`, spaces and invalid UTF-8, through every
//! view and format; and recordings damaged at random. Each test fails if the
//! escaping (or the damage handling) it checks is removed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _, process::Command, thread::sleep, time::Duration};

use dstrace_tests::{
    dstrace_bin, fuse::FuseMount, hostile_pileup, json_lines, require_root, start_recording, tmux::Tmux,
    Children, Dstrace, Rng, Scratch,
};
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A mount point's last part: a window-title escape (which a terminal obeys
/// unless it is escaped), `;` (the folded format's separator), a space, a newline.
const HOSTILE_MOUNT: &str = "ev;il \n\x1b]2;PWNED\x07";
/// A command name (the program's file name, executed through a symbolic link):
/// the same title escape, `;`, a space, a newline and a byte that is not UTF-8.
const HOSTILE_COMM: &[u8] = b"\x1b]2;PWNED\x07; \n\xff";
/// The name looked up under the mount: a clear-screen sequence, invalid UTF-8.
const HOSTILE_NAME: &[u8] = b"\x1b[2J;x y\n\xfe";

/// The command name as dstrace reads it (`comm`, invalid UTF-8 replaced).
fn comm_text() -> String {
    String::from_utf8_lossy(HOSTILE_COMM).into_owned()
}

/// Asserts that text meant for a terminal carries no control character but the
/// line ends, and shows the hostile sequence escaped.
fn assert_terminal_safe(what: &str, text: &str) {
    for line in text.lines() {
        assert!(!line.chars().any(char::is_control), "{what}: a control character in {line:?}");
    }
    assert!(text.contains(r"\x1b]2;PWNED\x07"), "{what}: the hostile name is not shown escaped:\n{text}");
}

/// Hostile names reach every view intact and harmless: the full-screen view
/// (tmux: the window title stays, the sequence is shown escaped), plain text
/// (no control character), JSON (parses; names round-trip, invalid UTF-8
/// replaced), `snapshot` in text and JSON, and a recording's folded stacks
/// (one frame per name, no control character) and pprof labels.
#[test]
fn hostile_names_are_escaped_in_every_view() {
    if !require_root("hostile_names_are_escaped_in_every_view") {
        return;
    }
    let dir = Scratch::new("hostile-names");
    let mount = FuseMount::new(HOSTILE_MOUNT).expect("mount the test filesystem");
    let mount_point = mount.path().to_str().unwrap().to_owned();
    let rec = dir.path("hostile.rec");
    let rec_arg = rec.to_str().unwrap();
    let tmux = Tmux::start(
        "hostile",
        &format!("'{}' run --min-duration 0; sleep 60", dstrace_bin().display()),
        200,
        50,
    );
    tmux.wait_for(START_TIMEOUT, "tracing", |s| s.contains("tracing for"));
    let title = tmux.title();
    let mut json = Dstrace::spawn(&["run", "--json", "--min-duration", "0", "--interval", "1s"]);
    json.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));
    let mut plain =
        Dstrace::spawn(&["run", "--plain", "--stacks", "--min-duration", "0", "--interval", "1s"]);
    plain.wait_for_line(START_TIMEOUT, |line| line.starts_with("TIME "));
    // Killed on drop if the test fails.
    let mut recorder = Children::default();
    recorder.0.push(start_recording(&rec, &["--interval", "1s", "--min-duration", "0"]));

    let mut pileup =
        hostile_pileup(&mount, &dir, OsStr::from_bytes(HOSTILE_COMM), OsStr::from_bytes(HOSTILE_NAME), 2);
    let stuck = pileup.stuck.clone();
    let screen = tmux.wait_for(START_TIMEOUT, "the hostile group", |s| s.contains(r"PWNED\x07"));
    let snapshot_text = Command::new(dstrace_bin()).args(["snapshot", "--stacks"]).output().unwrap();
    let snapshot_json = Command::new(dstrace_bin()).args(["snapshot", "--json"]).output().unwrap();
    sleep(Duration::from_millis(1500));
    mount.release();
    pileup.children.wait_all(Duration::from_secs(10));
    sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(recorder.0[0].id() as libc::pid_t, libc::SIGINT) };
    assert!(recorder.0[0].wait().unwrap().success());

    // The full-screen view: shown escaped, the title untouched.
    assert_eq!(tmux.title(), title, "an escape sequence set the terminal's title; screen:\n{screen}");
    assert!(screen.contains(r"\x1b]2;PWNED\x07"), "{screen}");
    drop(tmux);

    // Plain text.
    let (status, lines) = plain.interrupt();
    assert!(status.success());
    assert_terminal_safe("run --plain", &lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains(r"ev;il \x0a\x1b]2;PWNED\x07")), "the mount, escaped");

    // JSON: every line parses; the names come back as they are (lossy UTF-8).
    let (status, lines) = json.interrupt();
    assert!(status.success());
    let records = json_lines(&lines);
    let expected_file =
        mount.path().join(String::from_utf8_lossy(HOSTILE_NAME).as_ref()).to_str().unwrap().to_owned();
    for pid in &stuck {
        // Its wait behind the lookup (its exec may have waited for a page first).
        let wait = records
            .iter()
            .find(|r| r["type"] == "wait" && r["tgid"] == *pid && r["function"] == "d_alloc_parallel")
            .unwrap_or_else(|| panic!("no wait of {pid} in d_alloc_parallel"));
        assert_eq!(wait["comm"], comm_text().as_str(), "{wait}");
        assert_eq!(wait["mount"]["mountpoint"], mount_point.as_str(), "{wait}");
        assert_eq!(wait["file"]["path"], expected_file.as_str(), "{wait}");
    }

    // snapshot, text and JSON.
    assert!(snapshot_text.status.success());
    assert_terminal_safe("snapshot", &String::from_utf8(snapshot_text.stdout).unwrap());
    let snapshot: Value = serde_json::from_slice(&snapshot_json.stdout).unwrap();
    let tasks = snapshot["tasks"].as_array().unwrap();
    for pid in &stuck {
        let task = tasks.iter().find(|t| t["tgid"] == *pid).unwrap_or_else(|| panic!("{snapshot}"));
        assert_eq!(task["comm"], comm_text().as_str(), "{task}");
    }

    // The recording: folded stacks, a frame per name, nothing unescaped.
    let folded = Command::new(dstrace_bin()).args(["report", rec_arg, "--group-by", "mount,comm"]).output();
    let folded = String::from_utf8(folded.unwrap().stdout).unwrap();
    let escaped_mount = format!("mount:{}", mount_point.replace('\n', r"\x0a").replace('\x1b', r"\x1b"));
    let escaped_mount = escaped_mount.replace('\x07', r"\x07").replace(';', r"\x3b");
    let ours = folded
        .lines()
        .find(|line| line.starts_with(&escaped_mount))
        .unwrap_or_else(|| panic!("no line starts with {escaped_mount:?}:\n{folded}"));
    let (stack, weight) = ours.rsplit_once(' ').unwrap();
    assert!(weight.parse::<u64>().is_ok(), "{ours}");
    let frames: Vec<&str> = stack.split(';').collect();
    assert_eq!(frames[1], r"comm:\x1b]2\x3bPWNED\x07\x3b \x0a\u{fffd}".replace(r"\u{fffd}", "\u{fffd}"));
    for line in folded.lines() {
        assert!(!line.chars().any(char::is_control), "a control character in {line:?}");
    }
    // pprof: no label or name carries a control character.
    let pb = dir.path("hostile.pb.gz");
    let out = Command::new(dstrace_bin())
        .args(["report", rec_arg, "--format", "pprof", "-o", pb.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let profile = dstrace::sinks::pprof::decode(&std::fs::read(&pb).unwrap()).unwrap();
    assert!(profile.string_table.iter().any(|s| s.contains(r"\x1b]2;PWNED\x07")), "the comm label");
    for text in &profile.string_table {
        assert!(!text.chars().any(char::is_control), "a control character in the profile: {text:?}");
    }
}

/// Whole recordings damaged at random (bits flipped, bytes replaced, inserted,
/// cut) are read by `report` in every format without a panic: exit 0 with valid
/// output and the damage on standard error, or exit 1 with one line.
#[test]
fn report_survives_random_damage_to_whole_files() {
    let mut rng = Rng::seeded("report_survives_random_damage_to_whole_files");
    let dir = Scratch::new("hostile-damage");
    let whole = dir.path("whole.rec");
    let options =
        dstrace::sinks::recording::FileOptions { path: whole.clone(), max_size: 1 << 30, rotate: 0 };
    let mut writer =
        dstrace::sinks::recording::Writer::open(options, dstrace::sinks::recording::Session::default())
            .unwrap();
    for second in 0..6u64 {
        let mut totals = dstrace::model::aggregate::Totals::default();
        totals.record(1_000_000 * (second + 1));
        let row = dstrace::sinks::recording::RowData {
            pid: 100 + second as u32,
            comm: comm_text(),
            stack: ["__schedule", "d_alloc_parallel", "path_openat"].map(String::from).into_iter().collect(),
            mount: Some(format!("/mnt/{HOSTILE_MOUNT}")),
            lock: Some("i_rwsem".into()),
            totals,
        };
        let data = dstrace::sinks::recording::IntervalData {
            start: dstrace::sinks::recording::from_unix_ns(second * 1_000_000_000),
            end: dstrace::sinks::recording::from_unix_ns((second + 1) * 1_000_000_000),
            rows: vec![row],
            waits: Vec::new(),
            counters: vec![("ring_buffer_full".into(), second)],
            in_d: Vec::new(),
        };
        writer.write_interval(&data).unwrap();
    }
    drop(writer);
    let bytes = std::fs::read(&whole).unwrap();
    let damaged = dir.path("damaged.rec");
    for round in 0..40 {
        let mut bad = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            if bad.is_empty() {
                break; // cut at its first byte: nothing left to damage
            }
            let at = rng.below(bad.len() as u64) as usize;
            match rng.below(4) {
                0 => bad[at] ^= 1 << rng.below(8),
                1 => bad[at] = rng.next_u64() as u8,
                2 => bad.truncate(at),
                _ => {
                    let junk: Vec<u8> = (0..rng.below(32)).map(|_| rng.next_u64() as u8).collect();
                    bad.splice(at..at, junk);
                }
            }
        }
        std::fs::write(&damaged, &bad).unwrap();
        let path = damaged.to_str().unwrap();
        let pb = dir.path("damaged.pb.gz");
        for format in ["folded", "json", "pprof"] {
            let mut args = vec!["report", path, "--format", format];
            if format == "pprof" {
                args.extend(["-o", pb.to_str().unwrap()]);
            }
            let out = Command::new(dstrace_bin()).args(&args).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let what = format!("round {round}, {format}");
            assert!(!stderr.contains("panicked"), "{what}: {stderr}");
            match out.status.code() {
                Some(0) => match format {
                    "json" => {
                        serde_json::from_slice::<Value>(&out.stdout)
                            .unwrap_or_else(|err| panic!("{what}: not JSON ({err})"));
                    }
                    "pprof" => {
                        dstrace::sinks::pprof::decode(&std::fs::read(&pb).unwrap()).unwrap();
                    }
                    _ => {
                        let text = String::from_utf8(out.stdout).unwrap();
                        assert!(text.lines().all(|l| !l.chars().any(char::is_control)), "{what}: {text}");
                    }
                },
                Some(1) => {
                    let errors = dstrace_tests::without_kernel_losses(&stderr);
                    assert_eq!(errors.lines().count(), 1, "{what}: {stderr}");
                }
                other => panic!("{what}: exit {other:?}: {stderr}"),
            }
            for line in stderr.lines() {
                assert!(line.starts_with("dstrace: "), "{what}: {line}");
            }
        }
    }
}

/// The advice's commands, pasted as printed into a real shell, act on the mount
/// they name, whatever its mount point holds: a command substitution, a space, a
/// quote, a backslash, a newline, a backtick, a byte that is not UTF-8. And a
/// mount point that is not UTF-8 spoils the attribution of no other mount: each
/// pile-up is on its own mount, in text and JSON. Fails if the advice's commands
/// are escaped once more for the terminal (`'a\\b'` names another path), or if a
/// mount point's bytes are read as lossy text (`\xff` becomes U+FFFD).
#[test]
fn pasted_advice_acts_on_hostile_mount_points() {
    if !require_root("pasted_advice_acts_on_hostile_mount_points") {
        return;
    }
    let dir = Scratch::new("hostile-advice");
    let marker = dir.path("pwned");
    let names: Vec<Vec<u8>> = vec![
        format!("nfs$(touch {})", marker.display()).replace('/', "_").into_bytes(),
        format!("x;touch {} #", marker.display()).replace('/', "_").into_bytes(),
        b"with space".to_vec(),
        b"it's".to_vec(),
        b"back\\slash".to_vec(),
        b"new\nline".to_vec(),
        b"tick`s`".to_vec(),
        b"not\xffutf8".to_vec(),
        b"\x1b]2;PWNED\x07".to_vec(),
    ];
    let mounts: Vec<FuseMount> = names
        .iter()
        .map(|name| FuseMount::at(dir.path(OsStr::from_bytes(name)), "dstrace-test").expect("mount"))
        .collect();
    let pileups: Vec<_> = mounts.iter().map(|mount| dstrace_tests::Pileup::start(mount, 2)).collect();
    // The advice speaks of waits of a second or more.
    sleep(Duration::from_millis(1500));

    let text = Command::new(dstrace_bin()).arg("snapshot").output().unwrap();
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(!text.lines().any(|line| line.chars().any(char::is_control)), "a control character:\n{text}");
    let json = Command::new(dstrace_bin()).args(["snapshot", "--json"]).output().unwrap();
    let json: Value = serde_json::from_slice(&json.stdout).unwrap();

    // Each pile-up on its own mount (JSON names are lossy UTF-8).
    for (mount, pileup) in mounts.iter().zip(&pileups) {
        let expected = mount.path().to_string_lossy().into_owned();
        for pid in &pileup.stuck {
            let task = json["tasks"].as_array().unwrap().iter().find(|t| t["tgid"] == *pid);
            let task = task.unwrap_or_else(|| panic!("{pid} is not in the snapshot: {json}"));
            assert_eq!(task["mount"]["mountpoint"], expected.as_str(), "{task}");
        }
    }

    // The commands of the text advice, as a person would copy them.
    let commands: Vec<String> = text
        .lines()
        .filter(|line| line.starts_with("  * "))
        .flat_map(|line| line.split('`').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>())
        .filter(|command| command.starts_with("umount -l ") && command.contains("dstrace-hostile-advice"))
        .collect();
    assert_eq!(commands.len(), mounts.len(), "one umount per mount:\n{text}");
    for command in &commands {
        for shell in ["sh", "bash"] {
            let syntax = Command::new(shell).args(["-n", "-c", command]).output().unwrap();
            assert!(syntax.status.success(), "{shell} -n refuses {command:?}");
        }
    }
    let json_advice: Vec<&str> =
        json["advice"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for command in &commands {
        assert!(
            json_advice.iter().any(|line| line.contains(command.as_str())),
            "{command:?} not in {json_advice:?}"
        );
    }
    // Pasted into bash: each detaches its own mount point, and nothing else runs.
    for command in &commands {
        let pasted = Command::new("bash").args(["-c", command]).output().unwrap();
        assert!(pasted.status.success(), "{command:?}: {}", String::from_utf8_lossy(&pasted.stderr));
    }
    let left = dstrace::resolve::mounts::read().unwrap();
    for mount in &mounts {
        assert!(
            !left.iter().any(|m| m.mount_point == mount.path()),
            "{:?} is still mounted after the advice's commands:\n{commands:#?}",
            mount.path()
        );
    }
    assert!(!marker.exists(), "a command in a mount point's name ran");
    drop(pileups);
}

/// A mount point of some 300 bytes (a Kubernetes CSI volume's is over 127):
/// every wait on it is on that mount, traced (its path walk read into 128 bytes)
/// and found already in D (256), and its path, which did not fit, ends in the
/// cut mark instead of passing for a whole path. Fails if a cut path is shown as
/// whole, or if the mount comes from the path string (it lands on `/`).
#[test]
fn a_long_path_keeps_its_mount_and_is_marked_cut() {
    if !require_root("a_long_path_keeps_its_mount_and_is_marked_cut") {
        return;
    }
    let dir = Scratch::new("long-path");
    let mut long = dir.dir().to_path_buf();
    for i in 0..6 {
        long.push(format!("kubernetes.io~csi-volume-pvc-{i}-0123456789abcdef0123456789"));
    }
    assert!(long.as_os_str().len() > 300, "{long:?}");
    let mount = FuseMount::at(long.clone(), "dstrace-test").expect("mount the test filesystem");
    let mut run = Dstrace::spawn(&["run", "--json", "--interval", "1s"]);
    run.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));
    let pileup = dstrace_tests::Pileup::start(&mount, 2);
    let snapshot = Command::new(dstrace_bin()).args(["snapshot", "--json"]).output().unwrap();
    let (status, lines) = run.interrupt();
    assert!(status.success());
    let records = json_lines(&lines);
    let summary = records.iter().find(|r| r["type"] == "summary").expect("a summary");
    let snapshot: Value = serde_json::from_slice(&snapshot.stdout).unwrap();
    let whole = long.join("missing").to_str().unwrap().to_owned();
    let check = |what: &str, task: &Value| {
        assert_eq!(task["mount"]["mountpoint"], long.to_str().unwrap(), "{what}: {task}");
        let path = task["file"]["path"].as_str().unwrap_or_else(|| panic!("{what}: no path: {task}"));
        let cut = path.strip_suffix('\u{2026}').unwrap_or_else(|| panic!("{what}: not marked cut: {path}"));
        assert!(whole.starts_with(cut) && cut.len() < whole.len(), "{what}: {path} is not a part of {whole}");
    };
    for pid in &pileup.stuck {
        let ongoing = summary["ongoing"].as_array().unwrap().iter().find(|t| t["tgid"] == *pid);
        check("run", ongoing.unwrap_or_else(|| panic!("{pid} not still in D: {summary}")));
        let task = snapshot["tasks"].as_array().unwrap().iter().find(|t| t["tgid"] == *pid);
        check("snapshot", task.unwrap_or_else(|| panic!("{pid} not in the snapshot: {snapshot}")));
    }
    drop(pileup);
}
