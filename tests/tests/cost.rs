//! What dstrace costs the machine it watches, as hooks: which programs each mode
//! attaches. (How much they cost is measured by `cargo xtask bench`, never here.)

use std::{
    collections::BTreeSet,
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use dstrace_tests::{attached_programs, dstrace_bin, require_root, scaled, Children, Scratch};

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
