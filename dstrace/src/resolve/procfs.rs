//! Tasks in `D` now, read from `/proc` alone, without ever hanging.
//!
//! The eBPF side sees a wait only when it begins after dstrace has started, and some
//! machines cannot load BPF at all. This module fills both gaps: it lists the threads
//! that are in a given state right now (normally `D`) with where they sleep, from the
//! files the kernel keeps under `/proc`.
//!
//! It runs during incidents, while tasks are stuck on dead NFS or FUSE mounts, where
//! tools that touch the wrong file hang themselves. Hence these rules:
//!
//! * Per thread it reads only `/proc/<pid>/task/<tid>/stat`, `stack`, `wchan`, `syscall`
//!   and `sched`. Never `cmdline`, `environ`, `maps`, `smaps`, `status`, `io` or any
//!   other file: some take the task's mmap lock, which a stuck task may hold.
//! * It never `stat()`s or opens a path outside `/proc`, and never follows the `cwd`,
//!   `exe`, `root` or `fd` links. Directory entries are taken by name only.
//! * `stat` is read for every thread (it is cheap); the other four files only for the
//!   threads whose state was asked for.
//! * A thread may exit between listing and reading: `ENOENT`/`ESRCH` skips it silently.
//!   A file that cannot be read for any other reason (`EACCES`/`EPERM` on `stack` or
//!   `syscall`; on some machines even root gets `EPERM` on `/proc/1/stack`) makes that
//!   field `None`. Only failing to list `proc_root` itself is an error.
//! * A kernel thread's `syscall` file says `0 0x0 ... 0x0` (no user registers): it is
//!   reported as [`Syscall::NotInSyscall`], not as a `read` system call.
//!
//! The parsers ([`parse_stat`], [`parse_stack`], [`parse_syscall`],
//! [`parse_exec_start_ns`], [`parse_wchan`]) are pure functions over the file text.

use std::fs::File;
use std::io::{self, Read as _};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// `PF_KTHREAD` in the `flags` field of `stat`: the task is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The most bytes read from one `/proc` file; the files read here are a few KiB at most.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// One thread as `/proc` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcTask {
    /// Thread group id (the directory `/proc/<pid>`).
    pub pid: u32,
    /// Thread id (the directory `/proc/<pid>/task/<tid>`).
    pub tid: u32,
    /// The command name from `stat`.
    pub comm: String,
    /// The state letter from `stat`: `'D'`, `'I'`, `'S'`, `'R'`, ...
    pub state: char,
    /// The parent's pid from `stat`.
    pub ppid: u32,
    /// Whether the thread is a kernel thread (`PF_KTHREAD` in the `stat` flags).
    pub kernel_thread: bool,
    /// The content of `wchan`; `None` if empty, `"0"` or unreadable.
    pub wchan: Option<String>,
    /// The function names of `stack`, innermost first; `None` if unreadable.
    pub stack: Option<Vec<String>>,
    /// `syscall`, parsed; `None` if unreadable or not understood.
    pub syscall: Option<Syscall>,
    /// `se.exec_start` from `sched` (when the thread last ran, in nanoseconds of the
    /// scheduler clock); `None` if absent or unreadable.
    pub last_ran_ns: Option<u64>,
    /// The CPU it last ran on, whose task clock `last_ran_ns` was read from.
    pub cpu: Option<u32>,
}

impl ProcTask {
    /// Where it is blocked: the blocking function of its stack
    /// ([`crate::resolve::symbols::blocking_function`]), else its `wchan`.
    pub fn blocked_in(&self) -> Option<String> {
        self.stack
            .as_ref()
            .and_then(|stack| {
                crate::resolve::symbols::blocking_function(stack.iter().map(String::as_str))
                    .map(str::to_owned)
            })
            .or_else(|| self.wchan.clone())
    }
}

/// What `/proc/<pid>/task/<tid>/syscall` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Syscall {
    /// Blocked in a system call: its number and six arguments (the stack and
    /// instruction pointers that follow them in the file are dropped).
    Blocked {
        /// The system call number.
        nr: i64,
        /// The six arguments.
        args: [u64; 6],
    },
    /// Not in a system call (the file says `-1 <sp> <pc>`).
    NotInSyscall,
    /// The task is running (the file says `running`).
    Running,
}

