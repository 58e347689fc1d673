//! dstrace where the machine is in trouble: a dead mount with a hundred tasks
//! stuck behind it, a storm of D waits beyond what the kernel side holds, ten
//! thousand threads. Each test fails if the protection it checks is removed.
//!
//! Deadlines here bound "answers in bounded time" and are generous on purpose (a
//! loaded CI machine): they are not timings. The memory bound is a size.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::Path,
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use dstrace_tests::{
    dstrace_bin, fuse::FuseMount, json_lines, require_root, require_tool, Dstrace, Pileup, Scratch,
};
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Each command must finish within this beside a dead mount (a bound, not a timing).
const COMMAND_DEADLINE: Duration = Duration::from_secs(90);

/// The tests here are heavy (hundreds of tasks, ten thousand threads): one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// A tmpfs mounted for a test, detached on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status =
            Command::new("mount").args(["-t", "tmpfs", "dstrace-test", dir.to_str().unwrap()]).status();
        assert!(status.unwrap().success(), "mount -t tmpfs {}", dir.display());
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs a command to its end within [`COMMAND_DEADLINE`] (killed and failed past it).
fn run_bounded(cmd: &mut Command, what: &str) -> std::process::Output {
    dstrace_tests::output_bounded(cmd, COMMAND_DEADLINE, &format!("{what} beside a dead mount"))
}

/// Files of another task dstrace must never read: some take the task's mmap
/// lock, which a task in D may hold (../../dstrace/src/procfs.rs).
const FORBIDDEN_PROC_FILES: &[&str] = &[
    "cmdline",
    "environ",
    "maps",
    "smaps",
    "smaps_rollup",
    "numa_maps",
    "mem",
    "pagemap",
    "auxv",
    "io",
    "status",
];

/// System calls whose arguments are paths, with how many of their leading
/// string arguments are (the others are buffers filled by the kernel).
fn path_arguments(syscall: &str) -> usize {
    match syscall {
        "rename" | "renameat" | "renameat2" | "link" | "linkat" | "symlink" | "symlinkat" => 2,
        "open" | "openat" | "openat2" | "creat" | "stat" | "lstat" | "newfstatat" | "fstatat64" | "statx"
        | "access" | "faccessat" | "faccessat2" | "readlink" | "readlinkat" | "chdir" | "chroot"
        | "mkdir" | "mkdirat" | "rmdir" | "unlink" | "unlinkat" | "chmod" | "fchmodat" | "fchmodat2"
        | "chown" | "lchown" | "fchownat" | "truncate" | "utime" | "utimes" | "utimensat" | "futimesat"
        | "execve" | "execveat" | "statfs" | "getxattr" | "lgetxattr" | "setxattr" | "lsetxattr"
        | "listxattr" | "llistxattr" | "removexattr" | "lremovexattr" | "inotify_add_watch" | "mknod"
        | "mknodat" | "name_to_handle_at" | "fanotify_mark" | "mount" | "umount2" | "swapon" | "acct" => 1,
        _ => 0,
    }
}

/// The quoted strings of an strace line, unescaped only as far as `\"` and `\\`.
fn quoted(line: &str) -> Vec<String> {
    let mut strings = Vec::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut text = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => text.extend(chars.next()),
                '"' => break,
                c => text.push(c),
            }
        }
        strings.push(text);
    }
    strings
}

/// The paths an strace line (`strace -f -y`) names as arguments: the leading
/// string arguments of a path system call, and the files behind descriptors
/// (`3</path>`).
fn paths_named(line: &str) -> Vec<String> {
    // `PID syscall(args) = result`
    let call = line.split_once(' ').map_or(line, |(_, rest)| rest).trim_start();
    let name = call.split('(').next().unwrap_or_default();
    let mut paths: Vec<String> = quoted(call).into_iter().take(path_arguments(name)).collect();
    let mut rest = call;
    while let Some(open) = rest.find('<') {
        let before = &rest[..open];
        let after = &rest[open + 1..];
        let Some(close) = after.find('>') else { break };
        if before.ends_with(|c: char| c.is_ascii_digit()) || before.ends_with("AT_FDCWD") {
            paths.push(after[..close].to_owned());
        }
        rest = &after[close + 1..];
    }
    paths
}

