//! A FUSE daemon in a process of its own (`dstrace-test-fused`), and tasks piled
//! up in D behind it once it stops answering: the incident dstrace is started
//! *after*.
//!
//! [`FuseDaemon`] starts the daemon (optionally in a private mount namespace, at a
//! mount point the host does not have), learns its pid and mount, stops it with
//! `SIGSTOP` ([`FuseDaemon::stop`], the real incident) or has it hold its answers
//! while it runs ([`FuseDaemon::hold`]: a daemon that does not answer), and in
//! `Drop` always resumes and ends it, so the mount goes away even when a test
//! panics. [`DaemonPileup`] makes the tasks: lookups of a missing name (the first
//! waits for the daemon in S in `request_wait_answer`, the others in D in
//! `d_alloc_parallel`), writers of the mount's one file (the first waits for the
//! daemon in S in `write(2)` holding the inode's `i_rwsem`, the others for that
//! lock in D in `write(2)`) and openers of a new name (the first waits for the
//! daemon in S in `openat(2)` holding the directory's `i_rwsem`, the others for
//! that lock in D), each checked in `/proc` to be where it should be.
//!
//! A handle must be dropped on the thread that made it: the daemon dies with that
//! thread (`PR_SET_PDEATHSIG`), which is also what frees a pile-up if the test
//! process is killed outright (the daemon's `/dev/fuse` closes, which fails every
//! request of its connection).

use std::{
    ffi::OsStr,
    fs::File,
    io::Write as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{mpsc::Receiver, Mutex},
    time::{Duration, Instant},
};

use crate::{fuse::FILE_NAME, in_syscall, lines_of, scaled, task_state, wait_for_state, wait_until_proc};

/// How long a step of setting a pile-up up may take before the test gives up.
const STEP: Duration = Duration::from_secs(10);

/// The `dstrace-test-fused` binary: `$DSTRACE_TEST_FUSED`, or the one cargo built
/// beside the test binaries (`target/<profile>/`), or one beside the test binary
/// itself (how the VM guests carry it).
pub fn fused_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("DSTRACE_TEST_FUSED") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    let beside =
        |dir: Option<&Path>| dir.map(|dir| dir.join("dstrace-test-fused")).filter(|bin| bin.is_file());
    let deps = exe.parent();
    beside(deps.and_then(Path::parent)).or_else(|| beside(deps)).unwrap_or_else(|| {
        panic!("the dstrace-test-fused binary is not built: run `cargo xtask test`, or `cargo build -p dstrace-tests`")
    })
}

/// What the daemon's mount is, read from its `/proc/PID/mountinfo` (its mount
/// namespace's view) once it is mounted.
#[derive(Clone, Debug)]
pub struct MountFacts {
    /// The mount ID (first field of `mountinfo`).
    pub id: u32,
    /// `major:minor` of its superblock; the minor is the FUSE connection's number.
    pub dev: (u32, u32),
    /// `fuse.NAME`.
    pub fstype: String,
    /// `NAME`.
    pub source: String,
    /// The inode number of its mount namespace (`readlink /proc/PID/ns/mnt`).
    pub namespace: u64,
}

/// How a daemon stops answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    /// `kill -STOP`: the daemon is stopped (state `T`), its requests never read.
    Stop,
    /// It runs (state `S`) but holds every lookup and write it reads.
    Hold,
}

/// The daemon's standard input and the lines it printed, for its commands.
struct Io {
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    held: bool,
}

/// A `dstrace-test-fused` process serving one FUSE mount.
pub struct FuseDaemon {
    child: Child,
    pid: u32,
    path: PathBuf,
    mount: MountFacts,
    /// Its mount namespace (`/proc/PID/ns/mnt`), open while it lives: what
    /// [`FuseDaemon::command`] enters, when private.
    namespace: Option<File>,
    /// The host's directory under which its private namespace mounted a tmpfs.
    host_dir: Option<PathBuf>,
    io: Mutex<Io>,
}

impl FuseDaemon {
    /// Starts a daemon serving a mount of type `fuse.NAME` on a fresh directory of
    /// the temporary directory, in the host's mount namespace.
    pub fn start(name: &str) -> FuseDaemon {
        FuseDaemon::spawn(name, false)
    }