/// The fields of `/proc/<pid>/task/<tid>/stat` this module uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatFields {
    /// The command name: between the first `(` and the last `)`.
    pub comm: String,
    /// Field 3, the state letter.
    pub state: char,
    /// Field 4, the parent's pid.
    pub ppid: u32,
    /// Field 9, the task's `PF_*` flags.
    pub flags: u64,
    /// Field 39, the CPU it last ran on (absent from very old kernels).
    pub processor: Option<u32>,
}

/// Threads whose state is in `states` (e.g. `&['D']` or `&['D', 'I']`), under
/// `proc_root` (normally `/proc`), sorted by (pid, tid).
///
/// Only an error listing `proc_root` itself is returned; a thread that vanished is
/// skipped, and a file that cannot be read leaves its field `None`.
pub fn tasks_in_states(proc_root: &Path, states: &[char]) -> io::Result<Vec<ProcTask>> {
    let mut tasks = Vec::new();
    let mut buf = Vec::with_capacity(1024);
    for entry in std::fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = numeric_name(&entry.file_name()) else { continue };
        let task_dir = proc_root.join(pid.to_string()).join("task");
        let Ok(threads) = std::fs::read_dir(&task_dir) else { continue };
        let Ok(task_dir_fd) = File::open(&task_dir) else { continue };
        for thread in threads {
            let Ok(thread) = thread else { continue };
            let name = thread.file_name();
            let Some(tid) = numeric_name(&name) else { continue };
            // Most threads are in no state asked for: their `stat` is read only
            // to its state letter, into one buffer, opened from the open `task`
            // directory (a short path walk).
            if !state_at(&task_dir_fd, &name, &mut buf).is_some_and(|state| states.contains(&state)) {
                continue;
            }
            let dir = task_dir.join(tid.to_string());
            if let Some(task) = read_task(&dir, pid, tid, |state| states.contains(&state)) {
                tasks.push(task);
            }
        }
    }
    tasks.sort_by_key(|t| (t.pid, t.tid));
    Ok(tasks)
}

/// One thread of `proc_root`, in whatever state, if it exists. Its `stat` is read
/// once: a task that runs changes state between two reads (R, D, S), and is not
/// gone for that.
pub fn task(proc_root: &Path, pid: u32, tid: u32) -> Option<ProcTask> {
    let dir = proc_root.join(pid.to_string()).join("task").join(tid.to_string());
    read_task(&dir, pid, tid, |_| true)
}

/// The scheduler's task clock now, as `/proc` prints `se.exec_start`: this
/// thread's own, read while it runs (stamped when it last got the CPU).
pub fn task_clock_now() -> Option<u64> {
    parse_exec_start_ns(&read_text(Path::new("/proc/thread-self/sched")).ok()?)
}

/// The task clock of every CPU now. Each CPU's clock leaves out its own interrupt
/// and steal time, so the clocks of two CPUs drift apart: a task's `se.exec_start`
/// is comparable only with the clock of the CPU it last ran on. A thread moved to
/// each CPU in turn reads it there (its `exec_start` is stamped as it starts
/// running on that CPU). CPUs this process may not run on are left out.
pub fn task_clocks_now() -> std::collections::HashMap<u32, u64> {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.clamp(1, 4096) as u32;
    let reader = std::thread::spawn(move || {
        let mut clocks = std::collections::HashMap::new();
        for cpu in 0..cpus {
            if pin_to_cpu(cpu as usize) {
                if let Some(now) = task_clock_now() {
                    clocks.insert(cpu, now);
                }
            }
        }
        clocks
    });
    reader.join().unwrap_or_default()
}

/// Moves the calling thread to CPU `cpu` and keeps it there (the threads it
/// spawns inherit that); false if it may not run there.
pub fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: `set` is plain data, zero is a valid empty set; the libc macros take a
    // valid pointer to it, and sched_setaffinity(0, ...) applies to this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The state letter of thread `tid` under an open `task` directory (`tid/stat`,
/// read into `buf`); `None` if it is gone or unreadable.
fn state_at(task_dir: &File, tid: &std::ffi::OsStr, buf: &mut Vec<u8>) -> Option<char> {
    use std::os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::ffi::OsStrExt as _,
    };
    let mut path = tid.as_bytes().to_vec();
    path.extend_from_slice(b"/stat\0");
    let path = std::ffi::CStr::from_bytes_with_nul(&path).ok()?;
    // SAFETY: a valid directory descriptor and a NUL-terminated path that outlive
    // the call.
    let fd = unsafe { libc::openat(task_dir.as_raw_fd(), path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor just opened, owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    buf.clear();
    file.take(MAX_FILE_BYTES).read_to_end(buf).ok()?;
    state_of_stat(buf)
}

/// The state letter of a `stat` text: the first field after the command name
/// (which ends at the last `)`).
pub fn state_of_stat(stat: &[u8]) -> Option<char> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    stat[close + 1..].iter().find(|b| !b.is_ascii_whitespace()).map(|&b| char::from(b))
}

