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

use dstrace_tests::{
    fuse::FuseMount, json_lines, require_root, scaled, skipped, wait_until_proc, Children, Dstrace, Pileup,
};
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
    dstrace::resolve::procfs::parse_stat(&stat).is_some_and(|stat| stat.flags & PF_KTHREAD != 0)
}

#[test]
fn tasks_stuck_behind_a_dead_fuse_server_are_reported() {
    if !require_root("tasks_stuck_behind_a_dead_fuse_server_are_reported") {
        return;
    }
    let mount = FuseMount::new("pileup").expect("mount the test filesystem");

    let mut dstrace = Dstrace::spawn(&["run", "--json", "--min-duration", "200ms", "--duration", "60s"]);
    let start = dstrace.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));
    // The path a task looks up comes from its path walk (any kernel); its syscall
    // needs Linux 5.18 (the start record says when either is missing).
    let start_record: Value = serde_json::from_str(&start).unwrap();
    let attributed = !skipped(&start_record, "the path walk and mount ID of each wait");
    let syscalls = !skipped(&start_record, dstrace::kernel::loader::NO_SYSCALLS);
    // Naming the lookup owner needs fentry on d_alloc_parallel, which some kernels
    // (and sandboxes) refuse: then it is listed as skipped, and not checked here.
    let lookups_traced = !start.contains("d_alloc_parallel:");
    if !lookups_traced {
        eprintln!("not checked: the lookup owner (fentry refused here): {start}");
    }

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
        stuck.iter().all(|pid| seen.iter().any(|line| line.contains(&format!(r#""tgid":{pid},"#))))
    });
    let (status, lines) = dstrace.interrupt();
    assert!(status.success(), "dstrace exited with {status}");
    let records = json_lines(&lines);
    assert_eq!(records.last().map(|r| r["type"].clone()), Some("summary".into()), "no summary at the end");

    for pid in &stuck {
        let wait = waits(&records)
            .find(|w| w["tgid"] == *pid)
            .unwrap_or_else(|| panic!("no wait for stuck pid {pid} in:\n{}", lines.join("\n")));
        assert_eq!(wait["tid"], *pid);
        assert_eq!(wait["comm"], "stat");
        let duration = Duration::from_secs_f64(wait["blocked_ms"].as_f64().unwrap() / 1e3);
        assert!(
            duration >= HOLD - Duration::from_millis(500)
                && duration <= held + scaled(Duration::from_secs(2)),
            "pid {pid} waited {duration:?}, the server held for {held:?}"
        );
        let blocked_in = wait["function"].as_str().unwrap_or_default();
        assert!(
            ["d_alloc_parallel", "d_wait_lookup", "__lookup_slow", "lookup_slow"].contains(&blocked_in),
            "pid {pid} blocked in {blocked_in:?}; stack: {}",
            wait["stack"]
        );
        eprintln!("stuck pid {pid}: {} {duration:?} in {blocked_in} on {}", wait["state"], wait["mount"]);
        // Attributed to the dead mount and the file looked up, from the syscall;
        // where the kernel cannot say, nothing is claimed.
        if attributed {
            assert_eq!(wait["mount"]["mountpoint"], mount.path().to_str().unwrap(), "{wait}");
            assert_eq!(wait["mount"]["fstype"], "fuse.dstrace-test");
            assert_eq!(wait["file"]["path"], mount.path().join("missing").to_str().unwrap());
        } else {
            assert!(wait["mount"].is_null() && wait["file"].is_null(), "{wait}");
        }
        if syscalls {
            assert!(
                ["statx", "newfstatat", "lstat", "stat"]
                    .contains(&wait["syscall"].as_str().unwrap_or_default()),
                "syscall {}",
                wait["syscall"]
            );
        } else {
            assert!(wait["syscall"].is_null(), "{wait}");
        }
        assert!(wait["stack"].as_array().is_some_and(|s| s.iter().any(|f| f == "__schedule")));
        assert!(wait["state"].as_str().is_some_and(|s| s.starts_with('D')));
        // They wait for a name the lookup owner is looking up: it holds them.
        if lookups_traced {
            assert_eq!(wait["lock"]["kind"], "dentry-lookup", "{wait}");
            assert_eq!(wait["lock"]["holder"]["tid"], first, "{wait}");
        }
        // The lookup owner, answered, wakes those waiting for its dentry.
        assert_eq!(wait["waker"]["tid"], first, "pid {pid} was woken by {}", wait["waker"]);
        assert_eq!(wait["waker"]["comm"], "stat");
        assert!(wait["waker"]["stack"].as_array().is_some_and(|s| !s.is_empty()), "no waker stack");
    }
    // The first task waits for the server's answer in S (interruptible), not in D.
    assert!(waits(&records).all(|w| w["tgid"] != first), "the first lookup is not a D wait");

    let summary = records.last().unwrap();
    assert!(summary["counters"]["waits_ended"].as_u64().unwrap() >= stuck.len() as u64);
    // The in-kernel aggregation counted them too.
    for pid in &stuck {
        let group = summary["by_process"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["tgid"] == *pid && g["function"] == "d_alloc_parallel")
            .unwrap_or_else(|| panic!("no group for pid {pid}: {}", summary["by_process"]));
        // Woken, a waiter looks the name up again and may wait a second, short time.
        let count = group["count"].as_u64().unwrap();
        assert!(count >= 1);
        assert!(group["max_ms"].as_f64().unwrap() >= (HOLD - Duration::from_millis(500)).as_secs_f64() * 1e3);
        assert!(group["blocked_ms"].as_f64().unwrap() >= group["max_ms"].as_f64().unwrap());
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
        idle.iter().any(|w| is_kernel_thread(w["tgid"].as_u64().unwrap())),
        "TASK_IDLE waits, but none by a kernel thread: {idle:?}"
    );

    let default = run(&[]);
    let leaked: Vec<&Value> = waits(&default).filter(|w| w["state"] == "D+idle").collect();
    assert!(leaked.is_empty(), "idle waits reported without --include-idle: {leaked:?}");
}

/// A wait in `fsync` is attributed to the file's mount and inode, from the file
/// descriptor the task passed.
#[test]
fn fsync_waits_name_the_mount_and_inode() {
    use std::os::unix::fs::MetadataExt as _;
    if !require_root("fsync_waits_name_the_mount_and_inode") {
        return;
    }
    let dir = ["/var/tmp", "/tmp"].into_iter().find(|d| std::path::Path::new(d).is_dir()).unwrap();
    let path = std::path::Path::new(dir).join(format!("dstrace-test-fsync-{}", std::process::id()));
    std::fs::write(&path, b"").unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    let dev = format!("{}:{}", libc::major(meta.dev()), libc::minor(meta.dev()));

    let mut dstrace = Dstrace::spawn(&["run", "--json", "--min-duration", "0", "--comm", "dd"]);
    let start = dstrace.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));
    // An fsync's file is its descriptor's: it needs the syscall (Linux 5.18).
    let attributed = !skipped(&serde_json::from_str(&start).unwrap(), dstrace::kernel::loader::NO_SYSCALLS);
    let mut writers = Children::default();
    let mut pids = Vec::new();
    for _ in 0..5 {
        let of = format!("of={}", path.display());
        pids.push(
            writers.spawn(
                std::process::Command::new("dd")
                    .args(["if=/dev/zero", &of, "bs=64k", "count=16"])
                    .arg("conv=fsync,notrunc"),
            ),
        );
        writers.wait_all(Duration::from_secs(30));
    }
    let (_, lines) = dstrace.interrupt();
    let _ = std::fs::remove_file(&path);
    let records = json_lines(&lines);
    if !attributed {
        // This kernel cannot say (the start record says so): the waits in fsync are
        // reported all the same, and claim no file or mount.
        let fsyncs: Vec<&Value> = waits(&records)
            .filter(|w| pids.iter().any(|pid| w["tgid"] == *pid))
            .filter(|w| {
                w["stack"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|frame| frame.as_str().unwrap().contains("sys_fsync"))
            })
            .collect();
        assert!(!fsyncs.is_empty(), "no D wait in fsync: {lines:#?}");
        assert!(fsyncs.iter().all(|w| w["file"].is_null() && w["mount"].is_null()), "{fsyncs:#?}");
        eprintln!("this kernel has no file attribution (the start record says so): checked the waits only");
        return;
    }
    // Only these dd: others may run on the machine meanwhile.
    let fsyncs: Vec<&Value> = waits(&records)
        .filter(|w| w["syscall"] == "fsync" && pids.iter().any(|pid| w["tgid"] == *pid))
        .collect();
    assert!(!fsyncs.is_empty(), "no D wait in fsync: {lines:#?}");
    for wait in fsyncs {
        assert_eq!(wait["file"]["inode"], meta.ino(), "{wait}");
        assert_eq!(wait["mount"]["dev"], dev.as_str(), "{wait}");
    }
}

