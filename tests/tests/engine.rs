//! The D-wait engine against real D states: waits that began before tracing,
//! ongoing waits whose age grows, filters, and drops made on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{thread::sleep, time::Duration};

use dstrace::{
    clock::monotonic_ns,
    kernel::loader::{Filters, Options, Tracer},
};
use dstrace_tests::{
    fuse::FuseMount, json_lines, require_root, scaled, skipped, wait_until_proc, Children, Dstrace,
    GatedPileup, Pileup, TestCgroup,
};
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(20);

fn is_start(line: &str) -> bool {
    line.contains(r#""type":"start""#)
}

/// Every record with `"type": kind`.
fn of_type<'a>(records: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    records.iter().filter(move |r| r["type"] == kind)
}

#[test]
fn waits_that_began_before_tracing_are_listed_at_once() {
    if !require_root("waits_that_began_before_tracing_are_listed_at_once") {
        return;
    }
    let mount = FuseMount::new("before").expect("mount the test filesystem");
    let pileup = Pileup::start(&mount, 2);
    sleep(Duration::from_secs(1));

    let mut dstrace = Dstrace::spawn(&["run", "--json", "--duration", "60s"]);
    dstrace.wait_for_line(START_TIMEOUT, is_start);
    mount.release();
    let (status, lines) = dstrace.interrupt();
    assert!(status.success());
    let records = json_lines(&lines);

    // The listing comes before the start record.
    let start = records.iter().position(|r| r["type"] == "start").unwrap();
    for pid in &pileup.stuck {
        let wait = records[..start]
            .iter()
            .find(|r| r["type"] == "ongoing" && r["tgid"] == *pid)
            .unwrap_or_else(|| panic!("pid {pid} in D before tracing is not listed: {lines:#?}"));
        // Read from kernel memory by the task iterator, or from /proc where the
        // start record says the kernel cannot run it.
        let source = if skipped(&records[start], "tasks already in D") { "proc" } else { "iterator" };
        assert_eq!(wait["source"], source);
        assert_eq!(wait["comm"], "stat");
        assert_eq!(wait["function"], "d_alloc_parallel", "{wait}");
        // In D for over a second already; the time since it last ran is a lower
        // bound, on the task clock, which runs slower than the wall clock by
        // interrupt and steal time.
        let age = Duration::from_secs_f64(wait["blocked_ms"].as_f64().unwrap() / 1e3);
        assert!(age >= Duration::from_millis(500) && age < scaled(Duration::from_secs(5)), "age {age:?}");
    }
    assert!(records[..start].iter().all(|r| r["tgid"] != pileup.owner), "the owner sleeps in S, not D");
}

/// Through the library: a wait in progress is in `INFLIGHT`, and its age grows.
#[test]
fn an_ongoing_wait_is_tracked_and_its_age_grows() {
    if !require_root("an_ongoing_wait_is_tracked_and_its_age_grows") {
        return;
    }
    let mount = FuseMount::new("ongoing").expect("mount the test filesystem");
    let options = Options {
        filters: Filters { comms: vec!["stat".into()], ..Filters::default() },
        ..Options::default()
    };
    let tracer = Tracer::load(&options).expect("load the eBPF programs");
    let pileup = Pileup::start(&mount, 1);
    let pid = pileup.stuck[0];

    let find = || tracer.inflight().into_iter().find(|(tid, _)| *tid == pid).map(|(_, wait)| wait);
    let first = find().unwrap_or_else(|| panic!("pid {pid} is in D but not tracked"));
    let first_age = monotonic_ns() - first.start_ns;
    sleep(Duration::from_millis(600));
    let second = find().expect("still in D");
    let second_age = monotonic_ns() - second.start_ns;
    assert_eq!(first.start_ns, second.start_ns, "the same wait");
    assert!(second_age >= first_age + 500_000_000, "age went from {first_age} ns to {second_age} ns");
    assert_eq!(first.tgid, pid);
    assert!(first.kstack_id >= 0, "its kernel stack was recorded");
    assert_eq!(first.waker.at_ns, 0, "not woken yet");

    mount.release();
    drop(pileup);
    // Once it ran again it is no longer in progress.
    sleep(Duration::from_millis(300));
    assert!(find().is_none(), "pid {pid} still tracked after its wait ended");
}