/// A directory entry named by a decimal number (`/proc/self` and the like are not).
fn numeric_name(name: &std::ffi::OsStr) -> Option<u32> {
    let name = name.to_str()?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// One thread, if it still exists and its state is `wanted`.
fn read_task(dir: &Path, pid: u32, tid: u32, wanted: impl Fn(char) -> bool) -> Option<ProcTask> {
    let stat = parse_stat(&read_text(&dir.join("stat")).ok()?)?;
    if !wanted(stat.state) {
        return None;
    }
    let stack = optional_bounded(dir, "stack")?.map(|text| parse_stack(&text));
    let wchan = optional(dir, "wchan")?.and_then(|text| parse_wchan(&text));
    let kernel_thread = stat.flags & PF_KTHREAD != 0;
    let mut syscall = optional_bounded(dir, "syscall")?.and_then(|text| parse_syscall(&text));
    // A kernel thread has no user registers: its file says `0 0x0 ... 0x0`, which
    // would read as a `read(0, NULL, 0)` it never made.
    if kernel_thread && matches!(syscall, Some(Syscall::Blocked { .. })) {
        syscall = Some(Syscall::NotInSyscall);
    }
    let last_ran_ns = optional(dir, "sched")?.and_then(|text| parse_exec_start_ns(&text));
    Some(ProcTask {
        pid,
        tid,
        comm: stat.comm,
        state: stat.state,
        ppid: stat.ppid,
        cpu: stat.processor,
        kernel_thread,
        wchan,
        stack,
        syscall,
        last_ran_ns,
    })
}

/// How long a read of `stack` or `syscall` may take before it is given up.
pub const BOUNDED_READ: Duration = Duration::from_millis(300);

/// As [`optional`], for the files the kernel answers only after taking the
/// target's `exec_update_lock` (`stack`, `syscall`: `lock_trace()`): a task stuck
/// in `execve` holding it would stall the read, so it is given up after
/// [`BOUNDED_READ`] (the field is then unknown).
fn optional_bounded(dir: &Path, name: &str) -> Option<Option<String>> {
    let result = read_text_bounded(&dir.join(name), BOUNDED_READ);
    optional_from(dir, result)
}

/// Reads a file on a thread of its own and waits for it at most `timeout`; past
/// that, `TimedOut`, and the thread is left behind, blocked in a killable wait
/// that ends with the process at the latest.
pub fn read_text_bounded(path: &Path, timeout: Duration) -> io::Result<String> {
    read_bounded(path, timeout).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// As [`read_text_bounded`], the bytes as they are (a mount table: a mount point
/// may hold bytes that are not UTF-8, and a command must name it exactly).
pub fn read_bounded(path: &Path, timeout: Duration) -> io::Result<Vec<u8>> {
    let (send, receive) = mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::Builder::new().name("dstrace-proc-read".into()).spawn(move || {
        let _ = send.send(read_bytes(&owned));
    })?;
    receive.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("reading {} took over {timeout:?}", path.display()),
        ))
    })
}

/// Reads `dir/name`: `Some(Some(text))` if readable, `Some(None)` if not (permission,
/// or a file this kernel lacks), `None` if the thread is gone and must be skipped.
fn optional(dir: &Path, name: &str) -> Option<Option<String>> {
    optional_from(dir, read_text(&dir.join(name)))
}

/// [`optional`] from the result of a read.
fn optional_from(dir: &Path, result: io::Result<String>) -> Option<Option<String>> {
    match result {
        Ok(text) => Some(Some(text)),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => None,
        // A missing file is a thread that exited, unless its `stat` is still there
        // (a kernel without `CONFIG_STACKTRACE` has no `stack`, for instance).
        Err(e) if e.kind() == io::ErrorKind::NotFound => match read_text(&dir.join("stat")) {
            Ok(_) => Some(None),
            Err(_) => None,
        },
        Err(_) => Some(None),
    }
}