    /// Starts a daemon in a mount namespace of its own, serving a mount there at a
    /// path the host does not have (`$TMPDIR/dstrace-ns-NAME-PID/mnt`, under a tmpfs
    /// only that namespace has). Tasks made with [`FuseDaemon::command`] run in it.
    pub fn start_in_private_namespace(name: &str) -> FuseDaemon {
        FuseDaemon::spawn(name, true)
    }

    fn spawn(name: &str, private: bool) -> FuseDaemon {
        let mut cmd = Command::new(fused_bin());
        cmd.arg(name);
        if private {
            cmd.arg("--private-mount-namespace");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dstrace-test-fused starts");
        let lines = lines_of(child.stdout.take().expect("stdout is piped"));
        let stdin = child.stdin.take();
        let ready = match lines.recv_timeout(scaled(STEP)) {
            Ok(line) => line,
            Err(err) => {
                let _ = child.kill();
                let status = child.wait();
                panic!("dstrace-test-fused {name} did not mount ({err}; {status:?})");
            }
        };
        let mut words = ready.splitn(3, ' ');
        let (Some("ready"), Some(pid), Some(path)) = (words.next(), words.next(), words.next()) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dstrace-test-fused {name} said {ready:?}, not `ready PID PATH`");
        };
        let pid: u32 = pid.parse().expect("a pid");
        assert_eq!(pid, child.id(), "the daemon is the process started");
        let path = PathBuf::from(path);
        let namespace = namespace_of(pid);
        let mountinfo = std::fs::read(format!("/proc/{pid}/mountinfo")).expect("its mountinfo");
        let mount = dstrace::resolve::mounts::parse_bytes(&mountinfo)
            .into_iter()
            .find(|m| m.mount_point == path)
            .unwrap_or_else(|| {
                let mountinfo = String::from_utf8_lossy(&mountinfo);
                panic!("{} is not in the daemon's mountinfo:\n{mountinfo}", path.display())
            });
        let mount = MountFacts {
            id: mount.id,
            dev: mount.dev,
            fstype: mount.fs_type,
            source: mount.source,
            namespace,
        };
        let host_dir = private.then(|| path.parent().expect("mnt under the tmpfs").to_path_buf());
        let namespace = private
            .then(|| File::open(format!("/proc/{pid}/ns/mnt")).expect("open the daemon's mount namespace"));
        eprintln!(
            "FUSE daemon {name}: pid {pid}, {} {} (mount ID {}, dev {}:{}, mount namespace {})",
            mount.fstype,
            path.display(),
            mount.id,
            mount.dev.0,
            mount.dev.1,
            mount.namespace
        );
        FuseDaemon {
            child,
            pid,
            path,
            mount,
            namespace,
            host_dir,
            io: Mutex::new(Io { stdin, lines, held: false }),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its command name (`/proc/PID/comm`).
    pub fn comm(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid)).expect("its comm").trim_end().to_owned()
    }

    /// The mount point, as its mount namespace (and its tasks') sees it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What its mount is.
    pub fn mount(&self) -> &MountFacts {
        &self.mount
    }

    /// Whether it (and the tasks it makes) live in a mount namespace of their own.
    pub fn is_private(&self) -> bool {
        self.namespace.is_some()
    }

