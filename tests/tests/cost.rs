//! What dstrace costs the machine it watches, as hooks: which programs each mode
//! attaches. (How much they cost is measured by `cargo xtask bench`, never here.)

use std::{
    collections::BTreeSet,
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use dstrace_tests::{
    attached_programs, dstrace_bin, fuse::FuseMount, require_root, scaled, start_recording, stop_recording,
    Children, Pileup, Scratch,
};

/// The programs `args` attaches, once dstrace has attached its scheduler hook and
/// a second more (the rest are attached before it says it is tracing).
fn attached_by(args: &[&str]) -> BTreeSet<String> {
    let mut children = Children::default();
    let pid = children.spawn(Command::new(dstrace_bin()).args(args));
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    loop {
        let attached = attached_programs(pid);
        if attached.iter().any(|name| name.starts_with("sched_switch")) {
            sleep(Duration::from_secs(1));
            return attached_programs(pid);
        }
        assert!(Instant::now() < deadline, "dstrace {args:?} attached nothing within a minute");
        sleep(Duration::from_millis(50));
    }
}

/// `--no-waker` and the daemon leave the machine's wake-ups alone: no program on
/// `sched_waking`; `run` and `record` without it attach one.
#[test]
fn no_waker_leaves_no_program_on_sched_waking() {
    if !require_root("no_waker_leaves_no_program_on_sched_waking") {
        return;
    }
    let on_waking =
        |attached: &BTreeSet<String>| attached.iter().any(|name| name.starts_with("sched_waking"));
    let dir = Scratch::new("cost-waker");
    let rec = dir.path("a.rec");
    let rec = rec.to_str().unwrap();
    let default = attached_by(&["run", "--json"]);
    assert!(on_waking(&default), "run attaches its waker program: {default:?}");
    for args in [
        &["run", "--json", "--no-waker"][..],
        &["record", "--no-waker", "-o", rec],
        &["daemon", "--listen", "127.0.0.1:0", "--recording", &dir.path("d.rec").to_string_lossy()],
    ] {
        let attached = attached_by(args);
        assert!(!on_waking(&attached), "dstrace {args:?} attached {attached:?}");
        assert!(attached.iter().any(|name| name.starts_with("sched_switch")), "{args:?}: {attached:?}");
    }
}

/// `record --sample` attaches nothing, and a pile-up that began before it is in
/// the recording, each task on its mount, with the age the kernel gives it.
#[test]
fn record_sample_attaches_nothing_and_keeps_the_tasks_in_d() {
    if !require_root("record_sample_attaches_nothing_and_keeps_the_tasks_in_d") {
        return;
    }
    let dir = Scratch::new("cost-sample");
    let mount = FuseMount::new("cost-sample").expect("mount the test filesystem");
    let pileup = Pileup::start(&mount, 2);
    sleep(Duration::from_secs(2));
    let file = dir.path("s.rec");
    let recorder = start_recording(&file, &["--sample", "--interval", "1s"]);
    let attached = attached_programs(recorder.id());
    sleep(Duration::from_millis(1500));
    stop_recording(recorder);
    assert!(attached.is_empty(), "record --sample attached {attached:?}");
    let recording = dstrace::sinks::recording::read(&std::fs::read(&file).unwrap()).unwrap();
    let in_d: Vec<_> = recording.intervals.iter().flat_map(|interval| &interval.in_d).collect();
    for pid in &pileup.stuck {
        let wait =
            in_d.iter().find(|wait| wait.pid == *pid).unwrap_or_else(|| panic!("{pid}: {recording:?}"));
        assert_eq!(wait.on.mount.as_ref().map(|m| m.mount_point.as_path()), Some(mount.path()), "{wait:?}");
        assert!(wait.duration_ns >= 2_000_000_000, "the kernel's age, not the time since start: {wait:?}");
    }
    assert!(recording.intervals.iter().all(|interval| interval.waits.is_empty() && interval.rows.is_empty()));
}
