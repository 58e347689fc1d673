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
pub mod fused;
pub mod http;
pub mod mounts;
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

/// A test's bounded wait, multiplied by `DSTRACE_TEST_TIMEOUT_SCALE` (a number,
/// 1 when unset): the VM tests run this suite in guests emulated by qemu's TCG,
/// several times slower than the host. It only moves the point at which a test
/// gives up on something that did not happen; no test measures time.
pub fn scaled(timeout: Duration) -> Duration {
    let scale = std::env::var("DSTRACE_TEST_TIMEOUT_SCALE").ok().and_then(|s| s.parse::<f64>().ok());
    match scale {
        Some(scale) if scale.is_finite() && scale >= 1.0 => timeout.mul_f64(scale),
        _ => timeout,
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

/// The lines a child prints, read by a thread of their own as they come.
pub fn lines_of(stdout: std::process::ChildStdout) -> Receiver<String> {
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    lines
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
        Dstrace::spawn_with_stderr(args, Stdio::inherit())
    }

    /// Starts `dstrace` with these arguments, its standard error to `stderr`.
    pub fn spawn_with_stderr(args: &[&str], stderr: impl Into<Stdio>) -> Dstrace {
        let mut cmd = Command::new(dstrace_bin());
        cmd.args(args).stderr(stderr);
        Dstrace::spawn_command(cmd)
    }

    /// Starts a command that runs dstrace in its process (`setpriv ... dstrace`,
    /// which `exec`s it).
    pub fn spawn_command(mut cmd: Command) -> Dstrace {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().expect("dstrace starts");
        let lines = lines_of(child.stdout.take().expect("stdout is piped"));
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
        let timeout = scaled(timeout);
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
        let timeout = scaled(Duration::from_secs(30));
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                break status;
            }
            assert!(Instant::now() < deadline, "dstrace did not end within {timeout:?}");
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
        let timeout = scaled(timeout);
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
        Pileup::of(mount, std::path::Path::new("stat"), &mount.path().join("missing"), n)
    }

    /// Holds the mount and starts `n` + 1 processes running `program` (a `stat`,
    /// under any name) on `target`, a name under the mount.
    pub fn of(
        mount: &'m fuse::FuseMount,
        program: &std::path::Path,
        target: &std::path::Path,
        n: usize,
    ) -> Pileup<'m> {
        let (owner, mut children) = hold_with_owner(mount, program, target);
        let stuck: Vec<u32> = (0..n).map(|_| children.spawn(Command::new(program).arg(target))).collect();
        for &pid in &stuck {
            wait_for_state(pid, 'D', Duration::from_secs(10));
        }
        eprintln!("lookup owner: pid {owner}; piled up behind it in D: {stuck:?}");
        Pileup { mount, owner, stuck, children }
    }

    /// Writers piled up behind a held `WRITE` to the mount's one file: the owner
    /// waits for the server in S holding the inode's lock; the next `n` wait for
    /// that lock in D, each in `write(2)` on a file descriptor, which `/proc` alone
    /// attributes to the mount. (On 5.10 and 6.1 their write goes through and they
    /// wait for the lock in `close(2)`, in `fuse_flush`, the descriptor gone.)
    pub fn writers(mount: &'m fuse::FuseMount, n: usize) -> Pileup<'m> {
        let file = mount.path().join(fuse::FILE_NAME);
        let append = format!("echo x >> '{}'", file.display());
        mount.hold();
        let mut children = Children::default();
        // The owner waits for the server in its write(2) (not in S anywhere else on
        // its way there: a slow machine shows those too) before the others start,
        // and they count as piled up once in D in write(2) (not in D at start-up).
        let owner = children.spawn(Command::new("sh").arg("-c").arg(&append));
        wait_until_proc(owner, Duration::from_secs(10), |state, wchan| {
            state == 'S'
                && in_syscall(owner, libc::SYS_write)
                && (wchan.contains("fuse") || wchan.contains("request_wait"))
        });
        let stuck: Vec<u32> =
            (0..n).map(|_| children.spawn(Command::new("sh").arg("-c").arg(&append))).collect();
        for &pid in &stuck {
            wait_until_proc(pid, Duration::from_secs(10), |state, wchan| {
                state == 'D' && (in_syscall(pid, libc::SYS_write) || wchan.contains("fuse_flush"))
            });
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

/// Holds the mount and starts the task (`program` on `target`) that waits for
/// the server (in S), which every later lookup of the same name piles up behind:
/// returns the owner's pid and the owner.
fn hold_with_owner(
    mount: &fuse::FuseMount,
    program: &std::path::Path,
    target: &std::path::Path,
) -> (u32, Children) {
    mount.hold();
    let mut children = Children::default();
    let owner = children.spawn(Command::new(program).arg(target));
    wait_for_state(owner, 'S', Duration::from_secs(10));
    (owner, children)
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
        let target = mount.path().join("missing");
        let (owner, owner_child) = hold_with_owner(mount, std::path::Path::new("stat"), &target);
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
    // Bytes: a command name need not be UTF-8.
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    dstrace::resolve::procfs::parse_stat(&String::from_utf8_lossy(&stat)).map(|stat| stat.state)
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

/// Whether a task is in the system call `number` now (`/proc/PID/syscall`).
fn in_syscall(pid: u32, number: libc::c_long) -> bool {
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    syscall.split_whitespace().next() == Some(number.to_string().as_str())
}

/// Where a task sleeps: `/proc/PID/wchan`, or, where the kernel shows `0` there
/// (5.10 on x86-64 with the ORC unwinder), the function names of its kernel stack
/// from `/proc/PID/stack`, innermost first.
fn where_blocked(pid: u32) -> String {
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    if !wchan.is_empty() && wchan != "0" {
        return wchan;
    }
    let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
    let frames = stack.lines().filter_map(|line| line.split_whitespace().nth(1));
    frames.map(|frame| frame.split('+').next().unwrap_or(frame)).collect::<Vec<_>>().join(" ")
}

/// Whether a `start` record lists `what` (the start of a reason) among what this
/// kernel cannot record.
pub fn skipped(start: &serde_json::Value, what: &str) -> bool {
    let skipped = start["skipped"].as_array().into_iter().flatten();
    skipped.filter_map(serde_json::Value::as_str).any(|reason| reason.starts_with(what))
}

/// Polls a task's state letter and `wchan` until `ok(state, wchan)`; panics after
/// `timeout`.
pub fn wait_until_proc(pid: u32, timeout: Duration, ok: impl Fn(char, &str) -> bool) {
    let timeout = scaled(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        let wchan = where_blocked(pid);
        if task_state(pid).is_some_and(|state| ok(state, &wchan)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} not there within {timeout:?} (state {:?}, wchan {wchan:?})",
            task_state(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a child to end within `deadline` (a bound for "answers in bounded
/// time", not a timing); past it, kills it and panics.
pub fn wait_bounded(child: &mut Child, deadline: Duration, what: &str) -> ExitStatus {
    let deadline = scaled(deadline);
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to its end within `deadline` (a bound for "answers in bounded
/// time", not a timing; killed and failed past it), its standard output and error
/// collected.
pub fn output_bounded(cmd: &mut Command, deadline: Duration, what: &str) -> std::process::Output {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    output_of(child, deadline, what)
}

/// As [`output_bounded`], for a child already started (to know its pid) with its
/// standard output and error piped.
pub fn output_of(mut child: Child, deadline: Duration, what: &str) -> std::process::Output {
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut bytes).unwrap();
        bytes
    });
    let status = wait_bounded(&mut child, deadline, what);
    let mut stderr = Vec::new();
    std::io::Read::read_to_end(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    std::process::Output { status, stdout: reader.join().unwrap(), stderr }
}

/// Stops a recorder of [`start_recording`] as Ctrl-C does; panics unless it
/// ended well.
pub fn stop_recording(mut recorder: Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(recorder.id() as libc::pid_t, libc::SIGINT) };
    let status = recorder.wait().unwrap();
    assert!(status.success(), "dstrace record exited with {status}");
}

/// Starts `dstrace record -o FILE ...` and returns once tracing is live (it says
/// it records), its standard error passed on.
pub fn start_recording(file: &std::path::Path, args: &[&str]) -> Child {
    let mut recorder = Command::new(dstrace_bin())
        .args(["record", "-o", file.to_str().unwrap()])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(recorder.stderr.take().unwrap());
    let (send, notes) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("{line}");
            let _ = send.send(line);
        }
    });
    loop {
        match notes.recv_timeout(Duration::from_secs(60)) {
            Ok(note) if note.starts_with("dstrace: recording to") => return recorder,
            Ok(_) => {}
            Err(err) => {
                let _ = recorder.kill();
                let status = recorder.wait();
                panic!("dstrace record did not start ({err}; {status:?})");
            }
        }
    }
}

/// Parses JSON lines, panicking with the line on error.
pub fn json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}")))
        .collect()
}

/// A command name a hostile user could give a process (a symbolic link named so,
/// executed): `;`, a space, a newline and a terminal escape sequence.
pub const HOSTILE_COMM: &str = "dst;at \n\x1b[1m";

/// A small seeded random number generator (xorshift64) for tests that try
/// random moments and random damage: the seed is printed, and `DSTRACE_TEST_SEED`
/// replays a failure.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `DSTRACE_TEST_SEED`, or from the clock (printed, for a replay).
    pub fn seeded(test: &str) -> Rng {
        let seed =
            std::env::var("DSTRACE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64
            });
        eprintln!("{test}: seed {seed} (DSTRACE_TEST_SEED={seed} replays it)");
        Rng(seed.max(1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The BPF objects a process holds open: program, link and map ids, from the
/// `prog_id:`, `link_id:` and `map_id:` lines of `/proc/PID/fdinfo/*`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BpfIds {
    /// Program ids.
    pub programs: std::collections::BTreeSet<u32>,
    /// Link ids.
    pub links: std::collections::BTreeSet<u32>,
    /// Map ids.
    pub maps: std::collections::BTreeSet<u32>,
}

impl BpfIds {
    /// What `pid` holds now (nothing once it is gone).
    pub fn of(pid: u32) -> BpfIds {
        let mut ids = BpfIds::default();
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return ids };
        for info in fds.filter_map(Result::ok).filter_map(|fd| std::fs::read_to_string(fd.path()).ok()) {
            let field = |name: &str| {
                info.lines().find_map(|line| line.strip_prefix(name)?.trim().parse::<u32>().ok())
            };
            // A link's fdinfo names its program too: count the link only.
            if let Some(link) = field("link_id:") {
                ids.links.insert(link);
            } else if let Some(program) = field("prog_id:") {
                ids.programs.insert(program);
            } else if let Some(map) = field("map_id:") {
                ids.maps.insert(map);
            }
        }
        ids
    }

    /// Adds what `other` holds.
    pub fn extend(&mut self, other: BpfIds) {
        self.programs.extend(other.programs);
        self.links.extend(other.links);
        self.maps.extend(other.maps);
    }

    /// Those of these ids the kernel still has loaded.
    pub fn still_loaded(&self) -> BpfIds {
        BpfIds {
            programs: aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .map(|program| program.id())
                .filter(|id| self.programs.contains(id))
                .collect(),
            links: aya::programs::loaded_links()
                .filter_map(Result::ok)
                .map(|link| link.id())
                .filter(|id| self.links.contains(id))
                .collect(),
            maps: aya::maps::loaded_maps()
                .filter_map(Result::ok)
                .map(|map| map.id())
                .filter(|id| self.maps.contains(id))
                .collect(),
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.programs.is_empty() && self.links.is_empty() && self.maps.is_empty()
    }
}

/// The names of the BPF programs `pid` has attached: those its links run (each
/// link's `/proc/PID/fdinfo` names its program), as the kernel keeps them (at most
/// 15 bytes).
pub fn attached_programs(pid: u32) -> std::collections::BTreeSet<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return Default::default() };
    let linked: std::collections::BTreeSet<u32> = fds
        .filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter(|info| info.lines().any(|line| line.starts_with("link_id:")))
        .filter_map(|info| info.lines().find_map(|line| line.strip_prefix("prog_id:")?.trim().parse().ok()))
        .collect();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|program| linked.contains(&program.id()))
        .filter_map(|program| program.name_as_str().map(str::to_owned))
        .collect()
}