    /// A command that runs in the daemon's mount namespace (for a private one, it
    /// enters it with `setns` before `exec`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if let Some(namespace) = &self.namespace {
            let fd = namespace.as_raw_fd();
            // SAFETY: the closure runs in the forked child before exec and only makes
            // the setns system call (async-signal-safe, no allocation) on a descriptor
            // this handle keeps open.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNS) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        cmd
    }

    /// `kill -STOP`: returns once every thread of it is stopped (`T`).
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
        let timeout = scaled(STEP);
        let deadline = Instant::now() + timeout;
        while !self.threads_in(|state| state == 'T') {
            assert!(Instant::now() < deadline, "daemon {} not stopped within {timeout:?}", self.pid);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Has it hold every lookup and write it reads from now on (it runs on).
    pub fn hold(&self) {
        let mut io = self.io.lock().unwrap_or_else(|poison| poison.into_inner());
        io.held = true;
        command(&mut io, self.pid, "hold", "held").unwrap_or_else(|err| panic!("{err}"));
    }

    /// `kill -CONT`, and answers what it holds: the pile-ups behind it end. (It
    /// does not panic, being what Drop calls: a daemon that does not take the
    /// command is said so, and ended by its own Drop.)
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
        let mut io = self.io.lock().unwrap_or_else(|poison| poison.into_inner());
        if io.held {
            if let Err(err) = command(&mut io, self.pid, "release", "released") {
                eprintln!("{err}");
            }
            io.held = false;
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child, not reaped before Drop.
        unsafe { libc::kill(self.pid as libc::pid_t, signal) };
    }

    /// Whether every thread's state satisfies `ok`.
    fn threads_in(&self, ok: impl Fn(char) -> bool) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else { return false };
        tasks.filter_map(Result::ok).all(|task| {
            std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|stat| dstrace::resolve::procfs::parse_stat(&stat))
                .is_some_and(|stat| ok(stat.state))
        })
    }

    /// Writes 1 to the connection's fusectl `abort` (mounting fusectl first if it is
    /// not): every pending request of the mount fails at once. The last resort.
    pub fn abort_connection(&self) {
        let connections = Path::new("/sys/fs/fuse/connections");
        let abort = connections.join(self.mount.dev.1.to_string()).join("abort");
        if !abort.exists() {
            let _ = Command::new("mount").args(["-t", "fusectl", "none"]).arg(connections).status();
        }
        if let Err(err) = std::fs::write(&abort, "1") {
            eprintln!("cannot abort the FUSE connection ({}): {err}", abort.display());
        }
    }

    /// Waits up to `timeout` for the daemon to end; whether it did.
    fn ended_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return true,
                Ok(None) if Instant::now() >= deadline => return false,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Sends a command to the daemon and waits for its answer.
fn command(io: &mut Io, pid: u32, command: &str, answer: &str) -> Result<(), String> {
    let stdin = io.stdin.as_mut().ok_or(format!("daemon {pid}: its standard input is closed"))?;
    writeln!(stdin, "{command}")
        .and_then(|()| stdin.flush())
        .map_err(|err| format!("daemon {pid} does not read {command:?}: {err}"))?;
    let timeout = scaled(STEP);
    match io.lines.recv_timeout(timeout) {
        Ok(line) if line == answer => Ok(()),
        Ok(line) => Err(format!("daemon {pid} answered {command:?} with {line:?}")),
        Err(err) => Err(format!("daemon {pid} did not answer {command:?} within {timeout:?}: {err}")),
    }
}

impl Drop for FuseDaemon {
    /// Resumes the daemon and ends it (closing its standard input: it answers what
    /// it holds, unmounts and exits), then removes its directories. A daemon that
    /// does not end is killed (its `/dev/fuse` closes, failing every request), and,
    /// as a last resort, its connection aborted through fusectl.
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        {
            let mut io = self.io.lock().unwrap_or_else(|poison| poison.into_inner());
            io.stdin = None;
        }
        if !self.ended_within(scaled(STEP)) {
            eprintln!("daemon {} did not end on its own: killing it", self.pid);
            let _ = self.child.kill();
            if !self.ended_within(scaled(STEP)) {
                self.abort_connection();
                let _ = self.child.kill();
                let _ = self.ended_within(scaled(Duration::from_secs(5)));
            }
        }
        if self.host_dir.is_none() {
            // Killed, it could not unmount: its mount is dead (every request fails);
            // detach it. Unmounted already, this fails with EINVAL.
            if let Ok(path) =
                std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(self.path.as_os_str()))
            {
                // SAFETY: a valid NUL-terminated path.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
            let _ = std::fs::remove_dir(&self.path);
        }
        if let Some(dir) = &self.host_dir {
            // The host sees it empty: the tmpfs over it was the namespace's only.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The inode number of a task's mount namespace (`readlink /proc/PID/ns/mnt`:
/// `mnt:[4026531841]`).
pub fn namespace_of(pid: u32) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("readlink /proc/PID/ns/mnt");
    let link = link.to_string_lossy();
    link.strip_prefix("mnt:[")
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a mount namespace link: {link}"))
}

/// The cgroup v2 path of a task (the `0::` line of `/proc/PID/cgroup`).
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| line.strip_prefix("0::")).map(str::to_owned)
}

