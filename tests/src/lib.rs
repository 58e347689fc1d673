//! Support for dstrace's integration and CLI tests.
//!
//! The tests run the real `dstrace` binary (built by `cargo xtask test` before the
//! tests) against the real kernel, and make real D states with [`fuse::FuseMount`].
//! Tests that need root fail loudly in CI (`CI` set) and skip with a printed reason
//! elsewhere, through [`require_root`].
// Test code: a panic with its message is how a failure is reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod dload;
pub mod fuse;
pub mod tmux;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

/// The `dstrace` binary under test: `$DSTRACE_BIN`, or the one next to the test
/// executable's directory (`target/<profile>/dstrace`).
pub fn dstrace_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("DSTRACE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/dstrace
    let bin = exe.parent().and_then(|deps| deps.parent()).map(|dir| dir.join("dstrace"));
    match bin {
        Some(bin) if bin.is_file() => bin,
        _ => panic!(
            "the dstrace binary is not built: run `cargo xtask test`, or `cargo build -p dstrace` first"
        ),
    }
}

/// Whether this process is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True when the test may go on as root. Without root it panics in CI, where
/// every test must run, and returns false with a printed reason elsewhere.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test} needs root, and CI must run it: run the tests as root");
    eprintln!("skipped {test}: needs root (run `cargo xtask test`, which uses sudo)");
    false
}

/// A program the tests feed dstrace's output to (`go`, `inferno-flamegraph`), from
/// `PATH` or cargo's `bin` directory; `cargo xtask setup` installs them. Missing,
/// it panics in CI and returns `None` with a printed reason elsewhere.
pub fn require_tool(test: &str, name: &str) -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin"));
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} needs {name}, and CI must run it: `cargo xtask setup` installs it"
        );
        eprintln!("skipped {test}: {name} is not installed (`cargo xtask setup` installs it)");
    }
    found
}

/// A running `dstrace`, its standard output read line by line.
pub struct Dstrace {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Dstrace {
    /// Starts `dstrace` with these arguments.
    pub fn spawn(args: &[&str]) -> Dstrace {
        let mut child = Command::new(dstrace_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dstrace starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Dstrace { child, lines, seen: Vec::new() }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a line satisfies `pred` and returns it; panics after `timeout`
    /// or if dstrace ends first.
    pub fn wait_for_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.wait_until(timeout, |seen| seen.last().is_some_and(|line| pred(line)));
        self.seen.last().cloned().unwrap_or_default()
    }

    /// Waits until every line printed so far satisfies `done`; panics after
    /// `timeout` or if dstrace ends first.
    pub fn wait_until(&mut self, timeout: Duration, mut done: impl FnMut(&[String]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "dstrace did not print what was expected within {timeout:?}; got:\n{}",
                        self.seen.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!(
                        "dstrace ended ({status:?}) before printing what was expected; got:\n{}",
                        self.seen.join("\n")
                    )
                }
            }
        }
    }

    /// Sends SIGINT (Ctrl-C) and returns the exit status and every line printed.
    pub fn interrupt(self) -> (ExitStatus, Vec<String>) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        self.finish()
    }

    /// Waits for dstrace to end by itself (for a bounded time) and returns its exit
    /// status and every line printed.
    pub fn finish(mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                break status;
            }
            assert!(Instant::now() < deadline, "dstrace did not end within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut lines = std::mem::take(&mut self.seen);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            lines.push(line);
        }
        (status, lines)
    }
}

impl Drop for Dstrace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Child processes killed and reaped on drop, so that a failing test leaves none.
#[derive(Default)]
pub struct Children(pub Vec<Child>);

impl Children {
    /// Starts a command and keeps it.
    pub fn spawn(&mut self, cmd: &mut Command) -> u32 {
        let child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
        let pid = child.id();
        self.0.push(child);
        pid
    }