/// What an strace of dstrace shows it doing that it must never do: a path under
/// `mount`, or a file of another task that can hang (see
/// [`FORBIDDEN_PROC_FILES`]); its own are fine (the threads that made the calls).
fn offences(trace: &str, mount: &Path) -> Vec<String> {
    let mount = mount.to_str().unwrap();
    let own: std::collections::HashSet<&str> =
        trace.lines().filter_map(|line| line.split(' ').next()).collect();
    trace
        .lines()
        .filter(|line| {
            paths_named(line).iter().any(|path| {
                let under_mount = path == mount || path.starts_with(&format!("{mount}/"));
                let parts: Vec<&str> = path.split('/').collect();
                // /proc/PID/FILE or /proc/PID/task/TID/FILE, PID a number (not self).
                let forbidden = parts.len() >= 4
                    && parts[1] == "proc"
                    && parts[2].bytes().all(|b| b.is_ascii_digit())
                    && !own.contains(parts[2])
                    && FORBIDDEN_PROC_FILES.contains(parts.last().unwrap());
                under_mount || forbidden
            })
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn strace_lines_are_read_as_intended() {
    let mount = Path::new("/tmp/dead");
    let fine = [
        r#"123 readlink("/proc/77/fd/3", "/tmp/dead/file", 4096) = 14"#,
        r#"123 read(3</proc/self/mountinfo>, "1 2 0:5 / /tmp/dead rw", 1024) = 20"#,
        r#"123 openat(AT_FDCWD</work>, "/proc/77/task/77/stack", O_RDONLY|O_CLOEXEC) = 4</proc/77/task/77/stack>"#,
        r#"123 openat(AT_FDCWD</work>, "/proc/self/status", O_RDONLY|O_CLOEXEC) = 4</proc/123/status>"#,
        r#"123 openat(AT_FDCWD</work>, "/proc/self/maps", O_RDONLY|O_CLOEXEC) = 3</proc/123/maps>"#,
        r#"123 statx(AT_FDCWD</work>, "/tmp/deadline", 0, STATX_ALL, {}) = 0"#,
    ];
    for line in fine {
        assert!(offences(line, mount).is_empty(), "{line}");
    }
    let bad = [
        r#"123 statx(AT_FDCWD</work>, "/tmp/dead", AT_STATX_SYNC_AS_STAT, STATX_ALL, {}) = 0"#,
        r#"123 openat(AT_FDCWD</work>, "/tmp/dead/x", O_RDONLY) = -1 ENOENT"#,
        r#"123 fstat(5</tmp/dead/file>, {st_mode=S_IFREG}) = 0"#,
        r#"123 openat(AT_FDCWD</work>, "/proc/77/cmdline", O_RDONLY|O_CLOEXEC) = 4</proc/77/cmdline>"#,
        r#"123 openat(AT_FDCWD</work>, "/proc/77/task/78/maps", O_RDONLY) = 4"#,
        r#"124 openat(AT_FDCWD</work>, "/proc/123/environ", O_RDONLY) = 4"#,
        r#"123 newfstatat(AT_FDCWD</tmp/dead>, "x", {}, 0) = 0"#,
    ];
    for line in bad {
        assert_eq!(offences(line, mount).len(), 1, "{line}");
    }
}

/// A hundred tasks stuck behind a dead FUSE server, writers stuck on a second
/// dead mount, and a tmpfs mounted after them (the dead mounts are in the middle
/// of the mount table): `snapshot`, `run`, `record` and `report` each finish in
/// bounded time, and under strace none of them names a path under a dead mount,
/// uses a descriptor of a file there, or opens cmdline, environ, maps (...) of any
/// task. A second dstrace watches them all the while: none of them waits in D on
/// FUSE or the dcache.
#[test]
fn no_command_touches_a_dead_mount_or_the_memory_of_a_task() {
    if !require_root("no_command_touches_a_dead_mount_or_the_memory_of_a_task") {
        return;
    }
    let Some(strace) = require_tool("no_command_touches_a_dead_mount", "strace") else { return };
    let _heavy = heavy();
    let dir = Scratch::new("load-strace");
    let lookups_mount = FuseMount::new("strace-lookups").expect("mount the test filesystem");
    let writers_mount = FuseMount::new("strace-writers").expect("mount the test filesystem");
    let _after = Tmpfs::mount(&dir.path("after"));
    let writers = Pileup::writers(&writers_mount, 2);
    let lookups = Pileup::start(&lookups_mount, 100);

    let mut watcher = Dstrace::spawn(&["run", "--json", "--min-duration", "0", "--comm", "dstrace"]);
    watcher.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));

    let rec = dir.path("beside.rec");
    let run_rec = dir.path("run.rec");
    let (rec, run_rec, pb) = (rec.to_str().unwrap(), run_rec.to_str().unwrap(), dir.path("x.pb.gz"));
    let commands: Vec<Vec<&str>> = vec![
        vec!["snapshot"],
        vec!["snapshot", "--json", "--stacks"],
        vec!["record", "-o", rec, "--duration", "3s", "--interval", "1s", "--min-duration", "0"],
        vec!["run", "--json", "--duration", "3s", "--interval", "1s", "--output", run_rec],
        vec!["run", "--plain", "--stacks", "--duration", "2s", "--interval", "1s"],
        vec!["report", rec],
        vec!["report", rec, "--format", "json", "--group-by", "mount"],
        vec!["report", run_rec, "--format", "pprof", "-o", pb.to_str().unwrap()],
    ];
    let mut observed = Vec::new();
    for (i, args) in commands.iter().enumerate() {
        let trace = dir.path(format!("trace.{i}"));
        let what = format!("dstrace {}", args.join(" "));
        let mut cmd = Command::new(&strace);
        // The calls that name a path, and those that use a directory or file by
        // descriptor without reading it (a read needs an open, which names the
        // path); only these stop the process (`--seccomp-bpf`), the others run
        // at full speed.
        cmd.args(["-f", "-qq", "-y", "-s", "256", "--seccomp-bpf", "-o"])
            .arg(&trace)
            .args(["-e", "trace=%file,getdents64,fchdir,fstatfs,fstat,fgetxattr,flistxattr"])
            .arg(dstrace_bin())
            .args(args);
        let started = Instant::now();
        let out = run_bounded(&mut cmd, &what);
        eprintln!("{what}: {:?} under strace", started.elapsed());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: {}\n{stderr}", out.status);
        let trace = std::fs::read_to_string(&trace).unwrap();
        observed.extend(trace.lines().filter_map(|line| line.split(' ').next()?.parse::<u32>().ok()));
        for mount in [lookups_mount.path(), writers_mount.path()] {
            let bad = offences(&trace, mount);
            assert!(bad.is_empty(), "{what} touched what it must not:\n{}", bad.join("\n"));
        }
        if args[0] == "snapshot" && args.len() > 1 {
            let snapshot: Value = serde_json::from_slice(&out.stdout).unwrap();
            let listed = snapshot["tasks"].as_array().unwrap();
            for pid in lookups.stuck.iter().chain(&writers.stuck) {
                assert!(listed.iter().any(|t| t["tgid"] == *pid), "{what}: stuck pid {pid} not listed");
            }
        }
    }
    observed.sort_unstable();
    observed.dedup();

    let (_, lines) = watcher.interrupt();
    drop(lookups);
    drop(writers);
    let records = json_lines(&lines);
    let dead = [lookups_mount.path().to_str().unwrap(), writers_mount.path().to_str().unwrap()];
    for wait in records.iter().filter(|r| r["type"] == "wait" || r["type"] == "ongoing") {
        let pid = wait["tgid"].as_u64().unwrap_or(0) as u32;
        if observed.binary_search(&pid).is_err() {
            continue;
        }
        let stack = wait["stack"].to_string();
        let mount = wait["mount"]["mountpoint"].as_str().unwrap_or_default();
        assert!(
            !stack.contains("fuse") && wait["function"] != "d_alloc_parallel" && !dead.contains(&mount),
            "a dstrace process waited in D on a dead mount: {wait}"
        );
    }
}

/// The VmHWM (peak resident memory) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap();
    line.trim().trim_end_matches("kB").trim().parse().unwrap()
}