/// Samples the BPF objects a process holds until it ends (every 20 ms), so that
/// what it held is known even when it is killed: [`BpfWatch::finish`] returns
/// the union.
pub struct BpfWatch {
    thread: std::thread::JoinHandle<BpfIds>,
}

impl BpfWatch {
    /// Starts watching `pid`.
    pub fn start(pid: u32) -> BpfWatch {
        let thread = std::thread::spawn(move || {
            let mut seen = BpfIds::default();
            while task_state(pid).is_some_and(|state| state != 'Z') {
                seen.extend(BpfIds::of(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        BpfWatch { thread }
    }

    /// Waits for the process to end (reap it first) and returns what it held.
    pub fn finish(self) -> BpfIds {
        self.thread.join().expect("the watcher does not panic")
    }

    /// Asserts that nothing `ids` names is still loaded, giving the kernel up to
    /// 10 s to free what the closed descriptors held (a generous bound: freeing is
    /// asynchronous, after an RCU grace period).
    pub fn assert_all_freed(ids: &BpfIds, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = ids.still_loaded();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: still loaded 10 s after it ended: {left:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A scratch directory under the temporary directory (`dstrace-NAME-PID`),
/// removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// Creates it afresh.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("dstrace-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// The directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.0
    }

    /// A path in it.
    pub fn path(&self, name: impl AsRef<std::path::Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cgroup v2 directory made for a test (`dstrace-test-NAME-PID` under the cgroup
/// v2 root), removed on drop (once its tasks are gone: it waits up to 5 s).
pub struct TestCgroup(PathBuf);

impl TestCgroup {
    /// Creates it.
    pub fn new(name: &str) -> TestCgroup {
        let mounts = dstrace::resolve::mounts::read().unwrap();
        let root =
            dstrace::resolve::mounts::cgroup2_root(&mounts).expect("cgroup v2 is mounted").to_path_buf();
        let dir = root.join(format!("dstrace-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a cgroup");
        TestCgroup(dir)
    }

    /// Moves a process into it.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("move a task into the cgroup");
    }

    /// Its directory.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// Its path as `/proc/PID/cgroup` names it (`/dstrace-test-NAME-PID`), from
    /// the cgroup v2 root.
    pub fn name(&self) -> String {
        format!("/{}", self.0.file_name().unwrap().to_string_lossy())
    }

    /// Its id (the directory's inode number, what `cgroup_id` reports).
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&self.0).unwrap().ino()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The children of a process (from the `ppid` of `/proc/*/stat`).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| dstrace::resolve::procfs::parse_stat(&stat))
                .is_some_and(|stat| stat.ppid == parent)
        })
        .collect()
}

/// The capability sets and `NoNewPrivs` of every thread of a process, as
/// `/proc/PID/task/TID/status` prints them (`CapEff: 0000000000280004`, ...).
pub fn thread_capabilities(pid: u32) -> Vec<std::collections::BTreeMap<String, String>> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter_map(|line| line.split_once(':'))
                .filter(|(key, _)| key.starts_with("Cap") || *key == "NoNewPrivs")
                .map(|(key, value)| (key.to_owned(), value.trim().to_owned()))
                .collect()
        })
        .collect()
}

/// Tasks under a hostile command name (`comm`: a link to `stat` so named, in
/// `dir`) piled up behind the held mount on its entry `name`: the first waits for
/// the server in S, the others for it in D.
pub fn hostile_pileup<'m>(
    mount: &'m fuse::FuseMount,
    dir: &Scratch,
    comm: &std::ffi::OsStr,
    name: &std::ffi::OsStr,
    n: usize,
) -> Pileup<'m> {
    let program = dir.path(comm);
    std::os::unix::fs::symlink(std::path::Path::new("/usr/bin/stat"), &program).unwrap();
    Pileup::of(mount, &program, &mount.path().join(name), n)
}

/// `report`'s standard error without its warning that the kernel side lost data
/// while the recording was made (a lost stack on a busy host is counted and said,
/// not a fault of the recording): what the tests of damage and refusals count.
pub fn without_kernel_losses(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|line| !line.starts_with("dstrace: warning: the kernel side lost data"))
        .map(|line| format!("{line}\n"))
        .collect()
}