/// One pile-up: the task that waits for the daemon (in S) and those that wait for
/// it (in D).
#[derive(Clone, Debug)]
pub struct Pile {
    /// The task that waits for the daemon's answer, in S in `request_wait_answer`.
    pub owner: u32,
    /// The tasks in D behind it.
    pub stuck: Vec<u32>,
    /// The path they all look up or write, as their mount namespace names it.
    pub target: PathBuf,
}

/// How many tasks of each kind to pile up behind a daemon (each kind asked for
/// gets one more: the task that waits for the daemon, in S).
#[derive(Clone, Copy, Debug, Default)]
pub struct Piles {
    /// `stat` of a missing name: in D in `d_alloc_parallel`, behind the first one's
    /// `LOOKUP`.
    pub lookups: usize,
    /// `sh` writing to the mount's one file on a descriptor opened before: in D in
    /// `write(2)` for the file's `i_rwsem`, which the first holds for its `WRITE`.
    pub writers: usize,
    /// `sh` opening a new name for appending (`echo x >> NEW`, `O_CREAT`): in D in
    /// `openat(2)` (`path_openat`) for the directory's `i_rwsem`, which the first
    /// holds for its `LOOKUP` (the incident of issue 17). Not beside `lookups`:
    /// both need the directory (the lookups' first holds it shared).
    pub openers: usize,
}

/// Lookups, writers and openers piled up behind a daemon that stopped answering.
///
/// Dropping it resumes the daemon, which lets them all go, then ends them.
pub struct DaemonPileup<'d> {
    daemon: &'d FuseDaemon,
    /// `stat TARGET` of a missing name (when asked for).
    pub lookups: Option<Pile>,
    /// `sh` writing to the mount's one file (when asked for).
    pub writers: Option<Pile>,
    /// `sh` opening a new name of the mount for appending (when asked for).
    pub openers: Option<Pile>,
    children: Vec<Child>,
}