/// The content of a `/proc` file as text (invalid UTF-8, possible in `comm`, is
/// replaced), at most [`MAX_FILE_BYTES`].
fn read_text(path: &Path) -> io::Result<String> {
    read_bytes(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

fn read_bytes(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.take(MAX_FILE_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Parses a `stat` line: `pid (comm) state ppid pgrp session tty_nr tpgid flags ...`.
///
/// `comm` is what lies between the first `(` and the last `)`: it may itself contain
/// spaces, parentheses and newlines.
pub fn parse_stat(text: &str) -> Option<StatFields> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let comm = text[open + 1..close].to_string();
    let mut fields = text[close + 1..].split_ascii_whitespace();
    let mut state_chars = fields.next()?.chars();
    let state = state_chars.next()?;
    if state_chars.next().is_some() {
        return None;
    }
    let ppid = fields.next()?.parse().ok()?;
    // pgrp, session, tty_nr, tpgid, then flags.
    let flags = fields.nth(4)?.parse().ok()?;
    // Fields 10 to 38, then processor.
    let processor = fields.nth(29).and_then(|cpu| cpu.parse().ok());
    Some(StatFields { comm, state, ppid, flags, processor })
}

/// What the Prometheus client libraries' process collector reports of a process
/// (`dstrace daemon`'s `process_*` metrics): CPU time, memory, start time and
/// file descriptors, with the same meanings.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User and system CPU time, in nanoseconds.
    pub cpu_ns: u64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// When the process started, in seconds since the Unix epoch (boot time plus
    /// its start in clock ticks after boot), if `/proc/stat` says when the
    /// machine booted.
    pub start_time_seconds: Option<f64>,
    /// Its open file descriptors, if `/proc/PID/fd` can be listed.
    pub open_fds: Option<u64>,
    /// Its limit of open file descriptors (the soft `RLIMIT_NOFILE`), if
    /// `/proc/PID/limits` can be read.
    pub max_fds: Option<u64>,
}

/// The [`Usage`] of process `pid`, if it exists: its `stat`, its `limits`, the
/// names of the entries of its `fd` directory (no link followed), and the boot
/// time in `/proc/stat`. Meant for dstrace's own process: of another task it
/// reads nothing that can hang, but more than the rules above allow.
pub fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|text| parse_boot_time(&text));
    let mut usage = parse_usage(&stat, boot_time)?;
    usage.open_fds =
        std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|dir| dir.filter(Result::is_ok).count() as u64);
    usage.max_fds = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|text| parse_max_open_files(&text));
    Some(usage)
}

/// Parses `stat`: utime and stime (fields 14 and 15, in clock ticks), starttime
/// (22, clock ticks after boot), vsize (23, bytes) and rss (24, pages). The start
/// time is known when the boot time (seconds since the epoch) is.
pub fn parse_usage(stat: &str, boot_time: Option<u64>) -> Option<Usage> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 (state) on: utime is the 12th of them.
    // Some between them are signed (priority and nice are negative for some
    // tasks): only those used are parsed.
    let fields: Vec<&str> = after_comm.split_ascii_whitespace().skip(11).take(11).collect();
    let field = |i: usize| -> Option<u64> { fields.get(i)?.parse().ok() };
    let (utime, stime, starttime, vsize, rss) = (field(0)?, field(1)?, field(8)?, field(9)?, field(10)?);
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
    let page = u64::try_from(page).ok().filter(|&p| p > 0)?;
    Some(Usage {
        cpu_ns: (utime + stime).saturating_mul(1_000_000_000 / ticks),
        rss_bytes: rss.saturating_mul(page),
        virtual_bytes: vsize,
        start_time_seconds: boot_time.map(|boot| boot as f64 + starttime as f64 / ticks as f64),
        open_fds: None,
        max_fds: None,
    })
}

