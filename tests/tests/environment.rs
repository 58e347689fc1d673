//! dstrace in a hostile environment: no root, only CAP_BPF and CAP_PERFMON, no
//! BTF, no tracefs, a tracepoint missing, `kernel.unprivileged_bpf_disabled`,
//! `kernel.bpf_stats_enabled`. Each either works or gives one line that names
//! the cause and the fix, a non-zero exit and no panic; `run` shows the tasks
//! already in D (from /proc) first either way.
//!
//! The kernel is real; what is missing is made missing in a private mount
//! namespace (`unshare -m`): BTF hidden under a tmpfs, tracefs unmounted, a BTF
//! copy in which one tracepoint's type is renamed bound over the kernel's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    process::{Command, Output},
    sync::Mutex,
    thread::sleep,
    time::Duration,
};

use dstrace_tests::{
    dstrace_bin, fuse::FuseMount, json_lines, require_root, thread_capabilities, Dstrace, Pileup, Scratch,
};
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Tests that change a sysctl run one at a time.
static SYSCTLS: Mutex<()> = Mutex::new(());

/// `dstrace ARGS` run as the unprivileged user `nobody`, with these capabilities
/// (`setpriv` names, e.g. `+bpf,+perfmon`) inherited and ambient.
fn as_nobody(caps: Option<&str>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    if let Some(caps) = caps {
        cmd.arg(format!("--inh-caps={caps}")).arg(format!("--ambient-caps={caps}"));
    }
    cmd.arg(dstrace_bin());
    cmd
}

/// `dstrace ARGS` in a private mount namespace, after the shell commands `setup`
/// (which must succeed).
fn in_namespace(setup: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!("{setup} || exit 99; exec \"$0\" \"$@\""))
        .arg(dstrace_bin())
        .args(args);
    cmd
}

/// Asserts a failure of one line on standard error naming `cause` and `fix`,
/// exit 1 (not a panic, nor a signal).
fn assert_one_line_error(what: &str, out: &Output, cause: &str, fix: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{what}: {}\n{stderr}", out.status);
    assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
    assert!(stderr.starts_with("dstrace: error: "), "{what}: {stderr}");
    assert!(stderr.contains(cause) && stderr.contains(fix), "{what}: no {cause:?} or {fix:?} in {stderr}");
    stderr
}

/// Asserts that `run` printed the tasks already in D, `stuck` among them, before
/// its error.
fn assert_first_screen(what: &str, out: &Output, stuck: &[u32]) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("Already in D when tracing started"), "{what}: {stdout}");
    for pid in stuck {
        assert!(stdout.contains(&format!("{pid}/{pid}")), "{what}: stuck pid {pid} not listed:\n{stdout}");
    }
}

/// Asserts that a running `dstrace run --json --comm stat` sees the waits of
/// tasks piled up behind `mount`, then stops it.
fn assert_traces_real_waits(mut dstrace: Dstrace, mount: &FuseMount) {
    let pileup = Pileup::start(mount, 2);
    sleep(Duration::from_millis(800));
    let stuck = pileup.stuck.clone();
    drop(pileup);
    dstrace.wait_until(Duration::from_secs(15), |lines| {
        let records = json_lines(lines);
        stuck.iter().all(|pid| records.iter().any(|r| r["type"] == "wait" && r["tgid"] == *pid))
    });
    let (status, _) = dstrace.interrupt();
    assert!(status.success());
}

