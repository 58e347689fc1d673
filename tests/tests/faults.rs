//! dstrace under faults: signals at random moments, a second dstrace beside the
//! first, and the capabilities it keeps once attached. Each test fails if the
//! protection it checks is removed.
//!
//! The waits here are deadlines for "answers in bounded time", generous on
//! purpose (a loaded CI machine): they are not timings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::Read as _,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use dstrace_tests::{
    children_of, dstrace_bin, fuse::FuseMount, json_lines, require_root, start_recording,
    thread_capabilities, tmux::Tmux, BpfWatch, Children, Dstrace, Pileup, Rng, Scratch,
};
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A signal is answered within this (a bound, not a timing).
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// Waits for a child to end within [`EXIT_DEADLINE`] of a signal.
fn wait_bounded(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    dstrace_tests::wait_bounded(child, EXIT_DEADLINE, what)
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "SIGKILL",
    }
}

/// SIGINT, SIGTERM and SIGKILL at random moments of `record` and `run --output`
/// (starting, loading, tracing, writing an interval), a few rounds each:
/// afterwards no program, link or map it held is left in the kernel; SIGINT and
/// SIGTERM end it cleanly (or, before its handlers exist, as the signal does),
/// and its recording reads in full; after SIGKILL it reads up to the last
/// complete interval (a frame cut in the middle is a warning, never a failure).
#[test]
fn signals_at_random_moments_leave_nothing_behind() {
    if !require_root("signals_at_random_moments_leave_nothing_behind") {
        return;
    }
    let mut rng = Rng::seeded("signals_at_random_moments_leave_nothing_behind");
    let dir = Scratch::new("faults-signals");
    // D waits to record: fsync on a disk-backed file, all along.
    let data = std::path::Path::new("/var/tmp").join(format!("dstrace-faults-{}", std::process::id()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, data) = (stop.clone(), data.clone());
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&data).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::io::Write::write_all(&mut file, &[0x5a; 4096]).unwrap();
                file.sync_all().unwrap();
                sleep(Duration::from_millis(30));
            }
        })
    };

    for round in 0..6 {
        let signal = [libc::SIGINT, libc::SIGTERM, libc::SIGKILL][round % 3];
        let rec = dir.path(format!("{round}.rec"));
        let rec_arg = rec.to_str().unwrap();
        let args: Vec<&str> = if round < 3 {
            vec!["record", "-o", rec_arg, "--interval", "200ms", "--min-duration", "0"]
        } else {
            vec!["run", "--plain", "--interval", "200ms", "--min-duration", "0", "--output", rec_arg]
        };
        let mut child = Command::new(dstrace_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let watch = BpfWatch::start(child.id());
        // From the first instants to well after tracing began (loading takes
        // about a second here).
        let delay = Duration::from_millis(rng.below(3_000));
        sleep(delay);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let what = format!("round {round}: {} after {delay:?} ({})", signal_name(signal), args[0]);
        let status = wait_bounded(&mut child, &what);
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        eprintln!("{what}: {status}; stderr:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");

        let held = watch.finish();
        BpfWatch::assert_all_freed(&held, &what);
        use std::os::unix::process::ExitStatusExt as _;
        if signal != libc::SIGKILL {
            assert!(
                status.success() || status.signal() == Some(signal),
                "{what}: ended with {status}, not cleanly"
            );
        }

        if !rec.exists() {
            continue; // killed before the file was made
        }
        let bytes = std::fs::read(&rec).unwrap();
        let out = Command::new(dstrace_bin()).args(["report", rec_arg, "--format", "json"]).output().unwrap();
        let report_err = String::from_utf8_lossy(&out.stderr);
        if bytes.len() < dstrace::sinks::recording::HEADER_LEN {
            // Killed between creating the file and writing its header: nothing recorded.
            assert_eq!(out.status.code(), Some(1), "{what}: {report_err}");
            continue;
        }
        assert!(out.status.success(), "{what}: report failed: {report_err}");
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        let recording = dstrace::sinks::recording::read(&bytes).unwrap();
        assert!(recording.damage.iter().all(|d| d.at_end), "{what}: {:?}", recording.damage);
        if status.success() {
            // Ended by its own hand: every frame whole, the last interval written.
            assert!(recording.damage.is_empty(), "{what}: {:?}", recording.damage);
            assert_eq!(json["damage"], serde_json::json!([]), "{what}");
            assert!(!recording.intervals.is_empty(), "{what}: no interval written at the end");
        } else {
            for damage in &recording.damage {
                assert!(report_err.contains("torn frame"), "{what}: {damage:?} not warned: {report_err}");
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let _ = std::fs::remove_file(&data);
}

/// The full-screen view, signalled (SIGINT, SIGTERM) at random moments, from its
/// start to well into tracing: the terminal settings afterwards are those from
/// before, and nothing it loaded stays in the kernel.
///
/// SIGKILL is not tried here: no process can undo anything after it, so a
/// program killed so leaves its terminal to the shell (an interactive shell
/// restores its own settings after a job killed by a signal).
#[test]
fn the_terminal_is_restored_after_signals() {
    if !require_root("the_terminal_is_restored_after_signals") {
        return;
    }
    let mut rng = Rng::seeded("the_terminal_is_restored_after_signals");
    let dir = Scratch::new("faults-tty");
    for (round, signal) in [libc::SIGINT, libc::SIGTERM].into_iter().enumerate() {
        let stty = dir.path(format!("stty-{round}"));
        let command = format!(
            "stty -a > '{stty}.before'; '{bin}' run --min-duration 0; echo \"exit=$?\"; stty -a > '{stty}'",
            stty = stty.display(),
            bin = dstrace_bin().display(),
        );
        let tmux = Tmux::start(&format!("signal{round}"), &command, 160, 40);
        let deadline = Instant::now() + START_TIMEOUT;
        // The pane's shell runs `stty` first: the child wanted is dstrace itself.
        let pid = loop {
            let children = children_of(tmux.pane_pid());
            if let Some(&pid) = children.iter().find(|&&pid| is_dstrace(pid)) {
                break pid;
            }
            assert!(Instant::now() < deadline, "dstrace did not start in the pane");
            sleep(Duration::from_millis(10));
        };
        let watch = BpfWatch::start(pid);
        let delay = Duration::from_millis(rng.below(3_000));
        sleep(delay);
        // SAFETY: kill(2) on a process this test started.
        unsafe { libc::kill(pid as libc::pid_t, signal) };
        let what = format!("{} after {delay:?}", signal_name(signal));
        let screen =
            tmux.wait_for(EXIT_DEADLINE, &format!("the end of dstrace ({what})"), |s| s.contains("exit="));
        assert!(screen.contains("exit=0") || screen.contains("exit=130") || screen.contains("exit=143"));
        BpfWatch::assert_all_freed(&watch.finish(), &what);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stty.exists() && Instant::now() < deadline {
            sleep(Duration::from_millis(50));
        }
        let before = std::fs::read_to_string(stty.with_extension("before")).unwrap();
        let after = std::fs::read_to_string(&stty).unwrap();
        assert_eq!(before, after, "{what}: stty -a differs after the run; screen:\n{screen}");
    }
}

/// A second dstrace while one runs: two live runs and a recorder trace the same
/// D waits side by side (each loads its own programs); a second recorder on the
/// file the first writes is refused in one line, before anything is loaded.
#[test]
fn a_second_dstrace_works_beside_the_first() {
    if !require_root("a_second_dstrace_works_beside_the_first") {
        return;
    }
    let dir = Scratch::new("faults-second");
    let rec = dir.path("shared.rec");
    let rec_arg = rec.to_str().unwrap();
    let mount = FuseMount::new("second").expect("mount the test filesystem");
    let mut first = Dstrace::spawn(&["run", "--json", "--comm", "stat", "--min-duration", "0"]);
    first.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));
    // Killed on drop if the test fails.
    let mut recorder = Children::default();
    recorder.0.push(start_recording(&rec, &["--interval", "500ms", "--min-duration", "0"]));
    let mut second = Dstrace::spawn(&["run", "--json", "--comm", "stat", "--min-duration", "0"]);
    second.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));

    let out =
        Command::new(dstrace_bin()).args(["record", "-o", rec_arg, "--duration", "5s"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("being written by another dstrace"), "{stderr}");

    let pileup = Pileup::start(&mount, 2);
    let stuck = pileup.stuck.clone();
    sleep(Duration::from_millis(1200));
    drop(pileup);
    for (name, run) in [("first", first), ("second", second)] {
        let (status, lines) = run.interrupt();
        assert!(status.success(), "the {name} run: {status}");
        let records = json_lines(&lines);
        for pid in &stuck {
            assert!(
                records.iter().any(|r| (r["type"] == "wait" || r["type"] == "ongoing") && r["tgid"] == *pid),
                "the {name} run did not see stuck pid {pid}"
            );
        }
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(recorder.0[0].id() as libc::pid_t, libc::SIGINT) };
    assert!(wait_bounded(&mut recorder.0[0], "the recorder").success());
    let out = Command::new(dstrace_bin()).args(["report", rec_arg, "--format", "json"]).output().unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    for pid in &stuck {
        assert!(
            json["by_process"].as_array().unwrap().iter().any(|g| g["tgid"] == *pid),
            "the recorder did not record stuck pid {pid}: {json}"
        );
    }
}

