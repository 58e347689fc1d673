//! `dstrace daemon`: a real Prometheus scrapes it while real D states happen, and
//! `promtool check metrics` accepts what it scrapes; its
//! endpoint refuses what it does not serve and cannot be held by slow clients;
//! signals leave nothing in the kernel and a readable recording; SIGHUP reloads;
//! profiles reach a Pyroscope-compatible receiver; the systemd unit verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use dstrace::sinks::metrics::label_value;
use dstrace_tests::{
    attached_programs, dstrace_bin,
    fuse::FuseMount,
    hostile_pileup,
    http::{self, encode, free_port},
    require_root, require_tool, Pileup, Scratch, HOSTILE_COMM,
};
use serde_json::Value;

/// How long a daemon may take to load and answer (the machine is shared and slow).
const START_TIMEOUT: Duration = Duration::from_secs(90);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A mount point name just as hostile: a quote, a backslash, a newline, an escape.
const HOSTILE_MOUNT: &str = "q\"b\\s \n\x1b[1m";

/// A running `dstrace daemon`, its standard error in a file; killed on drop.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    stderr: PathBuf,
}

impl Daemon {
    /// Starts a daemon on a free port, recording in `dir`, with more arguments.
    fn start(dir: &Scratch, args: &[&str]) -> Daemon {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Daemon::start_at(dir, addr, args)
    }

    fn start_at(dir: &Scratch, addr: SocketAddr, args: &[&str]) -> Daemon {
        let stderr = dir.path("stderr.txt");
        let recording = dir.path("daemon.rec");
        let child = Command::new(dstrace_bin())
            .arg("daemon")
            .args(["--listen", &addr.to_string(), "--recording", recording.to_str().unwrap()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("dstrace starts");
        Daemon { child, addr, stderr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until /metrics answers 200.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(answer) = http::get(self.addr, "/metrics", HTTP_TIMEOUT) {
                if answer.status == 200 {
                    return;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("dstrace daemon ended ({status}) before serving metrics:\n{}", self.stderr());
            }
            assert!(Instant::now() < deadline, "no metrics within {START_TIMEOUT:?}:\n{}", self.stderr());
            sleep(Duration::from_millis(200));
        }
    }

    fn metrics(&self) -> String {
        let answer = http::get(self.addr, "/metrics", HTTP_TIMEOUT).unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Waits (bounded) for the daemon to end.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "dstrace daemon did not end within 30 s:\n{}", self.stderr());
            sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until standard error has a line containing `text`.
    fn wait_stderr(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stderr = self.stderr();
            if let Some(line) = stderr.lines().find(|line| line.contains(text)) {
                return line.to_owned();
            }
            assert!(Instant::now() < deadline, "stderr never said {text:?}:\n{stderr}");
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 500 ms until it gives a value; panics after `timeout`
/// with the last `describe()`.
fn eventually<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "not there within {timeout:?}: {}", describe());
        sleep(Duration::from_millis(500));
    }
}

/// A Prometheus server on loopback, with its data in a scratch directory.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(binary: &Path, dir: &Scratch, target: SocketAddr) -> Prometheus {
        let config = dir.path("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: dstrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus starts");
        Prometheus { child, addr }
    }

    /// A GET of Prometheus's HTTP API, as JSON (`None` until it answers).
    fn api(&self, path: &str) -> Option<Value> {
        let answer = http::get(self.addr, path, HTTP_TIMEOUT).ok()?;
        let json: Value = serde_json::from_str(&answer.body).ok()?;
        (json["status"] == "success").then_some(json)
    }