/// Without root or capabilities: `run` lists the tasks in D it can see, then
/// says what is missing; `record` says so before it creates anything.
#[test]
fn no_privileges_is_one_line_after_the_first_screen() {
    if !require_root("no_privileges_is_one_line_after_the_first_screen") {
        return;
    }
    let mount = FuseMount::new("env-nobody").expect("mount the test filesystem");
    let pileup = Pileup::writers(&mount, 1);
    let out = as_nobody(None).args(["run", "--plain", "--duration", "2s"]).output().unwrap();
    assert_one_line_error("run as nobody", &out, "permission denied", "CAP_BPF and CAP_PERFMON");
    assert_first_screen("run as nobody", &out, &pileup.stuck);
    drop(pileup);

    let dir = Scratch::new("env-nobody");
    std::fs::set_permissions(dir.dir(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let rec = dir.path("nobody.rec");
    let out = as_nobody(None).args(["record", "-o", rec.to_str().unwrap()]).output().unwrap();
    assert_one_line_error("record as nobody", &out, "permission denied", "sudo");
    assert!(!rec.exists(), "record made a file it cannot fill");
}

/// CAP_BPF and CAP_PERFMON without root (what a service unit can grant): `run`
/// traces real D waits, and once attached it keeps no capability this kernel
/// does not need for the maps it holds (from Linux 5.19: none).
#[test]
fn cap_bpf_and_cap_perfmon_without_root_are_enough() {
    if !require_root("cap_bpf_and_cap_perfmon_without_root_are_enough") {
        return;
    }
    let mount = FuseMount::new("env-caps").expect("mount the test filesystem");
    let mut cmd = as_nobody(Some("+bpf,+perfmon"));
    cmd.args(["run", "--json", "--comm", "stat", "--min-duration", "0"]);
    let mut dstrace = Dstrace::spawn_command(cmd);
    dstrace.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));
    let threads = thread_capabilities(dstrace.pid());
    for status in &threads {
        let eff = u64::from_str_radix(&status["CapEff"], 16).unwrap();
        assert_eq!(eff & !(1 << 39), 0, "kept more than CAP_BPF: {status:?}");
        assert_eq!(status["CapPrm"], status["CapEff"], "{status:?}");
        assert_eq!(status["CapAmb"], "0000000000000000", "{status:?}");
        assert_eq!(status["NoNewPrivs"], "1");
    }
    assert_traces_real_waits(dstrace, &mount);
}

/// The kernel's BTF hidden: one line naming CONFIG_DEBUG_INFO_BTF, after the
/// tasks in D for `run`.
#[test]
fn no_btf_is_one_line_after_the_first_screen() {
    if !require_root("no_btf_is_one_line_after_the_first_screen") {
        return;
    }
    let mount = FuseMount::new("env-btf").expect("mount the test filesystem");
    let pileup = Pileup::writers(&mount, 1);
    let hide = "mount -t tmpfs dstrace-test /sys/kernel/btf";
    let out = in_namespace(hide, &["run", "--plain", "--duration", "2s"]).output().unwrap();
    assert_one_line_error("run without BTF", &out, "no BTF", "CONFIG_DEBUG_INFO_BTF=y");
    assert_first_screen("run without BTF", &out, &pileup.stuck);
    drop(pileup);
    let dir = Scratch::new("env-btf");
    let rec = dir.path("x.rec");
    let out = in_namespace(hide, &["record", "-o", rec.to_str().unwrap()]).output().unwrap();
    assert_one_line_error("record without BTF", &out, "no BTF", "CONFIG_DEBUG_INFO_BTF=y");
}

/// tracefs not mounted (as at boot on many machines): dstrace does not need it;
/// it traces real D waits.
#[test]
fn no_tracefs_still_works() {
    if !require_root("no_tracefs_still_works") {
        return;
    }
    let mount = FuseMount::new("env-no-tracing").expect("mount the test filesystem");
    let unmount = "for t in /sys/kernel/tracing /sys/kernel/debug/tracing /sys/kernel/debug; do \
                   umount -l $t 2>/dev/null; done; ! grep -q ' - tracefs ' /proc/self/mountinfo";
    let mut dstrace = Dstrace::spawn_command(in_namespace(
        unmount,
        &["run", "--json", "--comm", "stat", "--min-duration", "0"],
    ));
    dstrace.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));
    assert_traces_real_waits(dstrace, &mount);
}

/// A copy of the kernel's BTF in which the type of tracepoint `name` is renamed
/// (same length, so every offset stays), as on a kernel without it.
fn btf_without(dir: &Scratch, name: &str) -> std::path::PathBuf {
    let mut btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
    let needle = format!("btf_trace_{name}\0");
    let at = btf
        .windows(needle.len())
        .position(|window| window == needle.as_bytes())
        .unwrap_or_else(|| panic!("the kernel's BTF has no {needle:?}"));
    btf[at + needle.len() - 2] = b'X';
    let path = dir.path(format!("vmlinux-without-{name}"));
    std::fs::write(&path, btf).unwrap();
    path
}