/// dstrace itself never touches a dead mount: while tasks are stuck behind one, a
/// second dstrace watching the first sees it never wait on FUSE or the dcache, and
/// the first lists the stuck tasks and ends on time.
#[test]
fn dstrace_never_blocks_on_a_dead_mount() {
    if !require_root("dstrace_never_blocks_on_a_dead_mount") {
        return;
    }
    let mount = FuseMount::new("dead").expect("mount the test filesystem");
    let pileup = Pileup::start(&mount, 2);
    let mut watcher = Dstrace::spawn(&["run", "--json", "--min-duration", "0", "--comm", "dstrace"]);
    watcher.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));

    let started = Instant::now();
    let watched = Dstrace::spawn(&["run", "--json", "--duration", "2s"]);
    let watched_pid = watched.pid();
    let (status, lines) = watched.finish();
    assert!(status.success(), "dstrace failed beside a dead mount: {status}");
    assert!(started.elapsed() < scaled(Duration::from_secs(20)), "dstrace took {:?}", started.elapsed());
    let records = json_lines(&lines);
    for pid in &pileup.stuck {
        assert!(
            records.iter().any(|r| r["type"] == "ongoing" && r["tgid"] == *pid),
            "stuck pid {pid} not listed beside the dead mount"
        );
    }

    let (_, lines) = watcher.interrupt();
    let records = json_lines(&lines);
    let mount_point = mount.path().to_str().unwrap();
    // Only the dstrace watched: others may run on the machine meanwhile. A name
    // looked up in /proc by two of its threads at once is no dead mount.
    for wait in waits(&records).filter(|w| w["tgid"] == watched_pid) {
        let blocked_in = wait["function"].as_str().unwrap_or_default();
        let stack = wait["stack"].to_string();
        assert!(
            !stack.contains("fuse")
                && (blocked_in != "d_alloc_parallel" || wait["mount"]["mountpoint"] == "/proc")
                && wait["mount"]["mountpoint"] != mount_point,
            "dstrace waited on the dead mount: {wait}"
        );
    }
    drop(pileup);
}