    /// Waits for every child to end, within `timeout`.
    pub fn wait_all(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for child in &mut self.0 {
            while child.try_wait().expect("waitpid").is_none() {
                assert!(Instant::now() < deadline, "child {} did not end within {timeout:?}", child.id());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Children {
    /// Kills and reaps every child, waiting 10 s at most: a task stuck in D
    /// ignores SIGKILL, and a test must not hang on it (release its mount first).
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in &mut self.0 {
            let _ = child.kill();
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Tasks piled up in D behind a FUSE server that stopped answering.
///
/// (Or, with [`Pileup::writers`], writers behind a held write.)
///
/// The first task to look the name up waits for the server in S
/// (`request_wait_answer`); the next `stuck.len()` wait for it in D
/// (`d_alloc_parallel`). Release the mount to let them all go.
/// Dropping it releases the mount before ending the tasks (a task in D cannot
/// be killed).
pub struct Pileup<'m> {
    mount: &'m fuse::FuseMount,
    /// The task that waits for the server (in S).
    pub owner: u32,
    /// The tasks in D behind it.
    pub stuck: Vec<u32>,
    /// All of them, killed on drop.
    pub children: Children,
}

impl<'m> Pileup<'m> {
    /// Holds the mount and starts `n` + 1 `stat` processes on a missing name.
    pub fn start(mount: &'m fuse::FuseMount, n: usize) -> Pileup<'m> {
        let (target, owner, mut children) = hold_with_owner(mount);
        let stuck: Vec<u32> = (0..n).map(|_| children.spawn(Command::new("stat").arg(&target))).collect();
        for &pid in &stuck {
            wait_for_state(pid, 'D', Duration::from_secs(10));
        }
        eprintln!("lookup owner: pid {owner}; piled up behind it in D: {stuck:?}");
        Pileup { mount, owner, stuck, children }
    }

    /// Writers piled up behind a held `WRITE` to the mount's one file: the owner
    /// waits for the server in S holding the inode's lock; the next `n` wait for
    /// that lock in D, each in `write(2)` on a file descriptor, which `/proc` alone
    /// attributes to the mount.
    pub fn writers(mount: &'m fuse::FuseMount, n: usize) -> Pileup<'m> {
        let file = mount.path().join(fuse::FILE_NAME);
        let append = format!("echo x >> '{}'", file.display());
        mount.hold();
        let mut children = Children::default();
        let owner = children.spawn(Command::new("sh").arg("-c").arg(&append));
        wait_for_state(owner, 'S', Duration::from_secs(10));
        let stuck: Vec<u32> =
            (0..n).map(|_| children.spawn(Command::new("sh").arg("-c").arg(&append))).collect();
        for &pid in &stuck {
            wait_until_proc(pid, Duration::from_secs(10), |state, _| state == 'D');
        }
        eprintln!("writer holding the inode lock: pid {owner}; piled up behind it in D: {stuck:?}");
        Pileup { mount, owner, stuck, children }
    }
}

impl Drop for Pileup<'_> {
    fn drop(&mut self) {
        self.mount.release();
    }
}

/// Holds the mount and starts the task that waits for the server (in S), which
/// every later lookup of the same name piles up behind: returns the name, the
/// owner's pid and the owner.
fn hold_with_owner(mount: &fuse::FuseMount) -> (PathBuf, u32, Children) {
    let target = mount.path().join("missing");
    mount.hold();
    let mut children = Children::default();
    let owner = children.spawn(Command::new("stat").arg(&target));
    wait_for_state(owner, 'S', Duration::from_secs(10));
    (target, owner, children)
}

/// Tasks that pile up in D behind a held FUSE mount when told to, so that their
/// pids are known before they block (a filter can name them): each is a shell
/// waiting on its stdin that then `exec`s `stat` (same pid, comm `stat`).
/// Dropping it releases the mount before ending the tasks.
pub struct GatedPileup<'m> {
    mount: &'m fuse::FuseMount,
    /// The task that waits for the server (in S).
    pub owner: u32,
    _owner: Children,
    gated: Vec<Child>,
}

impl<'m> GatedPileup<'m> {
    /// Holds the mount, starts the owner and `n` gated tasks, not yet blocked.
    pub fn prepare(mount: &'m fuse::FuseMount, n: usize) -> GatedPileup<'m> {
        let (target, owner, owner_child) = hold_with_owner(mount);
        let gated = (0..n)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", r#"read go; exec stat "$0""#])
                    .arg(&target)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn sh")
            })
            .collect();
        GatedPileup { mount, owner, _owner: owner_child, gated }
    }

    /// The gated tasks' pids.
    pub fn pids(&self) -> Vec<u32> {
        self.gated.iter().map(Child::id).collect()
    }

    /// Lets every gated task go and waits until each is in D.
    pub fn block(&mut self) {
        for child in &mut self.gated {
            child.stdin.take().expect("stdin").write_all(b"go\n").expect("write");
        }
        for pid in self.pids() {
            wait_for_state(pid, 'D', Duration::from_secs(10));
        }
    }

    /// Releases the mount and waits for every gated task to end.
    pub fn release(&mut self) {
        self.mount.release();
        for child in &mut self.gated {
            child.wait().expect("stat ends");
        }
    }
}

impl Drop for GatedPileup<'_> {
    fn drop(&mut self) {
        self.mount.release();
        for child in &mut self.gated {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The state letter of a task (`/proc/PID/stat`), if it exists.
pub fn task_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    dstrace::procfs::parse_stat(&stat).map(|stat| stat.state)
}

/// Waits until a task is in `state` and blocked in FUSE or the dcache (not still
/// starting up); panics after `timeout`.
pub fn wait_for_state(pid: u32, state: char, timeout: Duration) {
    wait_until_proc(pid, timeout, |now, wchan| {
        now == state
            && (wchan.contains("fuse")
                || wchan.contains("request_wait_answer")
                || wchan.contains("d_alloc_parallel"))
    });
}

/// Polls a task's state letter and `wchan` until `ok(state, wchan)`; panics after
/// `timeout`.
pub fn wait_until_proc(pid: u32, timeout: Duration, ok: impl Fn(char, &str) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        if task_state(pid).is_some_and(|state| ok(state, &wchan)) {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} not there within {timeout:?} (wchan {wchan:?})");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Parses JSON lines, panicking with the line on error.
pub fn json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}")))
        .collect()
}
