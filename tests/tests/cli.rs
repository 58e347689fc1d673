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

/// `dstrace completions SHELL`: a script each shell can load; bash parses the
/// bash one (`bash -n`) and it completes the subcommands.
#[test]
fn completions_come_from_the_command_line_definitions() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, stdout, stderr) = output(Command::new(dstrace_bin()).args(["completions", shell]));
        assert_eq!(code, 0, "{shell}: {stderr}");
        for word in ["snapshot", "record", "min-duration"] {
            assert!(stdout.contains(word), "{shell} completions lack {word}:\n{stdout}");
        }
    }
    let script = Command::new(dstrace_bin()).args(["completions", "bash"]).output().unwrap().stdout;
    let path = std::env::temp_dir().join(format!("dstrace-completions-{}.bash", std::process::id()));
    std::fs::write(&path, &script).unwrap();
    let parsed = Command::new("bash").arg("-n").arg(&path).output().expect("bash runs");
    assert!(parsed.status.success(), "{}", String::from_utf8_lossy(&parsed.stderr));
    // Loaded, it completes `dstrace sn` to `snapshot`.
    let complete = format!(
        "source {0}; COMP_WORDS=(dstrace sn); COMP_CWORD=1; COMP_LINE='dstrace sn'; COMP_POINT=10; \
         _dstrace dstrace sn dstrace; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let (code, stdout, stderr) = output(Command::new("bash").arg("-c").arg(&complete));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "snapshot", "{stderr}");
}

/// `dstrace man` is a page `man -l` renders, naming every subcommand; `--dir`
/// writes one page per command.
#[test]
fn the_man_page_renders() {
    let page = Command::new(dstrace_bin()).arg("man").output().unwrap();
    assert!(page.status.success());
    let mut man = Command::new("man")
        .args(["-l", "-"])
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("man runs (package man-db, installed by `cargo xtask setup`)");
    std::io::Write::write_all(&mut man.stdin.take().unwrap(), &page.stdout).unwrap();
    let rendered = man.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    assert!(text.contains("uninterruptible sleep"), "{text}");
    for command in ["dstrace-run(1)", "dstrace-snapshot(1)", "dstrace-record(1)", "dstrace-report(1)"] {
        assert!(text.contains(command), "{command} not in the page:\n{text}");
    }

    let dir = std::env::temp_dir().join(format!("dstrace-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (code, _, stderr) = output(Command::new(dstrace_bin()).args(["man", "--dir"]).arg(&dir));
    assert_eq!(code, 0, "{stderr}");
    let run = std::fs::read_to_string(dir.join("dstrace-run.1")).unwrap();
    assert!(run.contains("min\\-duration"), "{run}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--version` names the commit the binary was built from.
#[test]
fn version_names_the_commit() {
    let (code, stdout, _) = output(Command::new(dstrace_bin()).arg("--version"));
    assert_eq!(code, 0);
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git runs");
    let head = String::from_utf8(head.stdout).unwrap();
    assert!(
        stdout.starts_with("dstrace 0.") && stdout.contains(&format!("(commit {})", head.trim())),
        "{stdout} (HEAD is {head})"
    );
}

/// The flags mean the same everywhere: `-o` is the output of `run` as of
/// `record`, and the daemon's `--include-idle` is a plain flag as `run`'s.
#[test]
fn flags_are_consistent_across_commands() {
    for command in ["run", "record"] {
        let (_, help, _) = output(Command::new(dstrace_bin()).args([command, "--help"]));
        assert!(help.contains("-o, --output <FILE>"), "{command}: {help}");
    }
    for command in ["run", "snapshot", "daemon"] {
        let (_, help, _) = output(Command::new(dstrace_bin()).args([command, "--help"]));
        let line =
            help.lines().find(|line| line.trim_start().starts_with("--include-idle")).unwrap_or_default();
        assert_eq!(line.trim(), "--include-idle", "{command}: {help}");
    }
    // `--include-idle` takes no value.
    let (code, _, stderr) =
        output(Command::new(dstrace_bin()).args(["daemon", "--include-idle=false", "--help"]));
    assert_eq!(code, 2, "{stderr}");
}

/// The glossary of `--help`: each word the output prints and does not say.
#[test]
fn help_explains_the_words_of_the_output() {
    for args in [&["--help"][..], &["run", "--help"]] {
        let (_, help, _) = output(Command::new(dstrace_bin()).args(args));
        for word in ["D+killable", "D+idle", "WOKEN BY", "irq(", "done by", "P99<=", "(gone)", "drops", ">="]
        {
            assert!(help.contains(word), "{args:?} does not explain {word}:\n{help}");
        }
    }
}

/// The examples of `dstrace snapshot --help` run as written (sudo aside: the
/// tests run as root) against a real pile-up, and the fields they ask for are
/// there.
#[test]
fn snapshot_help_examples_run_as_written() {
    if !dstrace_tests::require_root("snapshot_help_examples_run_as_written") {
        return;
    }
    dstrace_tests::require_tool("snapshot_help_examples_run_as_written", "jq");
    let mount = dstrace_tests::fuse::FuseMount::new("helpex").expect("mount the test filesystem");
    let pileup = dstrace_tests::Pileup::start(&mount, 2);
    let (_, help, _) = output(Command::new(dstrace_bin()).args(["snapshot", "--help"]));
    let examples: Vec<&str> = help
        .lines()
        .skip_while(|line| !line.starts_with("Examples:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .map(str::trim)
        .collect();
    assert!(examples.len() >= 2, "{help}");
    let bin = dstrace_bin();
    let bin_dir = bin.parent().unwrap().to_str().unwrap().to_owned();
    for example in examples {
        let line = example.strip_prefix("sudo ").unwrap_or(example);
        let (code, stdout, stderr) = output(
            Command::new("bash")
                .args(["-o", "pipefail", "-c", line])
                .env("PATH", format!("{bin_dir}:{}", std::env::var("PATH").unwrap())),
        );
        assert_eq!(code, 0, "{example}: {stderr}");
        let mine: Vec<&str> =
            stdout.lines().filter(|l| pileup.stuck.iter().any(|pid| l.contains(&pid.to_string()))).collect();
        assert!(!mine.is_empty(), "{example}: our tasks in D not shown:\n{stdout}");
        if line.contains("jq") {
            // Each object jq made names our tasks with every field asked for set.
            let objects: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&stdout)
                .into_iter()
                .collect::<Result<_, _>>()
                .unwrap_or_else(|err| panic!("{example}: {err}: {stdout}"));
            let ours: Vec<&serde_json::Value> = objects
                .iter()
                .filter(|o| pileup.stuck.iter().any(|pid| o["tid"] == serde_json::json!(pid)))
                .collect();
            assert_eq!(ours.len(), pileup.stuck.len(), "{example}: {stdout}");
            for object in ours {
                for (field, value) in object.as_object().unwrap() {
                    assert!(!value.is_null(), "{example}: {field} is null in {object}");
                }
            }
        }
    }
    mount.release();
}
