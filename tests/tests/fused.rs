//! The fixture of `after_hang.rs` on its own: a FUSE daemon in a process of its
//! own makes the pile-ups it says, in the host's mount namespace or a private one,
//! and its handles undo everything (the tasks end, the daemon ends, the mount goes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, time::Duration};

use dstrace_tests::{
    fused::{cgroup_of, namespace_of, DaemonPileup, FuseDaemon, Piles, Stall},
    require_root, scaled, task_state,
};

/// Whether any process still exists.
fn alive(pids: &[u32]) -> Vec<u32> {
    pids.iter().copied().filter(|&pid| task_state(pid).is_some_and(|state| state != 'Z')).collect()
}

/// Whether `path` is a mount point in this process's mount namespace.
fn mounted_here(path: &Path) -> bool {
    dstrace::resolve::mounts::read().unwrap().iter().any(|m| m.mount_point == path)
}

fn pileup_and_undo(daemon: FuseDaemon, stall: Stall) {
    pileup_and_undo_these(daemon, stall, Piles { lookups: 2, writers: 2, openers: 0 });
}

fn pileup_and_undo_these(daemon: FuseDaemon, stall: Stall, piles: Piles) {
    let path = daemon.path().to_path_buf();
    let daemon_pid = daemon.pid();
    let pids;
    {
        let pileup = DaemonPileup::start(&daemon, stall, piles);
        if let Some(lookups) = &pileup.lookups {
            assert_eq!(lookups.target, path.join("missing"));
        }
        if let Some(writers) = &pileup.writers {
            assert_eq!(writers.target, path.join(dstrace_tests::fuse::FILE_NAME));
        }
        if let Some(openers) = &pileup.openers {
            assert_eq!(openers.target, path.join("created"));
        }
        assert_eq!(pileup.stuck().len(), piles.lookups + piles.writers + piles.openers);
        assert_eq!(
            pileup.owners().len(),
            [piles.lookups, piles.writers, piles.openers].iter().filter(|&&n| n > 0).count()
        );
        let expected = if stall == Stall::Stop { 'T' } else { 'S' };
        assert_eq!(task_state(daemon_pid), Some(expected), "the daemon's state");
        for pid in pileup.stuck() {
            assert_eq!(task_state(pid), Some('D'), "pid {pid}");
            assert_eq!(namespace_of(pid), daemon.mount().namespace, "pid {pid} in the daemon's namespace");
            assert!(cgroup_of(pid).is_some_and(|c| c.starts_with('/')), "pid {pid} has a cgroup v2 path");
        }
        for owner in pileup.owners() {
            assert_eq!(task_state(owner), Some('S'), "owner {owner}");
        }
        assert_eq!(daemon.mount().fstype, "fuse.fixture");
        assert_eq!(daemon.mount().source, "fixture");
        pids = pileup.pids();
    }
    // Resumed, the daemon answered: every task ended.
    assert!(alive(&pids).is_empty(), "still there after the pile-up's drop: {:?}", alive(&pids));
    drop(daemon);
    assert!(alive(&[daemon_pid]).is_empty(), "the daemon outlived its handle");
    assert!(!mounted_here(&path), "{} still mounted", path.display());
}

#[test]
fn a_stopped_daemon_piles_tasks_up_and_its_handles_undo_it() {
    if !require_root("a_stopped_daemon_piles_tasks_up_and_its_handles_undo_it") {
        return;
    }
    let daemon = FuseDaemon::start("fixture");
    assert_eq!(daemon.mount().namespace, namespace_of(std::process::id()), "the host's namespace");
    assert!(mounted_here(daemon.path()), "mounted where the host sees it");
    pileup_and_undo(daemon, Stall::Stop);
}

#[test]
fn a_holding_daemon_piles_tasks_up_and_its_handles_undo_it() {
    if !require_root("a_holding_daemon_piles_tasks_up_and_its_handles_undo_it") {
        return;
    }
    pileup_and_undo(FuseDaemon::start("fixture"), Stall::Hold);
}

#[test]
fn a_daemon_in_a_private_namespace_mounts_where_the_host_has_nothing() {
    if !require_root("a_daemon_in_a_private_namespace_mounts_where_the_host_has_nothing") {
        return;
    }
    let daemon = FuseDaemon::start_in_private_namespace("fixture");
    let path = daemon.path().to_path_buf();
    assert_ne!(daemon.mount().namespace, namespace_of(std::process::id()), "a namespace of its own");
    assert!(!mounted_here(&path), "{} is mounted in the host's namespace", path.display());
    // The host has the directory under the namespace's tmpfs, empty: not the mount
    // point (this looks at the host's directory, never at the FUSE mount).
    assert!(!path.exists(), "the host has {}", path.display());
    let host_dir = path.parent().unwrap().to_path_buf();
    assert!(host_dir.is_dir());
    pileup_and_undo(daemon, Stall::Stop);
    assert!(!host_dir.exists(), "{} left behind", host_dir.display());
}

#[test]
fn openers_pile_up_behind_a_stopped_daemon_beside_writers() {
    if !require_root("openers_pile_up_behind_a_stopped_daemon_beside_writers") {
        return;
    }
    pileup_and_undo_these(
        FuseDaemon::start("fixture"),
        Stall::Stop,
        Piles { lookups: 0, writers: 2, openers: 2 },
    );
}

/// A daemon killed outright (as when the test process dies) frees its pile-up:
/// its `/dev/fuse` closes, failing every request.
#[test]
fn a_killed_daemon_frees_its_pileup() {
    if !require_root("a_killed_daemon_frees_its_pileup") {
        return;
    }
    let daemon = FuseDaemon::start("fixture");
    let pileup = DaemonPileup::start(&daemon, Stall::Stop, Piles { lookups: 2, ..Piles::default() });
    let stuck = pileup.stuck();
    // SAFETY: kill(2) on the daemon, a child of this process not yet reaped.
    unsafe { libc::kill(daemon.pid() as libc::pid_t, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + scaled(Duration::from_secs(10));
    while stuck.iter().any(|&pid| task_state(pid) == Some('D')) {
        assert!(std::time::Instant::now() < deadline, "still in D after the daemon was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
}