    /// The vector result of an instant query.
    fn query(&self, query: &str) -> Vec<Value> {
        self.api(&format!("/api/v1/query?query={}", encode(query)))
            .and_then(|json| json["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// The scrape target's health and last error.
    fn target(&self) -> (String, String) {
        let json = self.api("/api/v1/targets").unwrap_or_default();
        let target = &json["data"]["activeTargets"][0];
        (
            target["health"].as_str().unwrap_or("").to_owned(),
            target["lastError"].as_str().unwrap_or("").to_owned(),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` (Prometheus's own linter of the exposition format and
/// its naming conventions) finds nothing to say of `scrape`.
fn promtool_accepts(promtool: &Path, scrape: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child.stdin.take().unwrap().write_all(scrape.as_bytes()).unwrap();
    let output = dstrace_tests::output_of(child, Duration::from_secs(30), "promtool check metrics");
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{scrape}");
}

/// The series of a query result whose label `key` is `value`.
fn series<'a>(result: &'a [Value], key: &str, value: &str) -> Option<&'a Value> {
    result.iter().find(|series| series["metric"][key] == value)
}

fn value(series: &Value) -> f64 {
    series["value"][1].as_str().unwrap().parse().unwrap()
}

/// A mount point as dstrace labels it: control characters as \xNN, a backslash
/// doubled (the escaping of every other output).
fn label(path: &Path) -> String {
    dstrace::escape::escape(path.to_str().unwrap())
}

/// A real Prometheus scrapes the daemon every second while tasks pile up in D
/// behind two dead FUSE servers, one of them mounted on a hostile name and its
/// tasks given a hostile command name: Prometheus parses every scrape (the target
/// stays up), counts the tasks in D on each mount, and, once they are let go,
/// has their waits in the histogram with the mount, lock kind and function.
#[test]
fn prometheus_scrapes_the_daemon_during_real_d_states() {
    if !require_root("prometheus_scrapes_the_daemon_during_real_d_states") {
        return;
    }
    let Some(prometheus_bin) =
        require_tool("prometheus_scrapes_the_daemon_during_real_d_states", "prometheus")
    else {
        return;
    };
    let Some(promtool) = require_tool("prometheus_scrapes_the_daemon_during_real_d_states", "promtool")
    else {
        return;
    };
    let dir = Scratch::new("prometheus");
    let mut daemon = Daemon::start(&dir, &["--interval", "1s", "--min-duration", "200ms"]);
    daemon.wait_ready();
    let prometheus = Prometheus::start(&prometheus_bin, &dir, daemon.addr);
    eventually(
        Duration::from_secs(90),
        || (prometheus.target().0 == "up").then_some(()),
        || format!("target {:?}", prometheus.target()),
    );

    let mount = FuseMount::new("prometheus").expect("mount the test filesystem");
    let hostile = FuseMount::new(HOSTILE_MOUNT).expect("mount the hostile test filesystem");
    let (plain, hostile_label) = (label(mount.path()), label(hostile.path()));
    let pileup = Pileup::start(&mount, 3);
    let hostile_tasks = hostile_pileup(&hostile, &dir, HOSTILE_COMM.as_ref(), "missing".as_ref(), 2);

    // Tasks in D now, by mount (all lock kinds summed), as Prometheus has them.
    let in_d = |mount_label: &str| {
        let result = prometheus.query("sum by (mount) (dstrace_uninterruptible_tasks)");
        series(&result, "mount", mount_label).map(value)
    };
    let describe =
        || format!("{:?}\n{}", prometheus.query("dstrace_uninterruptible_tasks"), daemon.metrics());
    eventually(Duration::from_secs(60), || in_d(&plain).filter(|&n| n >= 3.0), describe);
    eventually(Duration::from_secs(60), || in_d(&hostile_label).filter(|&n| n >= 2.0), describe);
    let result = prometheus.query("dstrace_uninterruptible_tasks");
    let plain_series = series(&result, "mount", &plain).unwrap();
    let kind = plain_series["metric"]["lock_kind"].as_str().unwrap();
    assert!(kind == "none" || dstrace::model::wait::LOCK_KINDS.contains(&kind), "{plain_series}");
    let oldest = prometheus.query("dstrace_oldest_wait_seconds");
    assert!(value(series(&oldest, "mount", &plain).unwrap()) >= 0.2, "{oldest:?}");
    // A scrape with tasks in D on both mounts, the hostile one included, is what
    // promtool checks.
    promtool_accepts(&promtool, &daemon.metrics());

    // Let them go: their waits reach the histogram.
    drop(pileup);
    drop(hostile_tasks);
    // Their function is the blocking one; "?" only where the kernel lost the
    // stack (a collision in its stack map, on a busy machine), which the daemon
    // then counts among its drops.
    let stacks_lost = || {
        let scrape = daemon.metrics();
        scraped(&scrape, "dstrace_drops_total", r#"reason="stack_lost""#).iter().any(|s| s.1 > 0.0)
    };
    let count = |mount_label: &str| {
        let result = prometheus.query("sum by (mount, function) (dstrace_wait_duration_seconds_count)");
        let lost = stacks_lost();
        let n: f64 = result
            .iter()
            .filter(|series| series["metric"]["mount"] == mount_label)
            .filter(|series| {
                let function = &series["metric"]["function"];
                function == "d_alloc_parallel" || (lost && function == "?")
            })
            .map(value)
            .sum();
        (n > 0.0).then_some(n)
    };
    let describe = || {
        let result = prometheus.query("dstrace_wait_duration_seconds_count");
        format!("{result:?}\n{}", daemon.metrics())
    };
    eventually(Duration::from_secs(60), || count(&plain).filter(|&n| n >= 3.0), describe);
    eventually(Duration::from_secs(60), || count(&hostile_label).filter(|&n| n >= 2.0), describe);
    // The buckets are there, cumulative: the +Inf one is the count.
    let on_plain = format!("mount=\"{}\"", plain.replace('\\', "\\\\").replace('"', "\\\""));
    let inf =
        prometheus.query(&format!(r#"sum(dstrace_wait_duration_seconds_bucket{{le="+Inf",{on_plain}}})"#));
    let total = prometheus.query(&format!("sum(dstrace_wait_duration_seconds_count{{{on_plain}}})"));
    assert_eq!(value(&inf[0]), value(&total[0]));
    assert!(!prometheus.query("dstrace_waits_started_total").is_empty());
    // The process collector's metrics, as every exporter has them.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    ] {
        let result = prometheus.query(name);
        assert!(result.len() == 1 && value(&result[0]) > 0.0, "{name}: {result:?}");
    }
    let started = value(&prometheus.query("process_start_time_seconds")[0]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(started <= now + 60.0 && started > now - 3600.0, "started at {started}, now {now}");
    // Every scrape parsed: the target never went down.
    let (health, error) = prometheus.target();
    assert_eq!((health.as_str(), error.as_str()), ("up", ""));
    // And the scrape itself carries no raw control character.
    let text = daemon.metrics();
    assert!(!text.contains('\x1b'), "{text}");
}

/// The series of a scrape (exposition text) named `name` whose labels contain
/// `labels` (`mount="/x"`), with their values.
fn scraped<'a>(scrape: &'a str, name: &str, labels: &str) -> Vec<(&'a str, f64)> {
    scrape
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(labels))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
        .collect()
}

/// Waits (up to `timeout`) until the recording `rec` has an interval whose tasks
/// in D include every one of `stuck`, each on the mount at `mount_point`.
fn recording_keeps(rec: &Path, stuck: &[u32], mount_point: &Path, timeout: Duration) {
    eventually(
        timeout,
        || {
            let recording = dstrace::sinks::recording::read(&std::fs::read(rec).ok()?).ok()?;
            let kept = |interval: &dstrace::sinks::recording::IntervalData| {
                stuck.iter().all(|pid| {
                    interval.in_d.iter().any(|wait| {
                        wait.pid == *pid
                            && wait.on.mount.as_ref().is_some_and(|m| m.mount_point.as_path() == mount_point)
                    })
                })
            };
            recording.intervals.iter().any(kept).then_some(())
        },
        || format!("{:?}", dstrace::sinks::recording::read(&std::fs::read(rec).unwrap_or_default())),
    );
}

/// Tasks already in D behind a dead FUSE server when the daemon starts (read
/// from kernel memory by the task iterator, not seen to begin) are counted on
/// the FUSE mount, not on "none", and promtool accepts the scrape.
#[test]
fn tasks_in_d_before_the_daemon_starts_have_their_mount() {
    let test = "tasks_in_d_before_the_daemon_starts_have_their_mount";
    if !require_root(test) {
        return;
    }
    let Some(promtool) = require_tool(test, "promtool") else { return };
    let dir = Scratch::new("before-start");
    let mount = FuseMount::new("before-start").expect("mount the test filesystem");
    let pileup = Pileup::start(&mount, 3);
    let mut daemon = Daemon::start(&dir, &["--min-duration", "200ms", "--interval", "1s"]);
    daemon.wait_ready();
    let on_mount = format!("mount=\"{}\"", label_value(mount.path().to_str().unwrap()));
    let scrape = eventually(
        Duration::from_secs(60),
        || {
            let scrape = daemon.metrics();
            let n: f64 =
                scraped(&scrape, "dstrace_uninterruptible_tasks", &on_mount).iter().map(|s| s.1).sum();
            (n >= 3.0).then_some(scrape)
        },
        || {
            // What the scheduler says of each (its CPU and last-run stamp), for a failure.
            let tasks: Vec<String> = pileup
                .stuck
                .iter()
                .map(|pid| {
                    let sched = std::fs::read_to_string(format!("/proc/{pid}/sched")).unwrap_or_default();
                    let stamp = sched.lines().find(|l| l.starts_with("se.exec_start")).unwrap_or("?");
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    let cpu = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(36));
                    format!("{pid}: cpu {cpu:?}, {stamp}")
                })
                .collect();
            format!("{}\n{}", tasks.join("\n"), daemon.metrics())
        },
    );
    // All of them (the lookup's owner waits in S), none of them on "none".
    let on: f64 = scraped(&scrape, "dstrace_uninterruptible_tasks", &on_mount).iter().map(|s| s.1).sum();
    assert_eq!(on, pileup.stuck.len() as f64, "{scrape}");
    assert!(
        scraped(&scrape, "dstrace_oldest_wait_seconds", &on_mount).iter().all(|s| s.1 >= 0.2),
        "{scrape}"
    );
    promtool_accepts(&promtool, &scrape);

    // And its recording holds them, on their mount: the incident is in the record.
    let rec = dir.path("daemon.rec");
    let mount_point = mount.path().to_str().unwrap();
    recording_keeps(&rec, &pileup.stuck, mount.path(), Duration::from_secs(60));
    let out = Command::new(dstrace_bin())
        .args(["report", rec.to_str().unwrap(), "--format", "json", "--mount", mount_point])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_mount = json["by_mount"].as_array().unwrap();
    assert!(by_mount.iter().any(|m| m["mountpoint"] == mount_point), "{json}");
    drop(pileup);
}

/// Sampling (`--sample`): no program attached anywhere, yet a pile-up that began
/// before the daemon started is counted on its mount with its exact age, said on
/// standard error with its holder, kept in the recording, and its metrics go
/// back to nothing once it clears.
#[test]
fn the_sampling_daemon_attaches_nothing_and_reports_a_pile_up_from_before() {
    let test = "the_sampling_daemon_attaches_nothing_and_reports_a_pile_up_from_before";
    if !require_root(test) {
        return;
    }
    let dir = Scratch::new("sample");
    let mount = FuseMount::new("sample").expect("mount the test filesystem");
    let pileup = Pileup::start(&mount, 3);
    let began = Instant::now();
    sleep(Duration::from_secs(2));
    let mut daemon = Daemon::start(&dir, &["--sample", "500ms", "--stuck-after", "1s", "--interval", "1s"]);
    daemon.wait_ready();
    assert!(daemon.stderr().contains("sampling the tasks in D every 500"), "{}", daemon.stderr());
    let attached = attached_programs(daemon.pid());
    assert!(attached.is_empty(), "a sampling daemon attached {attached:?}");

    let on_mount = format!("mount=\"{}\"", label_value(mount.path().to_str().unwrap()));
    let in_d = |scrape: &str| -> f64 {
        scraped(scrape, "dstrace_uninterruptible_tasks", &on_mount).iter().map(|s| s.1).sum()
    };
    let scrape = eventually(
        Duration::from_secs(30),
        || Some(daemon.metrics()).filter(|s| in_d(s) >= 3.0),
        || daemon.metrics(),
    );
    assert_eq!(in_d(&scrape), 3.0, "{scrape}");
    // Its age is the kernel's, not the time since the daemon began: over 2 s.
    let oldest = scraped(&scrape, "dstrace_oldest_wait_seconds", &on_mount);
    assert!(
        oldest.iter().all(|s| s.1 >= 2.0 && s.1 <= began.elapsed().as_secs_f64() + 1.0),
        "{oldest:?} after {:?}",
        began.elapsed()
    );
    // What it cannot give is said where it is missing.
    assert!(scrape.contains("Empty when sampling (--sample)"), "{scrape}");
    let line = daemon.wait_stderr(&format!("dstrace: stuck: mount {} (", label(mount.path())));
    assert!(line.contains("): 3 tasks in D, the oldest for "), "{line}");
    let holder = line.split("; holder: ").nth(1).and_then(|rest| rest.split("; advice: ").next());
    assert!(holder.is_some_and(|holder| holder.contains(&pileup.owner.to_string())), "{line}");

    // The recording keeps them, on their mount.
    let rec = dir.path("daemon.rec");
    recording_keeps(&rec, &pileup.stuck, mount.path(), Duration::from_secs(30));

    // Cleared: the metrics move.
    drop(pileup);
    eventually(
        Duration::from_secs(30),
        || Some(()).filter(|()| in_d(&daemon.metrics()) == 0.0),
        || daemon.metrics(),
    );
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit().success(), "{}", daemon.stderr());
}

/// A mount whose oldest task in D passes `stuck-after` gets one line on standard
/// error (the journal, under systemd) naming it, its tasks, what holds them and
/// the advice; however often the daemon looks again (every scrape is a look), it
/// is said once until `stuck-repeat` has passed (set low by SIGHUP: said again);
/// when the tasks are let go, one line says it cleared.
#[test]
fn a_stuck_mount_is_said_once_on_standard_error_then_again_then_cleared() {
    let test = "a_stuck_mount_is_said_once_on_standard_error_then_again_then_cleared";
    if !require_root(test) {
        return;
    }
    let dir = Scratch::new("stuck");
    let config = dir.path("daemon.toml");
    std::fs::write(&config, "stuck-after = \"2s\"\n").unwrap();
    let mut daemon = Daemon::start(&dir, &["--config", config.to_str().unwrap(), "--min-duration", "200ms"]);
    daemon.wait_ready();
    let mount = FuseMount::new("stuck").expect("mount the test filesystem");
    let pileup = Pileup::start(&mount, 3);
    let mount_point = label(mount.path());
    let stuck = format!("dstrace: stuck: mount {mount_point} (");
    let line = daemon.wait_stderr(&stuck);
    eprintln!("the line: {line}");
    assert!(line.starts_with(&stuck), "{line}");
    assert!(line.contains("): 3 tasks in D, the oldest for "), "{line}");
    let holder = line.split("; holder: ").nth(1).and_then(|rest| rest.split("; advice: ").next());
    assert!(holder.is_some_and(|holder| holder != "unknown"), "no holder named: {line}");
    let advice = format!("3 tasks wait on the FUSE mount {mount_point} ");
    assert!(line.contains(&format!("; advice: {advice}")), "{line}");
    assert!(line.contains(&format!("`umount -l {}`", mount.path().display())), "{line}");
    // Looked at again and again: said once.
    for _ in 0..3 {
        daemon.metrics();
    }
    let said = |what: &str| daemon.stderr().lines().filter(|line| line.starts_with(what)).count();
    assert_eq!(said(&stuck), 1, "{}", daemon.stderr());
    let again = format!("dstrace: still stuck: mount {mount_point} (");
    assert_eq!(said(&again), 0, "{}", daemon.stderr());

    // Said again once stuck-repeat has passed (1 s, applied by SIGHUP).
    std::fs::write(&config, "stuck-after = \"2s\"\nstuck-repeat = \"1s\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(daemon.wait_stderr("dstrace: applied: ").contains("stuck-repeat"));
    let line = daemon.wait_stderr(&again);
    assert!(line.contains("): 3 tasks in D, the oldest for ") && line.contains(&advice), "{line}");
    assert_eq!(said(&stuck), 1, "{}", daemon.stderr());

    // Let go: one line says it cleared, however often the daemon looks again.
    drop(pileup);
    let cleared = format!("dstrace: cleared: mount {mount_point} (");
    let line = daemon.wait_stderr(&cleared);
    assert!(line.contains("): no task in D there for 2.000s or more now (stuck for "), "{line}");
    for _ in 0..3 {
        daemon.metrics();
    }
    assert_eq!(said(&cleared), 1, "{}", daemon.stderr());
    let lines_now = said(&again);
    daemon.metrics();
    assert_eq!(said(&again), lines_now, "still said to be stuck once cleared: {}", daemon.stderr());
    // Each line is one line of text: no control character.
    let stderr = daemon.stderr();
    assert!(stderr.lines().all(|line| !line.chars().any(char::is_control)), "{stderr:?}");
}

/// The endpoint serves GET of its paths only, bounds request heads, gives the
/// slot of the connection waiting longest for its head to a newcomer past the
/// limit, and cuts slow clients off, so that a slowloris holding every slot does
/// not keep Prometheus out (reconnecting ones: `tests/tests/hostile_input.rs`).
#[test]
fn the_endpoint_refuses_what_it_does_not_serve_and_is_not_held_by_slow_clients() {
    if !require_root("the_endpoint_refuses_what_it_does_not_serve_and_is_not_held_by_slow_clients") {
        return;
    }
    let dir = Scratch::new("endpoint");
    // A request head within 2 s; a connection lasts 20 s at most, whatever it does.
    let mut daemon = Daemon::start(&dir, &["--max-connections", "2", "--request-timeout", "2s"]);
    daemon.wait_ready();
    let addr = daemon.addr;

    let answer =
        http::exchange(addr, b"POST /metrics HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi", HTTP_TIMEOUT).unwrap();
    assert_eq!(answer.status, 405, "{answer:?}");
    assert!(answer.head.to_ascii_lowercase().contains("allow: get"), "{answer:?}");
    assert_eq!(http::exchange(addr, b"DELETE / HTTP/1.0\r\n\r\n", HTTP_TIMEOUT).unwrap().status, 405);
    assert_eq!(http::get(addr, "/secret", HTTP_TIMEOUT).unwrap().status, 404);
    assert_eq!(http::get(addr, "/", HTTP_TIMEOUT).unwrap().status, 200);
    // A head past 8 KiB.
    let big = format!("GET /metrics HTTP/1.0\r\nX-Padding: {}\r\n\r\n", "a".repeat(9000));
    let answer = http::exchange(addr, big.as_bytes(), HTTP_TIMEOUT).unwrap();
    assert_eq!(answer.status, 431, "{answer:?}");

    // Two idle connections take both slots: a scrape takes the slot of the one
    // that has waited longest for its head, which is closed (503 is for when
    // every slot is answering a request).
    let mut idle: Vec<TcpStream> = (0..2)
        .map(|_| {
            let stream = TcpStream::connect(addr).unwrap();
            sleep(Duration::from_millis(100));
            stream
        })
        .collect();
    sleep(Duration::from_millis(300));
    let answer = http::get(addr, "/metrics", HTTP_TIMEOUT).unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    idle[0].set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    assert_eq!(idle[0].read(&mut [0u8; 64]).unwrap(), 0, "the oldest idle connection is closed");
    drop(idle);

    // Two slow clients take both slots, a byte of their head every 200 ms (a
    // slowloris): each is cut off by the request timeout, long before the
    // connection's lifetime ends, and a scrape gets in meanwhile.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                let started = Instant::now();
                for byte in
                    b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().chain(b"a".repeat(1000).iter())
                {
                    if stream.write_all(&[*byte]).is_err() || started.elapsed() > Duration::from_secs(60) {
                        break;
                    }
                    sleep(Duration::from_millis(200));
                }
                started.elapsed()
            })
        })
        .collect();
    sleep(Duration::from_millis(500));
    let scraping = Instant::now();
    eventually(
        Duration::from_secs(30),
        || http::get(addr, "/metrics", HTTP_TIMEOUT).ok().filter(|answer| answer.status == 200),
        || "the slow clients keep the scrape out".to_owned(),
    );
    // Not a timing of dstrace's speed: the bound between the two protections.
    // Without the request timeout, only the 20 s lifetime would end them.
    assert!(scraping.elapsed() < Duration::from_secs(15), "the scrape waited {:?}", scraping.elapsed());
    for client in slow {
        let held = client.join().unwrap();
        assert!(held < Duration::from_secs(15), "a slow client was served for {held:?}");
    }
}

/// The BPF program ids a process holds (`prog_id:` in /proc/PID/fdinfo/*), and
/// the link ids.
fn bpf_ids_of(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let infos: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|dir| {
            dir.filter_map(Result::ok).filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect()
        })
        .unwrap_or_default();
    let ids = |key: &str| {
        let mut ids: Vec<u32> = infos
            .iter()
            .filter_map(|info| info.lines().find_map(|line| line.strip_prefix(key)?.trim().parse().ok()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    (ids("prog_id:"), ids("link_id:"))
}

/// Waits until none of these programs, nor any link to them, is in the kernel.
fn assert_gone(programs: &[u32], links: &[u32], when: &str) {
    eventually(
        Duration::from_secs(10),
        || {
            let left_programs = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .any(|program| programs.contains(&program.id()));
            let left_links = aya::programs::loaded_links()
                .filter_map(Result::ok)
                .any(|link| links.contains(&link.id()) || programs.contains(&link.program_id()));
            (!left_programs && !left_links).then_some(())
        },
        || format!("{when}: programs {programs:?} or links {links:?} still in the kernel"),
    );
}

/// The intervals in a recording file, and whether it has damage.
fn intervals(path: &Path) -> (usize, Vec<String>) {
    let bytes = std::fs::read(path).unwrap_or_default();
    match dstrace::sinks::recording::read(&bytes) {
        Ok(recording) => {
            (recording.intervals.len(), recording.damage.iter().map(|damage| damage.to_string()).collect())
        }
        Err(err) => (0, vec![format!("{err:?}")]),
    }
}

/// SIGTERM at any moment writes the last interval and exits 0; SIGKILL at any
/// moment leaves the recording readable up to its last whole interval; neither
/// leaves a program or link in the kernel.
#[test]
fn sigterm_and_sigkill_leave_nothing_in_the_kernel_and_a_readable_recording() {
    if !require_root("sigterm_and_sigkill_leave_nothing_in_the_kernel_and_a_readable_recording") {
        return;
    }
    // Killed early (maybe while loading), and once running.
    for (signal, delay) in [
        (libc::SIGKILL, Duration::from_millis(50)),
        (libc::SIGTERM, Duration::from_millis(50)),
        (libc::SIGKILL, Duration::from_millis(700)),
        (libc::SIGTERM, Duration::from_millis(700)),
        (libc::SIGKILL, Duration::ZERO),
        (libc::SIGTERM, Duration::ZERO),
    ] {
        let dir = Scratch::new(&format!("signal-{signal}-{}", delay.as_millis()));
        let recording = dir.path("daemon.rec");
        let mut daemon = Daemon::start(&dir, &["--interval", "1s"]);
        let running = delay.is_zero();
        if running {
            daemon.wait_ready();
            eventually(START_TIMEOUT, || (intervals(&recording).0 >= 2).then_some(()), || daemon.stderr());
        } else {
            sleep(delay);
        }
        let (programs, links) = bpf_ids_of(daemon.pid());
        let before = intervals(&recording).0;
        daemon.signal(signal);
        let status = daemon.wait_exit();
        let when = format!("signal {signal} after {delay:?} (running: {running})");
        if signal == libc::SIGTERM {
            assert!(status.success(), "{when}: exit {status}:\n{}", daemon.stderr());
        }
        assert_gone(&programs, &links, &when);
        if running {
            assert!(!programs.is_empty() && !links.is_empty(), "{when}: no BPF fds seen");
            let (after, damage) = intervals(&recording);
            assert!(after >= before, "{when}: {after} intervals after, {before} before");
            assert!(damage.is_empty(), "{when}: {damage:?}");
            // And `dstrace report` reads it.
            let report = Command::new(dstrace_bin())
                .args(["report", recording.to_str().unwrap(), "--format", "json"])
                .output()
                .unwrap();
            assert!(report.status.success(), "{when}: {}", String::from_utf8_lossy(&report.stderr));
        }
    }
}

/// SIGHUP reopens the recording (a moved file is created anew), applies the
/// recording's keys of a changed file at once and says which keys need a
/// restart; a broken file is reported with its line and the daemon goes on.
#[test]
fn sighup_reopens_the_recording_and_reloads_the_configuration() {
    if !require_root("sighup_reopens_the_recording_and_reloads_the_configuration") {
        return;
    }
    let dir = Scratch::new("sighup");
    let config = dir.path("daemon.toml");
    let first = dir.path("first.rec");
    std::fs::write(&config, format!("interval = \"1s\"\nrecording = \"{}\"\n", first.display())).unwrap();
    // --recording on the command line would win over the file: start without it.
    let stderr = dir.path("stderr.txt");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(dstrace_bin())
        .args(["daemon", "--listen", &addr.to_string(), "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Daemon { child, addr, stderr };
    daemon.wait_ready();
    eventually(START_TIMEOUT, || (intervals(&first).0 >= 1).then_some(()), || daemon.stderr());

    // Moved away (as logrotate does): SIGHUP creates it again.
    let moved = dir.path("first.rec.moved");
    std::fs::rename(&first, &moved).unwrap();
    daemon.signal(libc::SIGHUP);
    eventually(Duration::from_secs(30), || (intervals(&first).0 >= 1).then_some(()), || daemon.stderr());
    assert!(intervals(&moved).1.is_empty());

    // A new recording path and a key that needs a restart.
    let second = dir.path("second.rec");
    std::fs::write(
        &config,
        format!("interval = \"1s\"\nrecording = \"{}\"\nmax-functions = 3\n", second.display()),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    let line = daemon.wait_stderr("only applied on restart");
    assert!(line.contains("max-functions"), "{line}");
    assert!(daemon.wait_stderr("applied: ").contains("recording"));
    eventually(Duration::from_secs(30), || (intervals(&second).0 >= 1).then_some(()), || daemon.stderr());

    // A broken file: the error names the line, and the daemon goes on.
    std::fs::write(&config, "interval = \"1s\"\n\nrotate = \"many\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    let line = daemon.wait_stderr("not reloaded");
    assert!(line.contains("line 3"), "{line}");
    assert!(daemon.metrics().contains("dstrace_uninterruptible_tasks"));
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit().success());
}

/// A bad configuration file fails at once with its line, before anything is
/// loaded (no root needed for that).
#[test]
fn a_bad_configuration_file_names_its_line() {
    let dir = Scratch::new("bad-config");
    let config = dir.path("daemon.toml");
    std::fs::write(&config, "rotate = 2\nlisten = \"nowhere\"\n").unwrap();
    let output =
        Command::new(dstrace_bin()).args(["daemon", "--config", config.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("daemon.toml, line 2: "), "{stderr}");
    let output =
        Command::new(dstrace_bin()).args(["daemon", "--config", "/nonexistent.toml"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot read the configuration file /nonexistent.toml"), "{stderr}");
}

/// Profiles of blocked time reach a Pyroscope-compatible ingest endpoint (a
/// receiver on loopback): `POST /ingest` with the host label, pprof in the body,
/// the FUSE mount's waits in it.
#[test]
fn profiles_are_pushed_to_a_pyroscope_ingest_url() {
    if !require_root("profiles_are_pushed_to_a_pyroscope_ingest_url") {
        return;
    }
    let receiver = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", receiver.local_addr().unwrap());
    let dir = Scratch::new("pyroscope");
    let mut daemon = Daemon::start(
        &dir,
        &["--pyroscope-url", &url, "--pyroscope-interval", "1s", "--min-duration", "200ms"],
    );
    daemon.wait_ready();
    let mount = FuseMount::new("pyroscope").expect("mount the test filesystem");
    let pileup = Pileup::start(&mount, 2);
    sleep(Duration::from_millis(1500));
    drop(pileup);
    let mount_point = mount.path().to_str().unwrap().to_owned();

    receiver.set_nonblocking(false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no profile with the mount's waits:\n{}", daemon.stderr());
        let (mut stream, _) = receiver.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (head, body) = read_request(&mut stream);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let request_line = head.lines().next().unwrap_or_default().to_owned();
        assert!(request_line.starts_with("POST /ingest?name=dstrace.blocked%7Bhost%3D"), "{request_line}");
        assert!(request_line.contains("&format=pprof") && request_line.contains("&from="), "{request_line}");
        let profile = dstrace::sinks::pprof::decode(&body).expect("a gzip-compressed pprof profile");
        let strings = &profile.string_table;
        if strings.iter().any(|s| s == &mount_point) && strings.iter().any(|s| s == "d_alloc_parallel") {
            break;
        }
    }
}

/// Reads one HTTP request with a Content-Length body.
fn read_request(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the request ended early");
        bytes.extend_from_slice(&buf[..n]);
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        if bytes.len() >= end + 4 + length {
            return (head, bytes[end + 4..end + 4 + length].to_vec());
        }
    }
}

/// `systemd-analyze verify` accepts the shipped unit (its ExecStart pointed at
/// the binary under test: verify checks that the command exists), without a
/// warning.
#[test]
fn systemd_accepts_the_unit() {
    let Some(analyze) = require_tool("systemd_accepts_the_unit", "systemd-analyze") else { return };
    let dir = Scratch::new("unit");
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/dstrace.service"))
        .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/dstrace daemon --config /etc/dstrace/daemon.toml"));
    let path = dir.path("dstrace.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/dstrace", dstrace_bin().to_str().unwrap())).unwrap();
    let output = Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}
