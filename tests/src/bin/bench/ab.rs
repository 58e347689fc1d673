//! The slowdown of workloads under `dstrace run`, measured in pairs.
//!
//! Each pair runs a workload once without dstrace and once with `dstrace run
//! --json` attached (tracing live before the workload starts), the order swapped
//! every other pair (ABBA) so that a drift of the machine cancels. The figure is
//! the median of the per-pair ratios (with / without), with the spread of the
//! ratios and a bootstrap 95% interval of the median: when the interval holds
//! 1.00 the slowdown is within the noise.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};

/// Pairs per workload.
const PAIRS: usize = 10;
/// Bootstrap resamples.
const RESAMPLES: usize = 2000;
/// Round trips of the pipe workload.
const PIPE_ROUND_TRIPS: usize = 50_000;
/// Time `dstrace run` is left to settle after it says it traces (its first look
/// at /proc and the like), so that the workload meets steady tracing.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

/// A workload's figures.
pub struct AbResult {
    pub workload: &'static str,
    /// Median wall time without and with dstrace, seconds.
    pub without: f64,
    pub with: f64,
    /// Per-pair ratios (with / without).
    pub ratios: Vec<f64>,
    /// Bootstrap 95% interval of the median ratio.
    pub interval: (f64, f64),
}

/// `dstrace run` tracing until dropped.
struct Attached(Child);

impl Attached {
    fn start(bin: &Path) -> Result<Attached> {
        let mut child = Command::new(bin)
            .args(["run", "--json", "--interval", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start dstrace")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        loop {
            let line = lines.next().context("dstrace run ended before tracing")??;
            if line.contains(r#""type":"start""#) {
                break;
            }
        }
        // Whatever it prints next is read and dropped, so it never blocks on a pipe.
        std::thread::spawn(move || lines.for_each(drop));
        std::thread::sleep(SETTLE);
        Ok(Attached(child))
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

/// Two threads exchange a byte over a pair of pipes [`PIPE_ROUND_TRIPS`] times.
pub fn pipe_ping_pong() -> Result<()> {
    let (to_echo_read, to_echo) = std::io::pipe()?;
    let (back, back_write) = std::io::pipe()?;
    crate::exchange(to_echo, back, to_echo_read, back_write, PIPE_ROUND_TRIPS)
}

/// Runs `workload` in [`PAIRS`] pairs, without and with dstrace.
pub fn measure(bin: &Path, name: &'static str, workload: impl Fn() -> Result<()>) -> Result<AbResult> {
    let timed = |with: bool| -> Result<f64> {
        let attached = if with { Some(Attached::start(bin)?) } else { None };
        let started = Instant::now();
        workload()?;
        let seconds = started.elapsed().as_secs_f64();
        drop(attached);
        Ok(seconds)
    };
    // One run to warm caches, not counted.
    timed(false)?;
    let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..PAIRS {
        let (a, b) = if pair % 2 == 0 {
            let a = timed(false)?;
            (a, timed(true)?)
        } else {
            let b = timed(true)?;
            (timed(false)?, b)
        };
        without.push(a);
        with.push(b);
        ratios.push(b / a);
    }
    Ok(AbResult {
        workload: name,
        without: crate::median(without),
        with: crate::median(with),
        interval: bootstrap_median(&ratios),
        ratios,
    })
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
         Method: each workload runs {PAIRS} times without and {PAIRS} times with `dstrace run --json` \
         attached (release build, defaults; tracing live for {} ms before the workload starts), in pairs whose \
         order alternates (ABBA), after one run to warm up. The slowdown is the median of the per-pair \
         ratios of wall times (with / without), shown with the lowest and highest ratio and a bootstrap \
         95% interval of the median ({RESAMPLES} resamples): an interval that holds 1.00 means no \
         slowdown measurable above the noise. Workloads: fsync-heavy (write 4 KiB and fsync, {} times, \
         on a disk-backed filesystem: every fsync is a D wait), pipe-heavy (two threads exchange a byte \
         over a pair of pipes, {PIPE_ROUND_TRIPS} round trips: two context switches per round trip, \
         none into D).\n\n\
         | workload | median without (s) | median with (s) | slowdown (median ratio) | lowest..highest \
         ratio | 95% interval |\n|---|---:|---:|---:|---|---|\n",
        SETTLE.as_millis(),
        crate::FSYNCS
    );
    for r in results {
        let lowest = r.ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = r.ratios.iter().copied().fold(0.0, f64::max);
        out.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.3} | {lowest:.3}..{highest:.3} | {:.3}..{:.3} |\n",
            r.workload,
            r.without,
            r.with,
            crate::median(r.ratios.clone()),
            r.interval.0,
            r.interval.1
        ));
    }
    out.push_str("\nGoal (issue 9): no measurable slowdown of the workloads (paired A/B within noise).\n");
    out
}