impl<'d> DaemonPileup<'d> {
    /// Stops the daemon as `stall` says and piles the tasks `piles` asks for up
    /// behind it, in its mount namespace; returns once `/proc` shows each where it
    /// should be. The daemon must be answering when called.
    ///
    /// Writers open the file while the daemon still answers (`exec 3>>FILE`, then
    /// they wait for a line on their standard input): the open needs the daemon,
    /// the write then waits for it. One write goes through first, so that the
    /// kernel has asked its one `GETXATTR` (answered `ENOSYS`) and the first
    /// blocked writer waits for its `WRITE` itself.
    pub fn start(daemon: &'d FuseDaemon, stall: Stall, piles: Piles) -> DaemonPileup<'d> {
        assert!(piles.lookups == 0 || piles.openers == 0, "lookups and openers need a mount each");
        let mut pileup =
            DaemonPileup { daemon, lookups: None, writers: None, openers: None, children: Vec::new() };
        let file = daemon.path().join(FILE_NAME);
        let mut gated = Vec::new();
        if piles.writers > 0 {
            let mut primer = daemon.command("sh");
            primer.args(["-c", r#"echo x >> "$0""#]).arg(&file);
            let mut primer = primer.stdin(Stdio::null()).spawn().expect("spawn sh");
            let status = crate::wait_bounded(&mut primer, STEP, "a first write to the FUSE file");
            assert!(status.success(), "a first write to {} failed: {status}", file.display());
            for _ in 0..=piles.writers {
                let mut writer = daemon.command("sh");
                writer.args(["-c", r#"exec 3>>"$0" && read go && echo x >&3"#]).arg(&file);
                let child = writer
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn sh");
                gated.push(child.id());
                pileup.children.push(child);
            }
            for &pid in &gated {
                wait_for_fd(pid, 3, &file);
            }
        }
        match stall {
            Stall::Stop => daemon.stop(),
            Stall::Hold => daemon.hold(),
        }
        if piles.lookups > 0 {
            let target = daemon.path().join("missing");
            let owner = pileup.spawn(daemon.command("stat").arg(&target));
            wait_for_state(owner, 'S', STEP);
            let stuck: Vec<u32> =
                (0..piles.lookups).map(|_| pileup.spawn(daemon.command("stat").arg(&target))).collect();
            for &pid in &stuck {
                wait_for_state(pid, 'D', STEP);
            }
            eprintln!("lookup owner: pid {owner}; piled up behind it in D: {stuck:?}");
            pileup.lookups = Some(Pile { owner, stuck, target });
        }
        if let Some((&owner, stuck)) = gated.split_first() {
            pileup.go(owner);
            wait_until_proc(owner, STEP, |state, wchan| {
                state == 'S'
                    && in_syscall(owner, libc::SYS_write)
                    && (wchan.contains("fuse") || wchan.contains("request_wait"))
            });
            for &pid in stuck {
                pileup.go(pid);
            }
            for &pid in stuck {
                // On 5.10 and 6.1 the write goes through and they wait for the lock
                // in close(2), in fuse_flush (as for `Pileup::writers`).
                wait_until_proc(pid, STEP, |state, wchan| {
                    state == 'D' && (in_syscall(pid, libc::SYS_write) || wchan.contains("fuse_flush"))
                });
            }
            eprintln!("writer holding the inode lock: pid {owner}; piled up behind it in D: {stuck:?}");
            pileup.writers = Some(Pile { owner, stuck: stuck.to_vec(), target: file });
        }
        if piles.openers > 0 {
            let target = daemon.path().join("created");
            let opener = || {
                let mut sh = daemon.command("sh");
                sh.args(["-c", r#"echo x >> "$0""#]).arg(&target);
                sh
            };
            let owner = pileup.spawn(&mut opener());
            wait_until_proc(owner, STEP, |state, wchan| {
                state == 'S'
                    && in_syscall(owner, libc::SYS_openat)
                    && (wchan.contains("fuse") || wchan.contains("request_wait"))
            });
            let stuck: Vec<u32> = (0..piles.openers).map(|_| pileup.spawn(&mut opener())).collect();
            for &pid in &stuck {
                wait_until_proc(pid, STEP, |state, _| state == 'D' && in_syscall(pid, libc::SYS_openat));
            }
            eprintln!("opener holding the directory's lock: pid {owner}; piled up behind it in D: {stuck:?}");
            pileup.openers = Some(Pile { owner, stuck, target });
        }
        pileup
    }

    /// Starts a task of the pile-up (its output to /dev/null) and keeps it.
    fn spawn(&mut self, cmd: &mut Command) -> u32 {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a task of the pile-up");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// The piles made, each with its kind's name (`lookups`, `writers`, `openers`).
    pub fn piles(&self) -> Vec<(&'static str, &Pile)> {
        [("lookups", &self.lookups), ("writers", &self.writers), ("openers", &self.openers)]
            .into_iter()
            .filter_map(|(kind, pile)| Some((kind, pile.as_ref()?)))
            .collect()
    }

    /// Lets a gated writer write.
    fn go(&mut self, pid: u32) {
        let child = self.children.iter_mut().find(|child| child.id() == pid).expect("a gated writer");
        child.stdin.take().expect("its stdin").write_all(b"go\n").expect("write to the writer");
    }

    /// Every task in D, lookups first.
    pub fn stuck(&self) -> Vec<u32> {
        self.piles().into_iter().flat_map(|(_, pile)| pile.stuck.iter().copied()).collect()
    }

    /// The tasks that wait for the daemon (in S), one a pile.
    pub fn owners(&self) -> Vec<u32> {
        self.piles().into_iter().map(|(_, pile)| pile.owner).collect()
    }

    /// Every task it made, those in S included.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The daemon it piled up behind.
    pub fn daemon(&self) -> &FuseDaemon {
        self.daemon
    }
}

impl Drop for DaemonPileup<'_> {
    /// Resumes the daemon (its answers release every task), then ends and reaps the
    /// tasks within 10 s: a task still in D ignores SIGKILL, and a test must not
    /// hang on it (the daemon's own Drop kills it, which frees them).
    fn drop(&mut self) {
        self.daemon.resume();
        let deadline = Instant::now() + scaled(STEP);
        for child in &mut self.children {
            drop(child.stdin.take());
            let _ = child.kill();
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Waits until a task has `file` open as descriptor `fd`.
fn wait_for_fd(pid: u32, fd: u32, file: &Path) {
    let timeout = scaled(STEP);
    let deadline = Instant::now() + timeout;
    let path = format!("/proc/{pid}/fd/{fd}");
    // The file itself, not any descriptor of that number: one inherited from
    // whatever started the tests (a shell's redirection) is there from the start.
    while std::fs::read_link(&path).ok().as_deref() != Some(file) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} did not open {} as descriptor {fd} within {timeout:?} (state {:?})",
            file.display(),
            task_state(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