/// A D-wait storm beyond what the kernel side holds: room for 64 tasks in D and
/// a one-page ring buffer; 150 tasks pile up in D at once, and dstrace is stopped
/// (SIGSTOP: starved of CPU) while they all end, so the ring buffer overflows.
/// The drops are counted and shown (JSON counters, the warning on standard error);
/// dstrace's memory stays within a generous bound; and once the storm is over it
/// sees a new D wait (the kernel side's maps emptied as the waits ended).
#[test]
fn a_storm_beyond_the_maps_is_counted_and_survived() {
    if !require_root("a_storm_beyond_the_maps_is_counted_and_survived") {
        return;
    }
    let _heavy = heavy();
    let dir = Scratch::new("load-storm");
    let stderr = std::fs::File::create(dir.path("stderr")).unwrap();
    let mount = FuseMount::new("storm").expect("mount the test filesystem");
    let args = [
        "run",
        "--json",
        "--comm",
        "stat",
        "--min-duration",
        "0",
        "--interval",
        "1s",
        "--max-tasks",
        "64",
        "--ring-buffer-kib",
        "4",
    ];
    let mut dstrace = Dstrace::spawn_with_stderr(&args, stderr);
    dstrace.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));

    let pileup = Pileup::start(&mount, 150);
    // Stopped, it drains nothing: every wait that ends now goes to the ring buffer.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(dstrace.pid() as libc::pid_t, libc::SIGSTOP) };
    drop(pileup);
    // SAFETY: as above.
    unsafe { libc::kill(dstrace.pid() as libc::pid_t, libc::SIGCONT) };

    // Recovery: a new pile-up is seen, in D, as the kernel side tracks it.
    let again = Pileup::start(&mount, 2);
    let stuck = again.stuck.clone();
    dstrace.wait_until(Duration::from_secs(30), |lines| {
        let records = json_lines(lines);
        stuck.iter().all(|pid| {
            records.iter().any(|r| r["type"] == "ongoing" && r["tgid"] == *pid && r["source"] == "traced")
        })
    });
    drop(again);
    let peak_kib = peak_rss_kib(dstrace.pid());
    let (status, lines) = dstrace.interrupt();
    assert!(status.success());
    let summary = json_lines(&lines).pop().unwrap();
    let counters = &summary["counters"];
    let inflight_full = counters["inflight_map_full"].as_u64().unwrap();
    let ring_full = counters["ring_buffer_full"].as_u64().unwrap();
    eprintln!(
        "storm: inflight_map_full={inflight_full} ring_buffer_full={ring_full} peak RSS {peak_kib} KiB"
    );
    assert!(inflight_full >= 150 - 64, "150 tasks in D, room for 64: {counters}");
    assert!(ring_full > 0, "64 waits ended while nothing drained a one-page ring buffer: {counters}");
    let stderr = std::fs::read_to_string(dir.path("stderr")).unwrap();
    assert!(stderr.contains("the kernel side lost data"), "no warning of the drops: {stderr}");
    // A size, not a timing: the maps are the kernel's; userspace keeps groups
    // and labels bounded.
    assert!(peak_kib < 256 * 1024, "dstrace peaked at {peak_kib} KiB in the storm");
}