/// Once attached, `run` keeps only the capabilities its later reads need
/// (`dstrace::kernel::privileges`): every thread's effective, permitted and bounding sets
/// are CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE and CAP_SYS_ADMIN, nothing is
/// inheritable or ambient, and `no_new_privs` is set. And it still works: a D
/// wait that begins after the drop is attributed in full (syscall, file, mount,
/// the lock, its holder and what the holder waits in, the chain to the daemon).
#[test]
fn capabilities_are_dropped_after_attach_and_waits_stay_attributed() {
    if !require_root("capabilities_are_dropped_after_attach_and_waits_stay_attributed") {
        return;
    }
    const KEPT: u64 = (1 << 2) | (1 << 19) | (1 << 21); // DAC_READ_SEARCH, SYS_PTRACE, SYS_ADMIN
    let ours =
        dstrace::kernel::preflight::parse_cap_eff(&std::fs::read_to_string("/proc/self/status").unwrap())
            .expect("our CapEff");
    let expected = format!("{:016x}", KEPT & ours);
    let mount = FuseMount::new("caps").expect("mount the test filesystem");
    let mut dstrace = Dstrace::spawn(&["run", "--json", "--comm", "sh", "--min-duration", "0"]);
    dstrace.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));
    let threads = thread_capabilities(dstrace.pid());
    assert!(!threads.is_empty());
    for status in &threads {
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                status[set],
                expected,
                "{set} of a dstrace thread: {:?} instead of {:?}",
                dstrace::kernel::privileges::names(u64::from_str_radix(&status[set], 16).unwrap()),
                dstrace::kernel::privileges::names(KEPT & ours)
            );
        }
        assert_eq!(status["CapInh"], "0000000000000000");
        assert_eq!(status["CapAmb"], "0000000000000000");
        assert_eq!(status["NoNewPrivs"], "1");
    }

    let pileup = Pileup::writers(&mount, 2);
    sleep(Duration::from_millis(1200));
    let (owner, stuck) = (pileup.owner, pileup.stuck.clone());
    let (status, lines) = dstrace.interrupt();
    drop(pileup);
    assert!(status.success());
    let summary = json_lines(&lines).pop().unwrap();
    let file = mount.path().join(dstrace_tests::fuse::FILE_NAME);
    let ongoing = summary["ongoing"].as_array().unwrap();
    let waits: Vec<&Value> = ongoing
        .iter()
        .filter(|w| stuck.contains(&w["tgid"].as_u64().unwrap_or(0).try_into().unwrap()))
        .collect();
    assert_eq!(waits.len(), stuck.len(), "the writers in D: {summary}");
    for wait in waits {
        assert_eq!(wait["source"], "traced", "{wait}");
        assert_eq!(wait["syscall"], "write", "{wait}");
        assert_eq!(wait["file"]["path"], file.to_str().unwrap(), "{wait}");
        assert_eq!(wait["mount"]["mountpoint"], mount.path().to_str().unwrap(), "{wait}");
        assert!(wait["stack"].as_array().is_some_and(|s| !s.is_empty()), "{wait}");
        let lock = &wait["lock"];
        assert_eq!(lock["holder"]["tid"], owner, "{wait}");
        assert!(lock["holder"]["function"].is_string(), "the holder's function from /proc: {wait}");
        let chain = wait["chain"].as_array().unwrap();
        assert!(
            chain.iter().any(|link| link["link"] == "fuse_daemon" && link["tgid"] == std::process::id()),
            "the chain reaches the FUSE daemon (/proc/PID/fd of every process): {wait}"
        );
    }
}

