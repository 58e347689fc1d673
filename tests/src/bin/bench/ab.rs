//! The slowdown of workloads under each way of tracing, measured in pairs.
//!
//! Each pair runs a workload once without any tracer and once with one attached
//! (tracing live before the workload starts), the order swapped every other pair
//! (ABBA) so that a drift of the machine cancels. The tracers, each in its own
//! pairs: the floor (two empty programs on `sched_switch` and `sched_waking`, what
//! any tracer on these hooks costs at least), `dstrace run --json`, the same with
//! `--no-waker`, `dstrace daemon`, and bpftrace's D-state script. The figure is the
//! median of the per-pair ratios (with / without), with the spread of the ratios
//! and a bootstrap 95% interval of the median: when the interval holds 1.00 the
//! slowdown is within the noise.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// Pairs per workload and tracer.
const PAIRS: usize = 10;
/// Bootstrap resamples.
const RESAMPLES: usize = 2000;
/// Round trips of the pipe workload.
const PIPE_ROUND_TRIPS: usize = 200_000;
/// Time a tracer is left to settle once attached (dstrace's first look at the
/// tasks in D and the like), so that the workload meets steady tracing.
const SETTLE: Duration = Duration::from_millis(500);

/// One way of tracing the workloads.
#[derive(Clone, Debug)]
pub enum Tracer {
    /// The empty programs alone.
    Floor,
    /// `dstrace` with these arguments.
    Dstrace(&'static [&'static str]),
    /// bpftrace's script, from this binary.
    Bpftrace(PathBuf),
}

impl Tracer {
    /// The tracers measured: bpftrace only where it is installed.
    pub fn all(bpftrace: Option<&PathBuf>) -> Vec<Tracer> {
        let mut tracers = vec![
            Tracer::Floor,
            Tracer::Dstrace(&["run", "--json"]),
            Tracer::Dstrace(&["run", "--json", "--no-waker"]),
            Tracer::Dstrace(&["daemon"]),
            Tracer::Dstrace(&["daemon", "--sample", "1s"]),
        ];
        tracers.extend(bpftrace.cloned().map(Tracer::Bpftrace));
        tracers
    }

    /// Its name in the report.
    fn name(&self) -> String {
        match self {
            Tracer::Floor => "the floor (empty programs)".to_owned(),
            Tracer::Dstrace(args) => format!("`dstrace {}`", args.join(" ")),
            Tracer::Bpftrace(_) => "bpftrace (D-state script)".to_owned(),
        }
    }
}

/// A workload's figures under one tracer.
pub struct AbResult {
    pub workload: &'static str,
    pub tracer: String,
    /// Median wall time without and with the tracer, seconds.
    pub without: f64,
    pub with: f64,
    /// Per-pair ratios (with / without).
    pub ratios: Vec<f64>,
    /// Bootstrap 95% interval of the median ratio.
    pub interval: (f64, f64),
}