/// Ten thousand threads present (sleeping) and tasks stuck behind a dead mount:
/// `snapshot` and `run` list the tasks in D, and none of the sleepers.
#[test]
fn ten_thousand_threads_do_not_confuse_the_lists() {
    if !require_root("ten_thousand_threads_do_not_confuse_the_lists") {
        return;
    }
    let _heavy = heavy();
    const THREADS: usize = 10_000;
    let pid_max: usize = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    assert!(pid_max > 2 * THREADS, "kernel.pid_max {pid_max} leaves no room for {THREADS} threads");
    let release = std::sync::Arc::new(std::sync::Barrier::new(THREADS + 1));
    let sleepers: Vec<_> = (0..THREADS)
        .map(|_| {
            let release = release.clone();
            std::thread::Builder::new().stack_size(64 << 10).spawn(move || release.wait()).unwrap()
        })
        .collect();
    let us = std::process::id();
    let threads_now = std::fs::read_dir(format!("/proc/{us}/task")).unwrap().count();
    assert!(threads_now > THREADS, "{threads_now} threads");

    let mount = FuseMount::new("threads").expect("mount the test filesystem");
    let pileup = Pileup::start(&mount, 3);
    let out = Command::new(dstrace_bin()).args(["snapshot", "--json"]).output().unwrap();
    let mut run = Dstrace::spawn(&["run", "--json", "--duration", "3s", "--min-duration", "0"]);
    run.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));
    let (status, lines) = run.finish();
    let stuck = pileup.stuck.clone();
    drop(pileup);
    release.wait();
    for sleeper in sleepers {
        sleeper.join().unwrap();
    }

    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snapshot: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tasks = snapshot["tasks"].as_array().unwrap();
    assert!(status.success());
    let records = json_lines(&lines);
    let first_screen: Vec<&Value> =
        records.iter().take_while(|r| r["type"] != "start").filter(|r| r["type"] == "ongoing").collect();
    let summary = records.last().unwrap();
    let still = summary["ongoing"].as_array().unwrap();
    for (what, listed) in [
        ("snapshot", tasks.iter().collect::<Vec<_>>()),
        ("run's first screen", first_screen),
        ("run's summary", still.iter().collect()),
    ] {
        for pid in &stuck {
            assert_eq!(
                listed.iter().filter(|t| t["tgid"] == *pid).count(),
                1,
                "{what}: stuck pid {pid} listed once"
            );
        }
        assert!(listed.iter().all(|t| t["tgid"] != us), "{what} lists a sleeping thread of {us}");
    }
}