/// The boot time (`btime`, seconds since the epoch) of `/proc/stat`.
pub fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/PID/limits` (`unlimited`: the
/// largest number).
pub fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_ascii_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        soft => soft.parse().ok(),
    }
}

/// The function names of a `stack` file, innermost first:
/// `[<0>] d_alloc_parallel+0x3a/0x4f0 [module]` gives `d_alloc_parallel`.
/// Lines that do not have that shape are left out.
pub fn parse_stack(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let (_, frame) = line.trim_start().strip_prefix("[<")?.split_once(">]")?;
            let symbol = frame.split_ascii_whitespace().next()?;
            let name = symbol.split_once('+').map_or(symbol, |(name, _)| name);
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// Parses a `syscall` file: `running`, `-1 <sp> <pc>`, or
/// `<nr> <arg1> ... <arg6> <sp> <pc>` (the number in decimal, the rest in hex).
pub fn parse_syscall(text: &str) -> Option<Syscall> {
    let mut fields = text.split_ascii_whitespace();
    let first = fields.next()?;
    if first == "running" {
        return Some(Syscall::Running);
    }
    let nr: i64 = first.parse().ok()?;
    if nr < 0 {
        return Some(Syscall::NotInSyscall);
    }
    let mut args = [0u64; 6];
    for arg in &mut args {
        let field = fields.next()?;
        let digits = field.strip_prefix("0x").or_else(|| field.strip_prefix("0X")).unwrap_or(field);
        *arg = u64::from_str_radix(digits, 16).ok()?;
    }
    Some(Syscall::Blocked { nr, args })
}

/// `se.exec_start` of a `sched` file, printed in milliseconds with six decimals
/// (`se.exec_start   :   1273400.676600`), as integer nanoseconds (`1273400676600`).
pub fn parse_exec_start_ns(sched_text: &str) -> Option<u64> {
    let value = sched_text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "se.exec_start").then(|| value.trim())
    })?;
    let (ms, frac) = value.split_once('.').unwrap_or((value, ""));
    if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms: u64 = ms.parse().ok()?;
    // Six decimals of a millisecond are nanoseconds; pad or cut to six.
    let mut ns_part = 0u64;
    let digits = frac.bytes().chain(std::iter::repeat(b'0')).take(6);
    for digit in digits {
        ns_part = ns_part * 10 + u64::from(digit - b'0');
    }
    ms.checked_mul(1_000_000)?.checked_add(ns_part)
}

/// The function a `wchan` file names; `None` if it is empty or `0` (running, or hidden).
pub fn parse_wchan(text: &str) -> Option<String> {
    let name = text.trim();
    (!name.is_empty() && name != "0").then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    /// A task stuck in `d_alloc_parallel`, whose comm has spaces and `)`: 52 fields.
    const STAT_EVIL: &str = "1234 (evil) name) D 1 1234 1234 0 -1 4194560 118 0 0 0 0 3 0 0 20 0 1 0 \
        127395 2502656 240 18446744073709551615 94558390468608 94558390484273 140726618916192 0 0 0 0 \
        0 0 1 0 0 17 2 0 0 0 0 0 94558390498448 94558390499816 94558415056896 140726618922806 \
        140726618922833 140726618922833 140726618926063 0\n";

    /// kthreadd, as this kernel prints it.
    const STAT_KTHREADD: &str = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 9 0 0 \
        18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    const STACK: &str = "[<0>] __schedule+0x2d1/0x6f0\n\
        [<0>] schedule+0x27/0xa0\n\
        [<0>] d_alloc_parallel+0x3a/0x4f0\n\
        [<0>] __lookup_slow+0x5c/0x130\n\
        [<0>] fuse_lookup_name+0x1a/0x200 [fuse]\n\
        [<0>] poll_schedule_timeout.constprop.0+0x37/0x90\n\
        [<0>] do_syscall_64+0x71/0x280\n\
        [<0>] entry_SYSCALL_64_after_hwframe+0x76/0x7e\n";

    const SCHED: &str = "head (15105, #threads: 1)\n\
        -------------------------------------------------------------------\n\
        se.exec_start                                :       1273400.676600\n\
        se.vruntime                                  :            78.438502\n\
        se.sum_exec_runtime                          :            12.163689\n\
        nr_switches                                  :                   14\n";

    #[test]
    fn state_letter_follows_the_last_parenthesis() {
        assert_eq!(state_of_stat(STAT_EVIL.as_bytes()), Some('D'));
        assert_eq!(state_of_stat(STAT_KTHREADD.as_bytes()), Some('S'));
        assert_eq!(state_of_stat(b"1 (no state)"), None);
        assert_eq!(state_of_stat(b"garbage"), None);
    }

    /// A read that blocks (here: opening a FIFO nobody writes to) is given up.
    #[test]
    fn blocked_reads_are_given_up() {
        let fifo = std::env::temp_dir().join(format!("dstrace-fifo-{}", std::process::id()));
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        let err = read_text_bounded(&fifo, Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        // Let the reader thread finish: a writer opens and closes the FIFO.
        drop(std::fs::OpenOptions::new().write(true).open(&fifo));
        let _ = std::fs::remove_file(&fifo);
        assert!(read_text_bounded(Path::new("/proc/self/stat"), Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn every_cpu_clock_is_read() {
        let clocks = task_clocks_now();
        assert!(!clocks.is_empty());
        // Nanoseconds since boot, behind CLOCK_MONOTONIC by each CPU's interrupt and
        // stolen time (tens of seconds apart on a busy virtual machine).
        let since_boot = crate::clock::monotonic_ns();
        assert!(
            clocks.values().all(|&clock| clock > 0 && clock <= since_boot + 1_000_000_000),
            "{clocks:?} vs {since_boot}"
        );
    }

    #[test]
    fn the_task_clock_runs() {
        // On one CPU: another CPU's clock may be behind by its stolen time (tens of
        // seconds on a busy virtual machine), and the sleep may wake it there.
        let pinned = std::thread::spawn(|| {
            // SAFETY: sched_getcpu has no preconditions.
            let cpu = unsafe { libc::sched_getcpu() };
            assert!(pin_to_cpu(cpu.max(0) as usize));
            let first = task_clock_now().expect("/proc/thread-self/sched has se.exec_start");
            let busy = std::time::Instant::now();
            while busy.elapsed() < std::time::Duration::from_millis(30) {}
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(task_clock_now().unwrap() > first);
        });
        pinned.join().unwrap();
    }

    #[test]
    fn stat_comm_with_spaces_and_parens() {
        let stat = parse_stat(STAT_EVIL).unwrap();
        assert_eq!(
            stat,
            StatFields {
                comm: "evil) name".into(),
                state: 'D',
                ppid: 1,
                flags: 4_194_560,
                processor: Some(2)
            }
        );
        assert_eq!(stat.flags & PF_KTHREAD, 0);
        assert_eq!(STAT_EVIL.split_ascii_whitespace().count(), 53, "52 fields, comm counted twice");
    }

    #[test]
    fn stat_comm_with_newline_and_kernel_thread() {
        let stat = parse_stat(STAT_KTHREADD).unwrap();
        assert_eq!(stat.comm, "kthreadd");
        assert_eq!((stat.state, stat.ppid), ('S', 0));
        assert_ne!(stat.flags & PF_KTHREAD, 0);

        let odd = "77 (a (b)\n c) I 2 0 0 0 -1 2129984 0 0";
        let stat = parse_stat(odd).unwrap();
        assert_eq!(stat.comm, "a (b)\n c");
        assert_eq!(stat.state, 'I');
        assert_eq!(stat.ppid, 2);
    }

    #[test]
    fn stat_garbage() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("1 (x"), None);
        assert_eq!(parse_stat("1 )x( D 1 0 0 0 0 0"), None);
        assert_eq!(parse_stat("1 (x) D 1 0 0"), None, "too short to have flags");
        assert_eq!(parse_stat("1 (x) DD 1 0 0 0 -1 0"), None);
    }

    #[test]
    fn stack_function_names() {
        assert_eq!(
            parse_stack(STACK),
            [
                "__schedule",
                "schedule",
                "d_alloc_parallel",
                "__lookup_slow",
                "fuse_lookup_name",
                "poll_schedule_timeout.constprop.0",
                "do_syscall_64",
                "entry_SYSCALL_64_after_hwframe",
            ]
        );
        assert_eq!(parse_stack("[<ffffffff8108d2e5>] io_schedule+0x16/0x40\n"), ["io_schedule"]);
        assert!(parse_stack("").is_empty());
        assert!(parse_stack("garbage\n").is_empty());
    }

    #[test]
    fn syscall_three_cases() {
        assert_eq!(
            parse_syscall(
                "262 0xffffff9c 0x7ffd4b2a0f10 0x7ffd4b2a0e80 0x0 0x0 0x7f3c 0x7ffd4b2a0e58 0x7f3c1a2b3c4d\n"
            ),
            Some(Syscall::Blocked {
                nr: 262,
                args: [0xffff_ff9c, 0x7ffd_4b2a_0f10, 0x7ffd_4b2a_0e80, 0, 0, 0x7f3c]
            })
        );
        assert_eq!(parse_syscall("-1 0x7ffd4b2a0e58 0x7f3c1a2b3c4d\n"), Some(Syscall::NotInSyscall));
        assert_eq!(parse_syscall("running\n"), Some(Syscall::Running));
        assert_eq!(parse_syscall(""), None);
        assert_eq!(parse_syscall("0 0x1 0x2"), None, "six arguments needed");
        assert_eq!(parse_syscall("zz 0x1"), None);
    }

    #[test]
    fn exec_start_to_ns() {
        assert_eq!(parse_exec_start_ns(SCHED), Some(1_273_400_676_600));
        assert_eq!(parse_exec_start_ns("se.exec_start : 5.1\n"), Some(5_100_000));
        assert_eq!(parse_exec_start_ns("se.exec_start : 7\n"), Some(7_000_000));
        assert_eq!(parse_exec_start_ns("se.vruntime : 78.438502\n"), None);
        assert_eq!(parse_exec_start_ns("se.exec_start : -3.000000\n"), None);
        assert_eq!(parse_exec_start_ns(""), None);
    }

    #[test]
    fn wchan() {
        assert_eq!(parse_wchan("0"), None);
        assert_eq!(parse_wchan(""), None);
        assert_eq!(parse_wchan("d_alloc_parallel"), Some("d_alloc_parallel".into()));
        assert_eq!(parse_wchan("do_select\n"), Some("do_select".into()));
    }

    /// A temporary directory removed on drop, even when the test fails.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
            let path =
                std::env::temp_dir().join(format!("dstrace-procfs-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir(&path).unwrap();
            Self(path)
        }

        fn thread(&self, pid: u32, tid: u32, files: &[(&str, &str)]) {
            let dir = self.0.join(pid.to_string()).join("task").join(tid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(name), text).unwrap();
            }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn fake_proc_tree() {
        let root = TempDir::new("tree");
        let syscall_text = "262 0xffffff9c 0x55d0 0x7ffd 0x0 0x0 0x0 0x7ffd4b2a0e58 0x7f3c1a2b3c4d\n";
        root.thread(
            100,
            100,
            &[
                ("stat", "100 (stat) D 99 100 100 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 2 0 5 0 0\n"),
                ("stack", STACK),
                ("wchan", "d_alloc_parallel"),
                ("syscall", syscall_text),
                ("sched", SCHED),
            ],
        );
        root.thread(
            100,
            101,
            &[
                ("stat", "101 (stat) S 99 100 100 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 2 0 5 0 0\n"),
                ("stack", STACK),
                ("wchan", "futex_wait_queue"),
            ],
        );
        // No stack and no sched file; wchan "0".
        root.thread(
            7,
            7,
            &[
                ("stat", "7 (kworker/u8:1) D 2 0 0 0 -1 69238880 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n"),
                ("wchan", "0"),
                ("syscall", "0 0x0 0x0 0x0 0x0 0x0 0x0 0x0 0x0\n"),
            ],
        );
        // Not threads: non-numeric entries, a pid without a task directory.
        std::fs::create_dir_all(root.0.join("self").join("task").join("1")).unwrap();
        std::fs::write(root.0.join("uptime"), "1.0 2.0\n").unwrap();
        std::fs::create_dir(root.0.join("300")).unwrap();

        let tasks = tasks_in_states(&root.0, &['D']).unwrap();
        assert_eq!(
            tasks,
            [
                ProcTask {
                    pid: 7,
                    tid: 7,
                    comm: "kworker/u8:1".into(),
                    state: 'D',
                    ppid: 2,
                    kernel_thread: true,
                    wchan: None,
                    stack: None,
                    syscall: Some(Syscall::NotInSyscall),
                    last_ran_ns: None,
                    cpu: None,
                },
                ProcTask {
                    pid: 100,
                    tid: 100,
                    comm: "stat".into(),
                    state: 'D',
                    ppid: 99,
                    kernel_thread: false,
                    wchan: Some("d_alloc_parallel".into()),
                    stack: Some(parse_stack(STACK)),
                    syscall: parse_syscall(syscall_text),
                    last_ran_ns: Some(1_273_400_676_600),
                    cpu: None,
                },
            ]
        );

        let all: Vec<_> = tasks_in_states(&root.0, &['D', 'S'])
            .unwrap()
            .into_iter()
            .map(|t| (t.pid, t.tid, t.state))
            .collect();
        assert_eq!(all, [(7, 7, 'D'), (100, 100, 'D'), (100, 101, 'S')]);
        assert!(tasks_in_states(&root.0, &['R']).unwrap().is_empty());
        assert!(tasks_in_states(&root.0.join("absent"), &['D']).is_err());
    }

    /// Kills and reaps the child on drop, even when the test fails.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn real_proc() {
        let proc_root = Path::new("/proc");
        let child = Reaped(Command::new("sleep").arg("5").spawn().unwrap());
        let pid = child.0.id();

        // Right after spawn the child may still be the forked test binary, or running.
        let deadline = Instant::now() + Duration::from_secs(4);
        let found = loop {
            let tasks = tasks_in_states(proc_root, &['S']).unwrap();
            if let Some(task) = tasks.into_iter().find(|t| t.pid == pid && t.comm == "sleep") {
                break task;
            }
            assert!(Instant::now() < deadline, "sleep {pid} not seen in S state");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!((found.tid, found.state, found.kernel_thread), (pid, 'S', false));
        assert_eq!(found.ppid, std::process::id());
        drop(child);

        let tasks = tasks_in_states(proc_root, &['S', 'I']).unwrap();
        assert!(tasks.iter().any(|t| t.kernel_thread), "no kernel thread in S or I");
        assert!(tasks
            .iter()
            .filter(|t| t.kernel_thread)
            .all(|t| !matches!(t.syscall, Some(Syscall::Blocked { .. }))));
        assert!(tasks.windows(2).all(|w| (w[0].pid, w[0].tid) < (w[1].pid, w[1].tid)));
        // Every state at once: unreadable files (EPERM on /proc/1/stack here) are no error.
        let states = ['R', 'S', 'D', 'T', 't', 'Z', 'X', 'I', 'P', 'W', 'K'];
        assert!(!tasks_in_states(proc_root, &states).unwrap().is_empty());
    }

    /// A thread that runs and sleeps in turn (R, S, R, ...) is found every time it
    /// is looked at, whatever state it is in between the reads: a lock's holder
    /// that is busy is not "gone".
    #[test]
    fn a_task_changing_state_is_not_gone() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let (send, receive) = std::sync::mpsc::channel();
        let busy = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = send.send(unsafe { libc::gettid() } as u32);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let spin = Instant::now();
                while spin.elapsed() < Duration::from_micros(20) {}
                std::thread::sleep(Duration::from_micros(1));
            }
        });
        let tid = receive.recv().unwrap();
        let pid = std::process::id();
        let missing = (0..2000).filter(|_| task(Path::new("/proc"), pid, tid).is_none()).count();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        busy.join().unwrap();
        assert_eq!(missing, 0, "a live thread was not found {missing} times in 2000");
    }

    #[test]
    fn usage_from_stat_limits_and_boot_time() {
        let stat =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 -2 -20 1 0 990 123456789 300 \
                    18446744073709551615 1 1 0 0";
        let usage = parse_usage(stat, Some(1_700_000_000)).unwrap();
        // SAFETY: sysconf has no preconditions.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        assert_eq!(usage.cpu_ns, 300 * (1_000_000_000 / ticks as u64));
        assert_eq!(usage.rss_bytes, 300 * page as u64);
        assert_eq!(usage.virtual_bytes, 123456789);
        assert_eq!(usage.start_time_seconds, Some(1_700_000_000.0 + 990.0 / ticks as f64));
        assert_eq!(parse_usage(stat, None).unwrap().start_time_seconds, None);
        assert_eq!(parse_usage("garbage", None), None);
        assert_eq!(parse_usage("1 (x) S 1 2 3", None), None);
        assert_eq!(parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1764640000\nprocesses 9\n"), Some(1764640000));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        assert_eq!(
            parse_max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            Some(u64::MAX)
        );
    }

    /// This process, read as the daemon reads itself.
    #[test]
    fn usage_of_this_process() {
        let usage = usage(std::process::id()).unwrap();
        assert!(usage.rss_bytes > 0 && usage.virtual_bytes >= usage.rss_bytes, "{usage:?}");
        assert!(usage.open_fds.unwrap() >= 3, "{usage:?}");
        assert!(usage.max_fds.unwrap() >= usage.open_fds.unwrap(), "{usage:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let started = usage.start_time_seconds.unwrap();
        assert!(started <= now + 1.0 && started > now - 86_400.0 * 365.0, "{usage:?}");
    }
}
