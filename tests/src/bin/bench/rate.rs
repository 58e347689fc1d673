//! The highest rate of completed D waits `dstrace run` follows without a drop, and
//! what the collector (the `dstrace` process) costs in CPU and memory meanwhile.
//!
//! The load is `dstrace_tests::dload`: waits of [`LENGTH`] (over the default
//! `--min-duration`, so every one is streamed to userspace, resolved and printed as
//! a JSON line) at rates that double until the kernel side counts a drop or the
//! generator cannot keep up. Each step is a fresh `dstrace run --json` (its counters
//! start at zero), its output read by this process as fast as it comes.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use dstrace_tests::dload::{self, Load};

/// The length of each wait: over the default `--min-duration` (1ms).
pub const LENGTH: Duration = Duration::from_millis(2);
/// Seconds each step is measured (after [`WARM_UP`]).
const SECONDS: f64 = 5.0;
/// Time for the lanes to settle before measuring.
const WARM_UP: Duration = Duration::from_secs(1);
/// Rates tried, in waits per second.
pub const RATES: [f64; 7] = [1_000.0, 2_000.0, 5_000.0, 10_000.0, 20_000.0, 40_000.0, 80_000.0];

/// One step.
pub struct Step {
    pub min_duration: &'static str,
    pub target: f64,
    /// Completed waits per second the generator made while measured.
    pub achieved: f64,
    /// Waits streamed to userspace (the summary's counter) per second of the run.
    pub streamed: u64,
    /// Everything the kernel side counted as lost.
    pub drops: u64,
    /// The collector's CPU while measured, as a share of one CPU.
    pub cpu: f64,
    /// Resident memory at the end (KiB) and its peak (KiB).
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// user + system CPU seconds and resident memory (now, peak; KiB) of a process.
fn usage(pid: u32) -> (f64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (crate::cpu_seconds(pid), kib("VmRSS:"), kib("VmHWM:"))
}

/// Runs one step at `target` waits per second.
pub fn step(bin: &Path, target: f64, min_duration: &'static str) -> Result<Step> {
    let mut child = Command::new(bin)
        .args(["run", "--json", "--interval", "0", "--min-duration", min_duration])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start dstrace")?;
    let stdout = child.stdout.take().context("stdout")?;
    let (started, start_seen) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut last = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(r#""type":"start""#) {
                let _ = started.send(());
            }
            last = line;
        }
        last
    });
    let pid = child.id();
    let result = (|| -> Result<Step> {
        start_seen.recv_timeout(Duration::from_secs(60)).context("dstrace run did not start tracing")?;
        let load = dload::start("bench-rate", Load { rate: target, length: LENGTH })?;
        std::thread::sleep(WARM_UP);
        let (cpu0, waits0, t0) = (usage(pid).0, load.waits(), Instant::now());
        std::thread::sleep(Duration::from_secs_f64(SECONDS));
        let ((cpu1, rss_kib, hwm_kib), waits1, seconds) =
            (usage(pid), load.waits(), t0.elapsed().as_secs_f64());
        load.stop();
        Ok(Step {
            min_duration,
            target,
            achieved: (waits1 - waits0) as f64 / seconds,
            streamed: 0,
            drops: 0,
            cpu: (cpu1 - cpu0) / seconds,
            rss_kib,
            hwm_kib,
        })
    })();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    child.wait()?;
    let summary = reader.join().map_err(|_| anyhow::anyhow!("the reader panicked"))?;
    let mut step = result?;
    let summary: serde_json::Value = serde_json::from_str(&summary).context("no summary from dstrace run")?;
    let counters = summary["counters"].as_object().context("no counters in the summary")?;
    step.drops =
        counters.iter().filter(|(name, _)| !name.starts_with("waits_")).filter_map(|(_, n)| n.as_u64()).sum();
    step.drops += summary["bad_records"].as_u64().unwrap_or(0);
    step.streamed = counters.get("waits_streamed").and_then(|n| n.as_u64()).unwrap_or(0);
    Ok(step)
}

/// Steps up the rate until a drop or the generator's ceiling; then the collector
/// at 10k waits per second with waits only aggregated (`--min-duration 10ms`).
pub fn run(bin: &Path) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for target in RATES {
        let step = step(bin, target, "1ms")?;
        eprintln!(
            "dstrace-bench: {target} waits/s: {:.0} made, {} drops, CPU {:.1}%",
            step.achieved,
            step.drops,
            100.0 * step.cpu
        );
        let (drops, short) = (step.drops > 0, step.achieved < 0.8 * target);
        steps.push(step);
        if drops || short {
            break;
        }
    }
    steps.push(step(bin, 10_000.0, "10ms")?);
    Ok(steps)
}

/// The report's section.
pub fn report(steps: &[Step]) -> String {
    let streamed: Vec<&Step> = steps.iter().filter(|s| s.min_duration == "1ms").collect();
    let best = streamed.iter().filter(|s| s.drops == 0).map(|s| s.achieved).fold(0.0, f64::max);
    let ceiling = streamed.last().is_some_and(|s| s.drops == 0);
    let mut out = format!(
        "\n## Rate of D waits without a drop, and the collector's cost\n\n\
         Method: `dstrace-dload` (tests/src/dload.rs) makes real D waits of {} ms each: writers waiting \
         for a file's inode lock (`i_rwsem`) held by another writer whose FUSE request this process \
         answers {} ms later, on as many files as the rate needs, at a paced rate. `dstrace run --json` \
         (release build, default `--min-duration 1ms`: every wait is streamed to userspace, resolved \
         and printed, the output read by the bench as fast as it comes) runs while the rate doubles from \
         1,000 a second, each step for {SECONDS:.0} s after {} s to settle, until the kernel side counts \
         a drop (the summary's `counters`) or the generator falls short of its rate. CPU is the \
         collector's user + system time (`/proc/PID/stat`) over the measured seconds, as a share of one \
         CPU; memory is `VmRSS` at the end and `VmHWM` (the peak, start-up included). The last row \
         has waits only aggregated in the kernel (`--min-duration 10ms`, none streamed).\n\n\
         | waits/s asked | waits/s made | --min-duration | waits streamed | drops | collector CPU | \
         RSS MiB | peak RSS MiB |\n|---:|---:|---|---:|---:|---:|---:|---:|\n",
        LENGTH.as_millis(),
        LENGTH.as_millis(),
        WARM_UP.as_secs(),
    );
    for s in steps {
        out.push_str(&format!(
            "| {:.0} | {:.0} | {} | {} | {} | {:.1}% | {:.1} | {:.1} |\n",
            s.target,
            s.achieved,
            s.min_duration,
            s.streamed,
            s.drops,
            100.0 * s.cpu,
            s.rss_kib as f64 / 1024.0,
            s.hwm_kib as f64 / 1024.0
        ));
    }
    out.push_str(&format!(
        "\nHighest rate with every wait streamed and no drop: {}{best:.0} waits/s.\n\n\
         Goals (issue 9): the collector under 5% of a core at 10k waits/s; RSS under 30 MB.\n",
        if ceiling { "at least " } else { "" }
    ));
    if ceiling {
        out.push_str("(The generator, not dstrace, reached its limit first on this machine.)\n");
    }
    out
}