/// A tracepoint this kernel lacks: an optional one (lock contention) is skipped
/// and said, and tracing goes on; a required one (sched_switch) is one line.
#[test]
fn a_missing_tracepoint_is_skipped_or_one_line() {
    if !require_root("a_missing_tracepoint_is_skipped_or_one_line") {
        return;
    }
    let dir = Scratch::new("env-tracepoint");
    let copy = btf_without(&dir, "contention_begin");
    let bind = format!("mount --bind '{}' /sys/kernel/btf/vmlinux", copy.display());
    let out = in_namespace(&bind, &["run", "--json", "--duration", "2s"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    let start: Value =
        json_lines(&String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect::<Vec<_>>())
            .into_iter()
            .find(|r| r["type"] == "start")
            .expect("a start record");
    let skipped = start["skipped"].to_string();
    assert!(skipped.contains("kernel locks: the lock:contention_begin tracepoint"), "{skipped}");

    let copy = btf_without(&dir, "sched_switch");
    let bind = format!("mount --bind '{}' /sys/kernel/btf/vmlinux", copy.display());
    let out = in_namespace(&bind, &["run", "--plain", "--duration", "2s"]).output().unwrap();
    assert_one_line_error("run without sched_switch", &out, "sched_switch", "Linux 5.8");
}

/// A sysctl set for a test and restored on drop.
struct Sysctl {
    name: &'static str,
    was: String,
}

impl Sysctl {
    fn read(name: &'static str) -> String {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}")).unwrap().trim().to_owned()
    }

    fn set(name: &'static str, value: &str) -> Sysctl {
        let was = Sysctl::read(name);
        std::fs::write(format!("/proc/sys/kernel/{name}"), value).unwrap();
        Sysctl { name, was }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(format!("/proc/sys/kernel/{}", self.name), &self.was);
    }
}

/// `kernel.unprivileged_bpf_disabled`, 0 or 2 (1 cannot be undone before a reboot,
/// so it is left alone): either way, without privileges `run` says what is
/// missing in one line.
#[test]
fn unprivileged_bpf_disabled_is_one_line() {
    if !require_root("unprivileged_bpf_disabled_is_one_line") {
        return;
    }
    let _one = SYSCTLS.lock().unwrap_or_else(|p| p.into_inner());
    let now = Sysctl::read("unprivileged_bpf_disabled");
    let values: &[&str] = if now == "1" { &[] } else { &["0", "2"] };
    for value in values {
        let _set = Sysctl::set("unprivileged_bpf_disabled", value);
        let out = as_nobody(None).args(["run", "--plain", "--duration", "1s"]).output().unwrap();
        assert_one_line_error(
            &format!("unprivileged_bpf_disabled={value}"),
            &out,
            "permission denied",
            "CAP_BPF and CAP_PERFMON",
        );
    }
    assert_eq!(Sysctl::read("unprivileged_bpf_disabled"), now);
}

/// `kernel.bpf_stats_enabled` is the administrator's: dstrace leaves it as it was,
/// on or off.
#[test]
fn bpf_stats_enabled_is_left_as_it_was() {
    if !require_root("bpf_stats_enabled_is_left_as_it_was") {
        return;
    }
    let _one = SYSCTLS.lock().unwrap_or_else(|p| p.into_inner());
    let now = Sysctl::read("bpf_stats_enabled");
    for value in ["1", "0"] {
        let _set = Sysctl::set("bpf_stats_enabled", value);
        let out = Command::new(dstrace_bin()).args(["run", "--json", "--duration", "1s"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(Sysctl::read("bpf_stats_enabled"), value, "dstrace changed kernel.bpf_stats_enabled");
    }
    assert_eq!(Sysctl::read("bpf_stats_enabled"), now);
}