/// `snapshot` without the privileges of BPF (root without CAP_BPF, CAP_PERFMON and
/// CAP_SYS_ADMIN, so not the task iterator) lists tasks stuck behind a dead FUSE
/// server from /proc alone: lookups (whose path is in the task's memory, which is
/// not read, so no mount is named) and writers on a file descriptor (whose file and
/// mount /proc names), with the chain from the writers to their mount. With
/// them, `snapshot` reads kernel memory: the after_hang tests.
#[test]
fn snapshot_lists_tasks_stuck_behind_a_dead_server() {
    if !require_root("snapshot_lists_tasks_stuck_behind_a_dead_server") {
        return;
    }
    // Two mounts: the lookups' pile-up holds its directory, which the writers'
    // opening for append (O_CREAT) would need.
    let lookup_mount = FuseMount::new("snapshot-lookups").expect("mount the test filesystem");
    let mount = FuseMount::new("snapshot").expect("mount the test filesystem");
    let writers = Pileup::writers(&mount, 2);
    let lookups = Pileup::start(&lookup_mount, 2);
    sleep(Duration::from_millis(500));
    // Still uid 0 (the /proc files of the pile-up's root tasks stay readable), but
    // without what loading BPF takes, from every set an exec could give back.
    let without_bpf = |args: &[&str]| {
        let caps = "-bpf,-perfmon,-sys_admin";
        std::process::Command::new("setpriv")
            .args([format!("--bounding-set={caps}"), format!("--inh-caps={caps}")])
            .arg(dstrace_tests::dstrace_bin())
            .args(args)
            .output()
            .expect("setpriv runs dstrace snapshot")
    };
    let out = without_bpf(&["snapshot", "--json"]);
    let text = without_bpf(&["snapshot"]);
    let (lookup_pids, writer_pids) = (lookups.stuck.clone(), writers.stuck.clone());
    // Without /proc/PID/stack the function is wchan's, which some kernels (5.10)
    // print as 0: then no function is claimed.
    let wchan_hidden =
        std::fs::read_to_string(format!("/proc/{}/wchan", lookup_pids[0])).is_ok_and(|w| w == "0");
    drop((writers, lookups));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snapshot: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let text = String::from_utf8_lossy(&text.stdout);
    let missing = snapshot.to_string();
    assert!(missing.contains("the task iterator needs root, or CAP_BPF and CAP_PERFMON"), "{snapshot:#}");
    let tasks = snapshot["tasks"].as_array().unwrap();
    let task = |pid: u32| {
        tasks
            .iter()
            .find(|t| t["tgid"] == pid)
            .unwrap_or_else(|| panic!("pid {pid} not listed: {snapshot:#}"))
    };
    for pid in lookup_pids.iter().chain(&writer_pids) {
        let task = task(*pid);
        assert_eq!(task["source"], "proc");
        assert_eq!(task["state"], "D");
        let age = task["blocked_ms"].as_f64().unwrap();
        assert!(
            (150.0..scaled(Duration::from_secs(5)).as_secs_f64() * 1e3).contains(&age),
            "stuck for about 0.5 s (a lower bound), not {age} ms: {task}"
        );
        assert!(text.contains(&format!("{}/{}", task["tgid"], task["tid"])), "text lacks {task}:\n{text}");
    }
    for pid in &lookup_pids {
        if wchan_hidden {
            assert!(task(*pid)["function"].is_null(), "{}", task(*pid));
        } else {
            assert_eq!(task(*pid)["function"], "d_alloc_parallel");
        }
    }
    let mountpoint = mount.path().to_str().unwrap();
    let file = mount.path().join(dstrace_tests::fuse::FILE_NAME);
    let mut named = 0;
    for pid in &writer_pids {
        let task = task(*pid);
        if task["syscall"] == "close" {
            // 5.10 and 6.1: the write went through; the writer waits for the inode's
            // lock in close's flush, its descriptor already gone: no file to name,
            // and none is claimed.
            if !wchan_hidden {
                assert_eq!(task["function"], "fuse_flush", "{task}");
            }
            assert!(task["file"]["path"].is_null() && task["mount"].is_null(), "{task}");
            eprintln!("writer {pid} waits in close (fuse_flush) on this kernel: its file is not named");
            continue;
        }
        assert_eq!(task["syscall"], "write", "{task}");
        assert_eq!(task["mount"]["mountpoint"], mountpoint, "{task}");
        assert_eq!(task["mount"]["fstype"], "fuse.dstrace-test", "{task}");
        assert_eq!(task["file"]["path"], file.to_str().unwrap(), "{task}");
        named += 1;
    }
    assert!(text.contains("By mount, lock and function:"), "{text}");
    if named == 0 {
        return;
    }
    assert!(text.contains("chain: "), "{text}");
    // The writers' group: the mount, its function, and the chain to the mount.
    // Which process serves which of two FUSE connections only kernel memory says:
    // /proc alone names no daemon here (a guess would be a lie) and lists it as not
    // seen.
    let group = snapshot["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["mount"]["mountpoint"] == mountpoint)
        .unwrap_or_else(|| panic!("no group for {mountpoint}: {snapshot:#}"));
    assert_eq!(group["tasks_in_d"], named, "{group}");
    let chain = group["chain"].as_array().unwrap();
    assert!(
        chain.iter().any(|l| l["link"] == "mount" && l["mountpoint"] == mountpoint),
        "the chain does not reach the mount: {group}"
    );
    assert!(!chain.iter().any(|l| l["link"] == "fuse_daemon"), "a daemon /proc cannot prove: {group}");
    assert!(missing.contains("the daemon of a FUSE mount"), "{snapshot:#}");
}

/// Seed 000's hunt in one step: a process holds a lock others queue for (here
/// flock(1)'s FLOCK lock; the waiters sleep in S), and both `snapshot` and `run`
/// name the holder, its state, the inode and each waiter, from /proc/locks.
#[test]
fn a_file_lock_queue_names_its_holder_and_waiters() {
    if !require_root("a_file_lock_queue_names_its_holder_and_waiters") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("dstrace-lockqueue-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("registry-lock");
    std::fs::write(&path, b"").unwrap();
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    let mut children = Children(Vec::new());
    let flock = |args: &[&str]| {
        let mut cmd = std::process::Command::new("flock");
        cmd.arg("-x").arg(&path).args(args);
        cmd
    };
    let holder = children.spawn(&mut flock(&["sleep", "600"]));
    // The holder has its lock once /proc/locks lists it.
    let deadline = Instant::now() + scaled(START_TIMEOUT);
    let listed = |pid: u32, waiting: bool| {
        std::fs::read_to_string("/proc/locks").unwrap().lines().any(|line| {
            line.contains(&format!(" {pid} "))
                && line.contains(&format!(":{inode} "))
                && line.contains("->") == waiting
        })
    };
    while !listed(holder, false) {
        assert!(Instant::now() < deadline, "flock did not take its lock");
        sleep(Duration::from_millis(20));
    }
    // The first waiter queues behind the holder; the second behind the holder too,
    // or (Linux 5.3 to 5.12) behind the first waiter, where /proc/locks does not show
    // it: the advice names the waiters /proc/locks lists.
    let first = children.spawn(&mut flock(&["true"]));
    while !listed(first, true) {
        assert!(Instant::now() < deadline, "flock {first} did not queue");
        sleep(Duration::from_millis(20));
    }
    let second = children.spawn(&mut flock(&["true"]));
    wait_until_proc(second, START_TIMEOUT, |state, wchan| state == 'S' && wchan.contains("lock"));
    let waiters: Vec<u32> = if listed(second, true) {
        vec![first, second]
    } else {
        eprintln!("this kernel's /proc/locks does not list a waiter queued behind another waiter");
        vec![first]
    };
    let wanted = |advice: &Value| -> bool {
        advice.as_array().unwrap().iter().filter_map(Value::as_str).any(|line| {
            line.contains(&format!("flock[{holder}] in S holds the FLOCK WRITE lock on inode {inode} ("))
                && line.contains(&format!("that {} task", waiters.len()))
                && waiters.iter().all(|waiter| line.contains(&format!("flock[{waiter}] in S")))
        })
    };
    let out = std::process::Command::new(dstrace_tests::dstrace_bin())
        .args(["snapshot", "--json"])
        .output()
        .expect("dstrace snapshot runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snapshot: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(wanted(&snapshot["advice"]), "snapshot: {}", snapshot["advice"]);

    let run = Dstrace::spawn(&["run", "--json", "--duration", "2s"]);
    let (status, lines) = run.finish();
    assert!(status.success(), "{lines:?}");
    let records = json_lines(&lines);
    let summary = records.iter().find(|record| record["type"] == "summary").expect("a summary");
    assert!(wanted(&summary["advice"]), "run: {}", summary["advice"]);
    drop(children);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The advice for a FUSE mount whose daemon does not answer names the
/// connection's `abort` file only where fusectl is mounted (where it exists);
/// else it says how to mount fusectl first.
#[test]
fn fuse_advice_names_the_abort_file_only_where_fusectl_is_mounted() {
    if !require_root("fuse_advice_names_the_abort_file_only_where_fusectl_is_mounted") {
        return;
    }
    let mount = FuseMount::new("fusectl").expect("mount the test filesystem");
    let pileup = Pileup::start(&mount, 2);
    let mountpoint = mount.path().to_str().unwrap().to_owned();
    // The advice is for waits of a second or more: snapshots until one has it.
    let deadline = Instant::now() + scaled(START_TIMEOUT);
    let line = loop {
        let out = std::process::Command::new(dstrace_tests::dstrace_bin())
            .args(["snapshot", "--json"])
            .output()
            .expect("dstrace snapshot runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let snapshot: Value = serde_json::from_slice(&out.stdout).unwrap();
        let found = snapshot["advice"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .find(|line| line.contains(&format!("the FUSE mount {mountpoint} ")))
            .map(str::to_owned);
        if let Some(line) = found {
            break line;
        }
        assert!(Instant::now() < deadline, "no advice for {mountpoint}: {snapshot}");
        sleep(Duration::from_millis(200));
    };
    drop(pileup);
    let fusectl = std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(" - fusectl ");
    let how = "`mount -t fusectl none /sys/fs/fuse/connections`";
    assert!(line.contains("/abort fails every pending request"), "{line}");
    assert_eq!(line.contains(how), !fusectl, "fusectl mounted: {fusectl}: {line}");
}