/// Whether a process runs the dstrace binary (its command name).
fn is_dstrace(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "dstrace")
}

/// SIGHUP, what a process gets when its terminal goes (an ssh session dropped in
/// the middle of the incident), ends `record` and `run` as SIGTERM does: exit 0,
/// the recording's last interval with the task still in D written, the summary
/// printed. Under `nohup` (SIGHUP ignored when dstrace starts) it stays ignored
/// and `run` goes on. Fails if SIGHUP kills them (the default action) or if they
/// catch it under `nohup`.
#[test]
fn a_hangup_ends_record_and_run_with_what_they_owe() {
    use std::os::unix::process::CommandExt as _;
    if !require_root("a_hangup_ends_record_and_run_with_what_they_owe") {
        return;
    }
    let dir = Scratch::new("hangup");
    let mount = FuseMount::new("hangup").expect("mount the test filesystem");
    let pileup = Pileup::start(&mount, 1);
    let stuck = pileup.stuck[0];
    let hang_up = |pid: u32| {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    };

    // record: the last interval is written, the task in D in it.
    let rec = dir.path("hangup.rec");
    let mut recorder = start_recording(&rec, &["--interval", "1s"]);
    hang_up(recorder.id());
    let status = wait_bounded(&mut recorder, "record after SIGHUP");
    assert!(status.success(), "record after SIGHUP: {status:?}");
    let report = Command::new(dstrace_bin())
        .args(["report", rec.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    let compact = serde_json::to_string(&report).unwrap();
    assert!(
        compact.contains(&format!("\"tgid\":{stuck}")),
        "the task in D is not in the recording: {report}"
    );

    // run: the summary, with the task still in D.
    let mut run = Dstrace::spawn(&["run", "--plain", "--interval", "1s"]);
    run.wait_for_line(START_TIMEOUT, |line| line.starts_with("TIME "));
    hang_up(run.pid());
    let (status, lines) = run.finish();
    assert!(status.success(), "run after SIGHUP: {status:?}");
    assert!(lines.iter().any(|line| line == "== Summary"), "no summary after SIGHUP:\n{}", lines.join("\n"));

    // Under nohup: SIGHUP stays ignored; SIGINT still ends it with its summary.
    let mut cmd = Command::new(dstrace_bin());
    cmd.args(["run", "--plain", "--interval", "1s"]);
    // SAFETY: signal(2) in the child between fork and exec, async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        })
    };
    let mut run = Dstrace::spawn_command(cmd);
    run.wait_for_line(START_TIMEOUT, |line| line.starts_with("TIME "));
    hang_up(run.pid());
    sleep(Duration::from_secs(1));
    // SAFETY: kill(2) with signal 0 only asks whether our child still exists.
    let alive = unsafe { libc::kill(run.pid() as libc::pid_t, 0) } == 0;
    assert!(alive, "run under nohup ended on SIGHUP");
    let (status, lines) = run.interrupt();
    assert!(status.success(), "{status:?}");
    assert!(lines.iter().any(|line| line == "== Summary"), "{}", lines.join("\n"));
    drop(pileup);
}
