//! Hostile input to the binary as built: slow clients that reconnect as soon as
//! they are cut off do not keep a scraper out of `dstrace daemon`'s endpoint;
//! `--config` names a device, a FIFO, a directory or a huge file and gets one
//! line, at once; a duration too long for any flag or key is one line naming
//! the maximum, never a panic; a closed pipe ends a command with status 0 and
//! nothing said.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::{FromRawFd as _, OwnedFd},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::sleep,
    time::{Duration, Instant},
};

use clap::CommandFactory as _;
use dstrace::cli::{daemon::MAX_CONFIG_BYTES, parse::MAX_DURATION_TEXT, Cli};
use dstrace_tests::{
    dstrace_bin,
    http::{self, free_port},
    output_bounded, require_root, scaled, start_recording, stop_recording, wait_bounded, Scratch,
};

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A `dstrace daemon` on a free loopback port, recording in `dir`; killed on drop.
struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    /// Starts one with these arguments and waits (bounded) until it serves /metrics.
    fn ready(dir: &Scratch, args: &[&str]) -> Daemon {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(dstrace_bin())
            .arg("daemon")
            .args(["--listen", &addr.to_string(), "--recording", dir.path("d.rec").to_str().unwrap()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut daemon = Daemon { child, addr };
        let deadline = Instant::now() + scaled(Duration::from_secs(90));
        while !http::get(addr, "/metrics", HTTP_TIMEOUT).is_ok_and(|answer| answer.status == 200) {
            assert!(daemon.child.try_wait().unwrap().is_none(), "dstrace daemon ended before serving");
            assert!(Instant::now() < deadline, "dstrace daemon serves no metrics");
            sleep(Duration::from_millis(200));
        }
        daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A slowloris from `source`: sends a request head a byte every 50 ms, and
/// connects again as soon as it is cut off or answered, until `stop`; counts its
/// connections in `opened`.
fn slowloris(target: SocketAddr, source: Ipv4Addr, stop: Arc<AtomicBool>, opened: Arc<AtomicUsize>) {
    let head: Vec<u8> =
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().copied().chain([b'a'; 100_000]).collect();
    while !stop.load(Ordering::Relaxed) {
        let Some(mut stream) = connect_from(source, target) else {
            sleep(Duration::from_millis(10));
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        for byte in &head {
            if stop.load(Ordering::Relaxed) || stream.write_all(&[*byte]).is_err() {
                break;
            }
            // The pause between bytes; anything read (an answer, the end) means
            // this connection is over.
            match stream.read(&mut [0u8; 512]) {
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                _ => break,
            }
        }
    }
}

/// A TCP connection to `target` from the loopback address `source` (Linux routes
/// all of 127/8 to the loopback device).
fn connect_from(source: Ipv4Addr, target: SocketAddr) -> Option<TcpStream> {
    // SAFETY: socket(2) takes no pointer; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let SocketAddr::V4(target) = target else { panic!("an IPv4 target") };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let local = sockaddr(source, 0);
    let remote = sockaddr(*target.ip(), target.port());
    // SAFETY: both point to a sockaddr_in of `len` bytes that outlives the call.
    let bound = unsafe { libc::bind(fd, std::ptr::from_ref(&local).cast(), len) } == 0;
    assert!(bound, "bind {source}: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let connected = unsafe { libc::connect(fd, std::ptr::from_ref(&remote).cast(), len) } == 0;
    connected.then(|| TcpStream::from(owned))
}

/// Eight slow clients, each from its own loopback address (so that a limit per
/// address is not what lets the scraper in), each connecting again the moment it
/// is cut off, against the default limits (8 connections, 5 s for a head): a
/// scraper still gets at least 28 of 30 scrapes. Before the endpoint gave the
/// slot of the slowest connection to a newcomer, it got 0 of 30 (503: every slot
/// held), however short the request timeout.
#[test]
fn reconnecting_slow_clients_do_not_keep_the_scraper_out() {
    if !require_root("reconnecting_slow_clients_do_not_keep_the_scraper_out") {
        return;
    }
    let dir = Scratch::new("slowloris");
    let daemon = Daemon::ready(&dir, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (2..10)
        .map(|last| {
            let (stop, opened) = (stop.clone(), opened.clone());
            let addr = daemon.addr;
            std::thread::spawn(move || slowloris(addr, Ipv4Addr::new(127, 0, 0, last), stop, opened))
        })
        .collect();
    // Every slow client connected, and the default 8 slots are theirs.
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    while opened.load(Ordering::Relaxed) < 8 {
        assert!(Instant::now() < deadline, "the slow clients did not connect");
        sleep(Duration::from_millis(50));
    }
    sleep(Duration::from_millis(500));

    let mut answers = Vec::new();
    for _ in 0..30 {
        answers.push(match http::get(daemon.addr, "/metrics", HTTP_TIMEOUT) {
            Ok(answer) => answer.status.to_string(),
            Err(err) => err.kind().to_string(),
        });
        sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let served = answers.iter().filter(|status| *status == "200").count();
    assert!(served >= 28, "{served} of 30 scrapes served beside 8 slow clients: {answers:?}");
}

/// The largest request timeout taken (the cap of every duration) serves: a
/// connection's lifetime, ten of them, does not overflow.
#[test]
fn the_longest_request_timeout_serves_scrapes() {
    if !require_root("the_longest_request_timeout_serves_scrapes") {
        return;
    }
    let dir = Scratch::new("longest-timeout");
    let daemon = Daemon::ready(&dir, &["--request-timeout", "3650d"]);
    for _ in 0..3 {
        assert_eq!(http::get(daemon.addr, "/metrics", HTTP_TIMEOUT).unwrap().status, 200);
    }
}

/// Runs dstrace with `args`, bounded; returns its status code and standard error.
fn refused(args: &[&str]) -> (i32, String) {
    let output =
        output_bounded(Command::new(dstrace_bin()).args(args), Duration::from_secs(20), &args.join(" "));
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// `--config` on something that is not a small regular file: one line naming the
/// file, what it is and the fix, at once (it was read without end from
/// /dev/zero, and waited on forever on a FIFO).
#[test]
fn a_config_that_is_not_a_small_file_is_one_line() {
    let dir = Scratch::new("config-kinds");
    let fifo = dir.path("fifo.toml");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let big = dir.path("big.toml");
    std::fs::write(&big, "# a comment\n".repeat(MAX_CONFIG_BYTES as usize / 12 + 1)).unwrap();
    for (file, says) in [
        ("/dev/zero".to_owned(), "is a character device, not a regular file"),
        (fifo.display().to_string(), "is a FIFO, not a regular file"),
        (dir.dir().display().to_string(), "is a directory, not a regular file"),
        (big.display().to_string(), "is larger than 1 MiB"),
    ] {
        let (code, stderr) = refused(&["daemon", "--config", &file]);
        assert_eq!(code, 1, "{file}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{file}: {stderr}");
        assert!(
            stderr.starts_with(&format!("dstrace: error: the configuration file {file} {says}")),
            "{stderr}"
        );
        assert!(stderr.contains("give --config"), "{stderr}");
    }
}

/// The flags that take a duration, by subcommand, from clap's definitions (so a
/// new one is tested too), with the arguments each subcommand requires.
fn duration_flags() -> Vec<(String, String)> {
    let mut flags = Vec::new();
    for command in Cli::command().get_subcommands() {
        for arg in command.get_arguments() {
            let takes_duration =
                arg.get_value_names().is_some_and(|names| names.iter().any(|name| name == "DURATION"));
            if let (true, Some(long)) = (takes_duration, arg.get_long()) {
                flags.push((command.get_name().to_owned(), format!("--{long}")));
            }
        }
    }
    flags
}

/// A duration past the cap, in any flag of any subcommand or in the daemon's
/// file, is one line naming the flag (or the file's line) and the maximum,
/// status 2 (1 for the file); it was a panic (status 101) in five flags.
#[test]
fn a_duration_too_long_is_one_line_naming_the_maximum() {
    let flags = duration_flags();
    for expected in [("run", "--duration"), ("record", "--interval"), ("daemon", "--request-timeout")] {
        assert!(flags.iter().any(|(c, f)| (c.as_str(), f.as_str()) == expected), "{expected:?} in {flags:?}");
    }
    let dir = Scratch::new("durations");
    let rec = dir.path("r.rec");
    for (command, flag) in &flags {
        let required: &[&str] = match command.as_str() {
            "record" => &["-o", rec.to_str().unwrap()],
            _ => &[],
        };
        for value in ["18446744073709551615s", "9223372036854775808s", "1e400s", "3651d", "99999999999y"] {
            let mut args = vec![command.as_str()];
            args.extend_from_slice(required);
            args.extend([flag.as_str(), value]);
            let (code, stderr) = refused(&args);
            assert_eq!(code, 2, "{args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
            assert!(stderr.starts_with("dstrace: error: invalid value"), "{args:?}: {stderr}");
            assert!(
                stderr.contains(flag.as_str()) && stderr.contains(MAX_DURATION_TEXT),
                "{args:?}: {stderr}"
            );
        }
    }
    for (_, flag) in flags.iter().filter(|(command, _)| command == "daemon") {
        let file = dir.path("daemon.toml");
        std::fs::write(&file, format!("{} = \"9223372036854775808s\"\n", &flag[2..])).unwrap();
        let (code, stderr) = refused(&["daemon", "--config", file.to_str().unwrap()]);
        assert_eq!(code, 1, "{flag}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{flag}: {stderr}");
        assert!(stderr.contains("line 1") && stderr.contains(MAX_DURATION_TEXT), "{flag}: {stderr}");
    }
}

/// Runs dstrace with its standard output a pipe whose reading end is already
/// closed (as `| head -c1` is once head has its byte); returns its status code
/// and standard error.
fn into_closed_pipe(args: &[&str]) -> (i32, String) {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) writes two descriptors into the array it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both are fresh descriptors nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let mut child = Command::new(dstrace_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(write)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(60), &args.join(" "));
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code().unwrap_or(-1), stderr)
}

/// `snapshot`, `run --json` and `report` into a closed pipe end with status 0
/// and say nothing, as `dstrace ... | head -c1` needs.
#[test]
fn a_closed_pipe_is_a_silent_success() {
    let (code, stderr) = into_closed_pipe(&["snapshot", "--json"]);
    assert_eq!((code, stderr.as_str()), (0, ""), "snapshot --json");
    let (code, stderr) = into_closed_pipe(&["snapshot"]);
    assert_eq!((code, stderr.as_str()), (0, ""), "snapshot");
    if !require_root("a_closed_pipe_is_a_silent_success") {
        return;
    }
    let (code, stderr) = into_closed_pipe(&["run", "--json", "--duration", "30s"]);
    assert_eq!(code, 0, "run --json: {stderr}");
    assert!(!stderr.contains("dstrace: error") && !stderr.contains("panicked"), "run --json: {stderr}");
    let dir = Scratch::new("closed-pipe");
    let rec = dir.path("r.rec");
    let recorder = start_recording(&rec, &["--interval", "1s"]);
    sleep(Duration::from_millis(1500));
    stop_recording(recorder);
    for format in ["json", "folded"] {
        let (code, stderr) = into_closed_pipe(&["report", rec.to_str().unwrap(), "--format", format]);
        assert_eq!((code, stderr.as_str()), (0, ""), "report --format {format}");
    }
}
