//! The command line as a user meets it: help, bad flags, missing privileges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{os::unix::process::CommandExt as _, process::Command};

use dstrace_tests::{dstrace_bin, is_root};

fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("dstrace runs");
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_teaches_the_commands() {
    let (code, stdout, _) = output(Command::new(dstrace_bin()).arg("--help"));
    assert_eq!(code, 0);
    assert!(stdout.contains("uninterruptible sleep"), "{stdout}");
    assert!(stdout.contains("run"), "{stdout}");

    let (code, stdout, _) = output(Command::new(dstrace_bin()).args(["run", "--help"]));
    assert_eq!(code, 0);
    for option in ["--min-duration", "--duration", "--include-idle", "--json", "--stacks", "Examples:"] {
        assert!(stdout.contains(option), "`run --help` lacks {option}:\n{stdout}");
    }
}

#[test]
fn bad_flag_is_a_usage_error() {
    let (code, stdout, stderr) = output(Command::new(dstrace_bin()).args(["run", "--bogus"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.starts_with("error: unexpected argument '--bogus'"), "{stderr}");

    let (code, _, stderr) = output(Command::new(dstrace_bin()).args(["run", "--min-duration", "soon"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--min-duration") && stderr.contains("examples: 500us"), "{stderr}");
}

#[test]
fn no_command_shows_usage() {
    let (code, _, stderr) = output(&mut Command::new(dstrace_bin()));
    assert_eq!(code, 2);
    assert!(stderr.contains("Usage: dstrace"), "{stderr}");
}

/// Without privileges `run` names what is missing on one line and exits non-zero,
/// after showing the tasks in D it can see in /proc (if any).
#[test]
fn run_without_privileges_says_what_is_missing() {
    let mut cmd = Command::new(dstrace_bin());
    cmd.args(["run", "--duration", "1s"]);
    if is_root() {
        // Drop to nobody: setuid away from root clears every capability.
        cmd.uid(65534).gid(65534);
    }
    let (code, stdout, stderr) = output(&mut cmd);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.is_empty() || stdout.starts_with("Already in D when tracing started"), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("dstrace: error: permission denied"), "{stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON") && stderr.contains("sudo"),
        "{stderr}"
    );
}

/// A bad filter value is one line naming the flag, not a panic or a trace.
#[test]
fn bad_cgroup_is_one_line() {
    if !dstrace_tests::require_root("bad_cgroup_is_one_line") {
        return;
    }
    let (code, stdout, stderr) =
        output(Command::new(dstrace_bin()).args(["run", "--cgroup", "no/such/cgroup", "--duration", "1s"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("dstrace: error: --cgroup no/such/cgroup:"), "{stderr}");
}

/// What this kernel lacks is skipped and said, never a failure: here, no NFS client
/// (where the sunrpc tracepoints exist, RPCs are traced and nothing is skipped for
/// them; `cargo xtask vm` proves that on kernels with NFS).
#[test]
fn missing_kernel_features_are_reported_as_skipped() {
    if !dstrace_tests::require_root("missing_kernel_features_are_reported_as_skipped") {
        return;
    }
    let has_sunrpc = ["/sys/kernel/tracing/events/sunrpc", "/sys/kernel/debug/tracing/events/sunrpc"]
        .iter()
        .any(|dir| std::path::Path::new(dir).is_dir());
    let (code, stdout, stderr) =
        output(Command::new(dstrace_bin()).args(["run", "--json", "--duration", "1s"]));
    assert_eq!(code, 0, "{stderr}");
    // Tasks already in D (other tests may make some) come first, then the start.
    let start: serde_json::Value = stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|record| record["type"] == "start")
        .expect("a start record");
    let skipped = start["skipped"].as_array().unwrap();
    let nfs = skipped.iter().filter_map(|s| s.as_str()).find(|s| s.starts_with("NFS and sunrpc"));
    if has_sunrpc {
        assert_eq!(nfs, None, "the sunrpc tracepoints exist here, yet: {skipped:?}");
        return;
    }
    let nfs = nfs.unwrap_or_else(|| panic!("NFS not reported: {skipped:?}"));
    assert!(nfs.contains("no sunrpc tracepoints") && nfs.contains("start dstrace after mounting"), "{nfs}");
    let (_, _, stderr) = output(Command::new(dstrace_bin()).args(["run", "--duration", "1s"]));
    assert!(stderr.contains("dstrace: not recorded on this kernel: NFS and sunrpc"), "{stderr}");
}

/// `snapshot` needs no BPF and no root: as nobody it still answers, saying what it
/// could not see.
#[test]
fn snapshot_works_without_privileges() {
    let mut cmd = Command::new(dstrace_bin());
    cmd.args(["snapshot", "--json"]);
    if is_root() {
        cmd.uid(65534).gid(65534);
    }
    let (code, stdout, stderr) = output(&mut cmd);
    assert_eq!(code, 0, "{stderr}");
    let snapshot: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(snapshot["type"], "snapshot");
    assert!(snapshot["tasks"].is_array());
    let cannot_see = snapshot["cannot_see"].to_string();
    assert!(cannot_see.contains("/proc/PID/stack needs root"), "{cannot_see}");
    assert!(cannot_see.contains("dstrace run"), "{cannot_see}");
}

#[test]
fn record_and_report_teach_themselves() {
    for (command, options) in [
        ("record", &["--output", "--interval", "--min-duration", "--max-size", "--rotate", "Examples:"][..]),
        ("report", &["--format", "--weight", "--group-by", "--since", "--until", "--mount", "Examples:"][..]),
    ] {
        let (code, stdout, _) = output(Command::new(dstrace_bin()).args([command, "--help"]));
        assert_eq!(code, 0);
        for option in options {
            assert!(stdout.contains(option), "`{command} --help` lacks {option}:\n{stdout}");
        }
    }
    let (code, stdout, _) = output(Command::new(dstrace_bin()).args(["run", "--help"]));
    assert_eq!(code, 0);
    assert!(stdout.contains("--output"), "{stdout}");
}

#[test]
fn report_of_a_missing_file_is_one_line() {
    let (code, stdout, stderr) =
        output(Command::new(dstrace_bin()).args(["report", "/nonexistent/dstrace.rec"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("dstrace: error: cannot open /nonexistent/dstrace.rec"), "{stderr}");

    let (code, _, stderr) = output(Command::new(dstrace_bin()).args(["report", "x", "--format", "png"]));
    assert_eq!(code, 2, "{stderr}");
}