#[test]
fn filters_cut_what_they_say() {
    if !require_root("filters_cut_what_they_say") {
        return;
    }
    let mount = FuseMount::new("filters").expect("mount the test filesystem");
    let mut pileup = GatedPileup::prepare(&mount, 2);
    let [wanted, unwanted] = pileup.pids()[..] else { unreachable!() };

    let pid_arg = wanted.to_string();
    let mut by_pid = Dstrace::spawn(&["run", "--json", "--min-duration", "100ms", "--pid", &pid_arg]);
    by_pid.wait_for_line(START_TIMEOUT, is_start);
    let mut by_comm = Dstrace::spawn(&["run", "--json", "--min-duration", "100ms", "--comm", "stat"]);
    by_comm.wait_for_line(START_TIMEOUT, is_start);

    pileup.block();
    sleep(Duration::from_millis(500));
    pileup.release();
    let seen =
        |pid: u32| move |lines: &[String]| lines.iter().any(|l| l.contains(&format!(r#""tgid":{pid},"#)));
    by_pid.wait_until(Duration::from_secs(10), seen(wanted));
    by_comm.wait_until(Duration::from_secs(10), |lines| seen(wanted)(lines) && seen(unwanted)(lines));

    let (_, lines) = by_pid.interrupt();
    let records = json_lines(&lines);
    let waits: Vec<&Value> = of_type(&records, "wait").collect();
    assert!(waits.iter().any(|r| r["tgid"] == wanted), "--pid {wanted} left its wait out: {lines:#?}");
    assert!(waits.iter().all(|r| r["tgid"] == wanted), "--pid {wanted} let other waits in: {waits:#?}");
    let summary = records.last().unwrap();
    assert!(summary["by_process"].as_array().unwrap().iter().all(|g| g["tgid"] == wanted), "{summary}");

    let (_, lines) = by_comm.interrupt();
    let records = json_lines(&lines);
    let waits: Vec<&Value> = of_type(&records, "wait").collect();
    assert!(waits.iter().all(|r| r["comm"] == "stat"), "--comm stat let others in: {waits:#?}");
    for pid in [wanted, unwanted] {
        assert!(waits.iter().any(|r| r["tgid"] == pid), "--comm stat left pid {pid} out");
    }
}

/// A kernel map made full on purpose: the waits that did not fit are counted and
/// shown, not lost silently.
#[test]
fn a_full_task_map_shows_its_drops() {
    if !require_root("a_full_task_map_shows_its_drops") {
        return;
    }
    let mount = FuseMount::new("full").expect("mount the test filesystem");
    // Room for one task in D; three pile up (and the machine's own D waits).
    let mut dstrace = Dstrace::spawn(&["run", "--json", "--comm", "stat", "--max-tasks", "1"]);
    dstrace.wait_for_line(START_TIMEOUT, is_start);
    let pileup = Pileup::start(&mount, 3);
    sleep(Duration::from_millis(300));
    mount.release();
    drop(pileup);
    let (status, lines) = dstrace.interrupt();
    assert!(status.success());
    let records = json_lines(&lines);
    let summary = records.last().unwrap();
    assert_eq!(summary["type"], "summary");
    let dropped = summary["counters"]["inflight_map_full"].as_u64().unwrap();
    assert!(dropped >= 2, "3 tasks in D, room for 1, yet {dropped} dropped: {summary}");

    // The capacity is what was asked for: the same run with room for all drops none.
    let mut roomy = Dstrace::spawn(&["run", "--json", "--comm", "stat"]);
    roomy.wait_for_line(START_TIMEOUT, is_start);
    let pileup = Pileup::start(&mount, 3);
    sleep(Duration::from_millis(300));
    mount.release();
    drop(pileup);
    let (_, lines) = roomy.interrupt();
    let records = json_lines(&lines);
    assert_eq!(records.last().unwrap()["counters"]["inflight_map_full"], 0);
}

/// `--cgroup` keeps one cgroup's tasks; `--tid` one thread, here with its user stack.
#[test]
fn cgroup_and_tid_filters_and_user_stacks() {
    if !require_root("cgroup_and_tid_filters_and_user_stacks") {
        return;
    }
    let mount = FuseMount::new("cgroup").expect("mount the test filesystem");
    let mut pileup = GatedPileup::prepare(&mount, 2);
    let [inside, outside] = pileup.pids()[..] else { unreachable!() };
    let cgroup = TestCgroup::new("filter");
    cgroup.add(inside);

    let cgroup_arg = cgroup.path().display().to_string();
    let mut by_cgroup =
        Dstrace::spawn(&["run", "--json", "--min-duration", "100ms", "--cgroup", &cgroup_arg]);
    by_cgroup.wait_for_line(START_TIMEOUT, is_start);
    let tid_arg = outside.to_string();
    let mut by_tid =
        Dstrace::spawn(&["run", "--json", "--min-duration", "100ms", "--tid", &tid_arg, "--user-stacks"]);
    by_tid.wait_for_line(START_TIMEOUT, is_start);

    pileup.block();
    sleep(Duration::from_millis(500));
    pileup.release();
    let seen =
        |pid: u32| move |lines: &[String]| lines.iter().any(|l| l.contains(&format!(r#""tgid":{pid},"#)));
    by_cgroup.wait_until(Duration::from_secs(10), seen(inside));
    by_tid.wait_until(Duration::from_secs(10), seen(outside));

    let (_, lines) = by_cgroup.interrupt();
    let records = json_lines(&lines);
    let waits: Vec<&Value> = of_type(&records, "wait").collect();
    assert!(waits.iter().all(|r| r["tgid"] == inside), "--cgroup let other tasks in: {waits:#?}");
    let wait = waits.iter().find(|r| r["tgid"] == inside).unwrap();
    assert_eq!(wait["cgroup_id"], cgroup.id(), "the record names the task's cgroup");

    let (_, lines) = by_tid.interrupt();
    let records = json_lines(&lines);
    let waits: Vec<&Value> = of_type(&records, "wait").collect();
    assert!(waits.iter().all(|r| r["tid"] == outside), "--tid let other threads in: {waits:#?}");
    let wait = waits.iter().find(|r| r["tid"] == outside).unwrap();
    let user_stack = wait["user_stack"].as_array().expect("a user stack with --user-stacks");
    assert!(
        user_stack.iter().all(|frame| frame.as_str().is_some_and(|f| f.starts_with("0x")))
            && !user_stack.is_empty(),
        "user stack {user_stack:?}"
    );
}

/// `--interval` drains the in-kernel aggregation on an interval: each interval
/// reports the waits that ended in it.
#[test]
fn interval_reports_drain_the_aggregation() {
    if !require_root("interval_reports_drain_the_aggregation") {
        return;
    }
    let mount = FuseMount::new("interval").expect("mount the test filesystem");
    let mut dstrace = Dstrace::spawn(&["run", "--json", "--comm", "stat", "--interval", "1s"]);
    dstrace.wait_for_line(START_TIMEOUT, is_start);
    let pileup = Pileup::start(&mount, 2);
    sleep(Duration::from_millis(300));
    mount.release();
    let stuck = pileup.stuck.clone();
    drop(pileup);
    // Until an interval report names every stuck pid, then one more interval, so
    // that a waiter's short second wait (it looks the name up again) is in too.
    let intervals = |lines: &[String]| lines.iter().filter(|l| l.contains(r#""type":"interval""#)).count();
    let reported = |lines: &[String]| {
        let reports: Vec<Value> = json_lines(lines).into_iter().filter(|r| r["type"] == "interval").collect();
        stuck.iter().all(|pid| {
            reports
                .iter()
                .any(|r| r["by_process"].as_array().is_some_and(|g| g.iter().any(|g| g["tgid"] == *pid)))
        })
    };
    let mut seen_at = None;
    dstrace.wait_until(Duration::from_secs(10), |lines| {
        if seen_at.is_none() && reported(lines) {
            seen_at = Some(intervals(lines));
        }
        seen_at.is_some_and(|n| intervals(lines) > n)
    });
    let (_, lines) = dstrace.interrupt();
    let records = json_lines(&lines);
    let reports: Vec<&Value> = of_type(&records, "interval").collect();
    for pid in &stuck {
        let counted: u64 = reports
            .iter()
            .flat_map(|r| r["by_process"].as_array().unwrap())
            .filter(|g| g["tgid"] == *pid && g["function"] == "d_alloc_parallel")
            .map(|g| g["count"].as_u64().unwrap())
            .sum();
        let total = records.last().unwrap()["by_process"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["tgid"] == *pid && g["function"] == "d_alloc_parallel")
            .map(|g| g["count"].as_u64().unwrap())
            .sum::<u64>();
        assert!(counted >= 1, "pid {pid} in no interval report: {reports:#?}");
        assert_eq!(counted, total, "intervals and the whole run disagree for pid {pid}");
    }
    for report in &reports {
        let seconds = report["seconds"].as_f64().unwrap();
        assert!(seconds > 0.5 && seconds < 5.0, "an interval of {seconds} s");
    }
}

/// Creating files in a directory whose FUSE server stopped answering: the first
/// `touch` holds the directory's `i_rwsem` while it waits for the server; the next
/// waits for that lock in D. dstrace names the lock (the directory inode's
/// `i_rwsem`), its holder and what the holder is doing.
#[test]
fn a_kernel_lock_wait_names_the_lock_and_its_holder() {
    if !require_root("a_kernel_lock_wait_names_the_lock_and_its_holder") {
        return;
    }
    let mount = FuseMount::new("rwsem").expect("mount the test filesystem");
    let mounts = dstrace::resolve::mounts::read().unwrap();
    let fuse = mounts.iter().find(|m| m.mount_point == mount.path()).expect("the test mount is listed");
    let dev = format!("{}:{}", fuse.dev.0, fuse.dev.1);

    let (holder, waiter, summary, fuse_requests) = lock_pileup(&mount, "touch", "new1", "new2");
    let wait = ongoing_wait(&summary, waiter);
    let lock = &wait["lock"];
    assert_eq!(lock["kind"], "rwsem-write", "{wait}");
    assert_eq!(lock["inode"]["dev"], dev.as_str(), "the lock is an inode of the FUSE mount: {lock}");
    assert_eq!(lock["inode"]["ino"], 1, "the FUSE root directory: {lock}");
    assert_eq!(lock["holder"]["tid"], holder, "{lock}");
    assert_eq!(lock["holder"]["comm"], "touch");
    assert_eq!(lock["holder"]["state"], "S", "the holder waits for the server, interruptibly: {lock}");
    let function = lock["holder"]["function"].as_str().unwrap_or_default();
    assert!(function.contains("fuse") || function.contains("request_wait"), "holder in {function}");
    assert_eq!(wait["mount"]["mountpoint"], mount.path().to_str().unwrap());

    // "By mount" and "by lock" are each one look.
    let mount_point = mount.path().to_str().unwrap();
    let by_mount = summary["by_mount"].as_array().unwrap();
    let on_mount = by_mount.iter().find(|g| g["mountpoint"] == mount_point).expect("the mount is grouped");
    assert!(on_mount["tasks_in_d"].as_u64().unwrap() >= 1, "{on_mount}");
    let by_lock = summary["by_lock"].as_array().unwrap();
    let on_lock = by_lock.iter().find(|g| g["lock"] == lock["name"]).expect("the lock is grouped");
    assert_eq!(on_lock["tasks_in_d"], 1, "{on_lock}");
    assert_eq!(on_lock["detail"], format!("touch[{holder}]"));
    let advice = summary["advice"].to_string();
    assert!(advice.contains(&format!("pid {holder} (touch) holds i_rwsem of inode 1")), "{advice}");

    // The chain: waiter -> lock -> holder -> mount -> the FUSE daemon (this test
    // process serves the mount).
    let chain = wait["chain"].as_array().unwrap_or_else(|| panic!("no chain: {wait}"));
    let kinds: Vec<&str> = chain.iter().map(|link| link["link"].as_str().unwrap()).collect();
    assert_eq!(&kinds[..4], ["task", "lock", "task", "mount"], "{chain:#?}");
    assert_eq!(chain[0]["tid"], waiter);
    assert_eq!(chain[2]["tid"], holder);
    assert_eq!(chain[3]["fstype"], "fuse.dstrace-test");
    // The server has not answered the holder's request: how long, and which (on
    // kernels with the fuse tracepoints; the start record says when it cannot).
    let requests = chain.iter().find(|link| link["link"] == "fuse_requests");
    if fuse_requests {
        let requests = requests.expect("no FUSE requests link");
        assert_eq!(requests["oldest_opcode"], "LOOKUP", "{requests}");
        assert_eq!(requests["oldest_tid"], holder, "{requests}");
        assert!(requests["oldest_ms"].as_f64().unwrap() >= 200.0, "{requests}");
    } else if let Some(requests) = requests {
        // No fuse tracepoints (the start record says so): only the task iterator's
        // look at this server's /dev/fuse file can name them, the requests it read
        // and holds (read_by_daemon), the holder's among them.
        assert!(requests["read_by_daemon"].as_u64().is_some_and(|read| read >= 1), "{requests}");
        assert_eq!(requests["oldest_opcode"], "LOOKUP", "{requests}");
        assert_eq!(requests["oldest_tid"], holder, "{requests}");
    } else {
        eprintln!(
            "this kernel has no fuse tracepoints, nor FUSE requests in the look (a FUSE module without BTF)"
        );
    }
    assert!(
        chain[4..].iter().any(|link| link["link"] == "fuse_daemon" && link["tgid"] == std::process::id()),
        "the chain does not end at the FUSE daemon (pid {}): {chain:#?}",
        std::process::id()
    );
}

/// Lookups of two names in a directory of a FUSE mount without parallel directory
/// operations: the first holds the directory's FUSE mutex while it waits for the
/// server; the second waits for that mutex in D. dstrace names the mutex's owner.
#[test]
fn a_mutex_wait_names_its_owner() {
    if !require_root("a_mutex_wait_names_its_owner") {
        return;
    }
    let mount = FuseMount::new("mutex").expect("mount the test filesystem");
    let (owner, waiter, summary, _) = lock_pileup(&mount, "stat", "a", "b");
    let wait = ongoing_wait(&summary, waiter);
    let lock = &wait["lock"];
    assert_eq!(lock["kind"], "mutex", "{wait}");
    assert_eq!(lock["holder"]["tid"], owner, "{lock}");
    assert_eq!(lock["holder"]["comm"], "stat");
    assert!(lock["inode"].is_null(), "a FUSE inode's mutex is not its i_rwsem: {lock}");
}

/// Runs `command` on `first` under a held mount (it ends up waiting for the server
/// in S, holding a lock) then on `second` (which waits for that lock in D), with
/// dstrace tracing `command`; stops dstrace while they are stuck, then lets them
/// go. Returns the pids of both and dstrace's summary, and whether this kernel
/// lets dstrace see FUSE requests in flight (the `fuse` tracepoints, Linux 6.13).
fn lock_pileup(mount: &FuseMount, command: &str, first: &str, second: &str) -> (u32, u32, Value, bool) {
    let mut dstrace = Dstrace::spawn(&["run", "--json", "--comm", command, "--min-duration", "0"]);
    let start: Value = serde_json::from_str(&dstrace.wait_for_line(START_TIMEOUT, is_start)).unwrap();
    let fuse_requests = !skipped(&start, "FUSE requests in flight");
    mount.hold();
    let mut children = Children::default();
    let holder = children.spawn(std::process::Command::new(command).arg(mount.path().join(first)));
    wait_until_proc(holder, Duration::from_secs(10), |state, wchan: &str| {
        state == 'S' && (wchan.contains("fuse") || wchan.contains("request_wait"))
    });
    let waiter = children.spawn(std::process::Command::new(command).arg(mount.path().join(second)));
    wait_until_proc(waiter, Duration::from_secs(10), |state, _| state == 'D');
    // Over a second: old enough for advice.
    sleep(Duration::from_millis(1200));
    // Stopped while the waiter still waits: the summary lists it as ongoing, its
    // holder seen as it is now.
    let (_, lines) = dstrace.interrupt();
    mount.release();
    children.wait_all(Duration::from_secs(10));
    let summary = json_lines(&lines).pop().expect("a summary");
    (holder, waiter, summary, fuse_requests)
}

/// The ongoing wait of `tid` in a summary.
fn ongoing_wait(summary: &Value, tid: u32) -> Value {
    summary["ongoing"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["tid"] == tid)
        .cloned()
        .unwrap_or_else(|| panic!("{tid} is not among the ongoing waits: {summary}"))
}

/// Two `stat`s of one name under a dead FUSE server: the second waits in
/// `d_alloc_parallel` for the first's lookup. Its chain names the lookup the server
/// has not answered and who sent it, the task it waits for.
#[test]
fn a_dentry_wait_leads_to_the_unanswered_lookup() {
    if !require_root("a_dentry_wait_leads_to_the_unanswered_lookup") {
        return;
    }
    let mount = FuseMount::new("dentry").expect("mount the test filesystem");
    let (owner, waiter, summary, fuse_requests) = lock_pileup(&mount, "stat", "same", "same");
    let wait = ongoing_wait(&summary, waiter);
    assert_eq!(wait["function"], "d_alloc_parallel", "{wait}");
    let chain = wait["chain"].as_array().unwrap_or_else(|| panic!("no chain: {wait}"));
    // The request the lookup waits for, and who sent it (the fuse tracepoints,
    // Linux 6.13; the start record says when the kernel lacks them).
    if fuse_requests {
        let requests = chain
            .iter()
            .find(|link| link["link"] == "fuse_requests")
            .unwrap_or_else(|| panic!("no FUSE requests in the chain: {chain:#?}"));
        assert_eq!(requests["oldest_opcode"], "LOOKUP");
        assert_eq!(requests["oldest_tid"], owner, "the lookup owner sent it: {requests}");
    }
    assert!(chain.iter().any(|link| link["link"] == "fuse_daemon" && link["tgid"] == std::process::id()));

    // Advice: the mount, its daemon, and how to detach it.
    let advice = summary["advice"].to_string();
    let mount_point = mount.path().display().to_string();
    assert!(advice.contains(&format!("on the FUSE mount {mount_point}")), "{advice}");
    assert!(advice.contains(&format!("`umount -l {mount_point}`")), "{advice}");
}
