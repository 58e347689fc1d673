//! `dstrace-test-fused`: the test FUSE server ([`dstrace_tests::fuse`]) in a
//! process of its own, so that a test can stop it with `kill -STOP` (the real
//! incident: a daemon stopped, or its machine gone) and two mounts can have two
//! daemons. Started and ended by [`dstrace_tests::fused::FuseDaemon`].
//!
//! `dstrace-test-fused NAME [--private-mount-namespace]` mounts a filesystem of
//! type `fuse.NAME` (source `NAME`) and prints `ready PID MOUNT_POINT` on standard
//! output. With `--private-mount-namespace` it first moves to a mount namespace of
//! its own (`unshare(CLONE_NEWNS)`, `/` made private recursively), mounts a tmpfs
//! on a fresh directory `dstrace-ns-NAME-PID` of the temporary directory and mounts
//! the filesystem on `mnt` in it: a mount point the host does not have (the host
//! sees that directory empty).
//!
//! Then it reads commands, a line each, and answers each with a line: `hold`
//! (stop answering lookups and writes; `held`), `release` (answer them again;
//! `released`). At the end of its standard input it unmounts and exits. It dies
//! with the thread that started it (`PR_SET_PDEATHSIG`), so that a test killed
//! outright leaves no daemon stopped behind it: its `/dev/fuse` closes, which fails
//! every request of its connection.

use std::{
    io::{BufRead as _, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use dstrace_tests::{fuse::FuseMount, mounts};

fn main() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dstrace-test-fused: {err}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: dstrace-test-fused NAME [--private-mount-namespace]";
    let name = args.next().ok_or(usage)?;
    let private = match args.next().as_deref() {
        None => false,
        Some("--private-mount-namespace") => true,
        Some(_) => return Err(usage.into()),
    };
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integers only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    let pid = std::process::id();
    let dir = if private {
        private_mount_namespace(&name, pid)?
    } else {
        std::env::temp_dir().join(format!("dstrace-test-{name}-{pid}"))
    };
    let mount =
        FuseMount::at(dir, &name).map_err(|err| format!("cannot mount the FUSE filesystem: {err}"))?;
    // Ready once the kernel's INIT is answered: a request made before that waits
    // for the connection (in D in `fuse_get_req`), not for an answer. Looking at
    // the mount's root needs its GETATTR answered, which comes after INIT.
    std::fs::metadata(mount.path())
        .map_err(|err| format!("the new mount does not answer: {}: {err}", mount.path().display()))?;
    let mut out = std::io::stdout().lock();
    let say = |out: &mut std::io::StdoutLock<'_>, line: &str| -> Result<(), String> {
        writeln!(out, "{line}").and_then(|()| out.flush()).map_err(|err| format!("standard output: {err}"))
    };
    say(&mut out, &format!("ready {pid} {}", mount.path().display()))?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|err| format!("standard input: {err}"))?;
        match line.trim() {
            "hold" => {
                mount.hold();
                say(&mut out, "held")?;
            }
            "release" => {
                mount.release();
                say(&mut out, "released")?;
            }
            other => say(&mut out, &format!("unknown command {other:?}"))?,
        }
    }
    // Dropping the mount answers what is held, detaches it and waits for the
    // connection to end.
    drop(mount);
    Ok(())
}

/// Moves this process (single-threaded still: `unshare` moves the calling thread
/// only) to a new mount namespace with `/` private, mounts a tmpfs on a fresh
/// directory of the temporary directory there, and returns the mount point to
/// make in it.
fn private_mount_namespace(name: &str, pid: u32) -> Result<PathBuf, String> {
    // This process has no other thread yet.
    mounts::private_namespace().map_err(|err| format!("cannot have a private mount namespace: {err}"))?;
    let top = std::env::temp_dir().join(format!("dstrace-ns-{name}-{pid}"));
    std::fs::create_dir_all(&top).map_err(|err| format!("cannot create {}: {err}", top.display()))?;
    mounts::mount(
        Some("dstrace-test-ns"),
        &top,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("size=1m"),
    )
    .map_err(|err| format!("cannot mount a tmpfs on {}: {err}", top.display()))?;
    Ok(top.join("mnt"))
}