/// A tracer attached until dropped.
enum Attached {
    Floor(#[allow(dead_code)] aya::Ebpf),
    Process(Child),
    Bpftrace(#[allow(dead_code)] crate::peer::Bpftrace),
}

impl Attached {
    fn start(bin: &Path, tracer: &Tracer, scratch: &Path) -> Result<Attached> {
        let attached = match tracer {
            Tracer::Floor => Attached::Floor(dstrace::kernel::loader::Tracer::floor_only()?),
            Tracer::Dstrace(args) => {
                let mut command = Command::new(bin);
                command.args(*args);
                if args.first() == Some(&"run") {
                    // No interval lines: only the waits.
                    command.args(["--interval", "0"]);
                }
                let mut endpoint = None;
                if args.first() == Some(&"daemon") {
                    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                    endpoint = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
                    let recording = scratch.join("ab-daemon.rec");
                    let _ = std::fs::remove_file(&recording);
                    command
                        .arg("--listen")
                        .arg(format!("127.0.0.1:{port}"))
                        .arg("--recording")
                        .arg(recording);
                }
                let child = command
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("cannot start dstrace")?;
                let pid = child.id();
                let attached = Attached::Process(child);
                // A daemon is tracing (or sampling) once it serves its metrics;
                // `run`, once its scheduler program is linked (the others are
                // attached before it).
                let live = || match endpoint {
                    Some(addr) => dstrace_tests::http::get(addr, "/metrics", Duration::from_secs(1))
                        .is_ok_and(|answer| answer.status == 200),
                    None => dstrace_tests::attached_programs(pid)
                        .iter()
                        .any(|name| name.starts_with("sched_switch")),
                };
                let deadline = Instant::now() + Duration::from_secs(60);
                while !live() {
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "dstrace {args:?} was not tracing within a minute"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                attached
            }
            Tracer::Bpftrace(binary) => {
                let mut peer = crate::peer::Bpftrace::spawn(binary)?;
                peer.wait_live(Instant::now(), Duration::from_secs(60))?;
                Attached::Bpftrace(peer)
            }
        };
        std::thread::sleep(SETTLE);
        Ok(attached)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Attached::Process(child) = self {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

/// Two threads exchange a byte over a pair of pipes [`PIPE_ROUND_TRIPS`] times,
/// both pinned to the last CPU: every round trip is two wake-ups and two context
/// switches on that CPU, none into D.
pub fn pipe_ping_pong() -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pinned = std::thread::spawn(move || -> Result<()> {
        // The echo thread it spawns inherits the CPU.
        let pinned = dstrace::resolve::procfs::pin_to_cpu(cpus - 1);
        anyhow::ensure!(pinned, "cannot pin the pipe workload to CPU {}", cpus - 1);
        let (to_echo_read, to_echo) = std::io::pipe()?;
        let (back, back_write) = std::io::pipe()?;
        crate::exchange(to_echo, back, to_echo_read, back_write, PIPE_ROUND_TRIPS)
    });
    pinned.join().map_err(|_| anyhow::anyhow!("the pipe workload panicked"))?
}

/// Runs `workload` in [`PAIRS`] pairs, without and with each of `tracers`.
pub fn measure(
    bin: &Path,
    scratch: &Path,
    tracers: &[Tracer],
    name: &'static str,
    workload: impl Fn() -> Result<()>,
) -> Result<Vec<AbResult>> {
    let timed = |tracer: Option<&Tracer>| -> Result<f64> {
        let attached = tracer.map(|tracer| Attached::start(bin, tracer, scratch)).transpose()?;
        let started = Instant::now();
        workload()?;
        let seconds = started.elapsed().as_secs_f64();
        drop(attached);
        Ok(seconds)
    };
    // One run to warm caches, not counted.
    timed(None)?;
    let mut results = Vec::new();
    for tracer in tracers {
        eprintln!("dstrace-bench: {name} under {}", tracer.name());
        let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..PAIRS {
            let (a, b) = if pair % 2 == 0 {
                let a = timed(None)?;
                (a, timed(Some(tracer))?)
            } else {
                let b = timed(Some(tracer))?;
                (timed(None)?, b)
            };
            without.push(a);
            with.push(b);
            ratios.push(b / a);
        }
        results.push(AbResult {
            workload: name,
            tracer: tracer.name(),
            without: crate::median(without),
            with: crate::median(with),
            interval: bootstrap_median(&ratios),
            ratios,
        });
    }
    Ok(results)
}

/// A 95% bootstrap interval of the median (a fixed-seed xorshift: the same data
/// gives the same interval).
fn bootstrap_median(values: &[f64]) -> (f64, f64) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut medians: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            crate::median(
                (0..values.len()).map(|_| values[(next() % values.len() as u64) as usize]).collect(),
            )
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    (medians[RESAMPLES * 25 / 1000], medians[RESAMPLES * 975 / 1000])
}

/// The report's section.
pub fn report(results: &[AbResult]) -> String {
    let mut out = format!(
        "\n## Slowdown of workloads (paired A/B)\n\n\
         Method: each workload runs {PAIRS} times without any tracer and {PAIRS} times with one attached, \
         for each tracer in turn (release build, defaults; tracing live for {} ms before the workload \
         starts), in pairs whose order alternates (ABBA), after one run to warm up. The tracers: the floor \
         (two empty programs on `sched_switch` and `sched_waking`: what any tracer of this design costs at \
         least), `dstrace run --json`, the same with `--no-waker` (no program on `sched_waking`), \
         `dstrace daemon` (which attaches none there either), `dstrace daemon --sample 1s` (no program on \
         any hook: the task iterator once a second) and bpftrace's D-state off-CPU script. The \
         slowdown is the median of the per-pair ratios of wall times (with / without), shown with the \
         lowest and highest ratio and a bootstrap 95% interval of the median ({RESAMPLES} resamples): an \
         interval that holds 1.00 means no slowdown measurable above the noise. Workloads: fsync-heavy \
         (write 4 KiB and fsync, {} times, on a disk-backed filesystem: every fsync is a D wait), \
         pipe-heavy (two threads pinned to one CPU exchange a byte over a pair of pipes, \
         {PIPE_ROUND_TRIPS} round trips: two wake-ups and two context switches per round trip, none into \
         D).\n\n\
         | workload | tracer | median without (s) | median with (s) | slowdown (median ratio) | \
         lowest..highest ratio | 95% interval |\n|---|---|---:|---:|---:|---|---|\n",
        SETTLE.as_millis(),
        crate::FSYNCS
    );
    for r in results {
        let lowest = r.ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = r.ratios.iter().copied().fold(0.0, f64::max);
        out.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {lowest:.3}..{highest:.3} | {:.3}..{:.3} |\n",
            r.workload,
            r.tracer,
            r.without,
            r.with,
            crate::median(r.ratios.clone()),
            r.interval.0,
            r.interval.1
        ));
    }
    out.push_str(
        "\nGoals (issues 9 and 21): no measurable slowdown of the fsync workload; on the pipe workload, \
         dstrace within noise of the floor, `--no-waker` and the daemon at or below it (they skip one of \
         its two hooks), the sampling daemon within noise of no tracer at all.\n",
    );
    out
}
