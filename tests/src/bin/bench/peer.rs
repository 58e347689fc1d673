//! bpftrace, the peer: the same D-state aggregation written as a bpftrace script
//! (`xtask/bench/doffcpu.bt`), run beside dstrace on the same load.
//!
//! bpftrace's programs are its own file descriptors: `/proc/PID/fdinfo/FD` of each
//! `bpf-prog` descriptor has the kernel's run time and run count (BPF statistics
//! are on while the bench runs), so no program has to be guessed by name.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use dstrace::kernel::loader::ProgramStats;

/// The script, as kept in the repository.
pub const SCRIPT: &str = include_str!("../../../../xtask/bench/doffcpu.bt");

/// The bpftrace binary: `$DSTRACE_BENCH_BPFTRACE` (set by `cargo xtask bench`,
/// which installs it), else `bpftrace` on `PATH`; `None` when there is none.
pub fn binary() -> Option<PathBuf> {
    let given = std::env::var_os("DSTRACE_BENCH_BPFTRACE").filter(|path| !path.is_empty()).map(PathBuf::from);
    given.or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join("bpftrace"))
            .find(|path| path.is_file())
    })
}

/// bpftrace's version line (`bpftrace v0.17.0`).
pub fn version(binary: &PathBuf) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// A running bpftrace with the script; interrupted (it prints its maps, which go
/// nowhere) and reaped on drop.
pub struct Bpftrace {
    child: Child,
}

impl Bpftrace {
    /// Starts it, without waiting for its probes.
    pub fn spawn(binary: &PathBuf) -> Result<Bpftrace> {
        let child = Command::new(binary)
            .arg("-e")
            .arg(SCRIPT)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Read only when it ends before tracing, to say why; it writes a line
            // or two otherwise, far below a pipe's capacity.
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Bpftrace { child })
    }

    /// Waits until its program has run (it is attached and tracing); returns the
    /// time since `since`.
    pub fn wait_live(&mut self, since: Instant, timeout: Duration) -> Result<Duration> {
        loop {
            if self.programs().iter().any(|(_, stats)| stats.run_count > 0) {
                return Ok(since.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                let mut said = String::new();
                if let Some(mut stderr) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
                }
                anyhow::bail!("bpftrace ended ({status}) before tracing: {}", said.trim());
            }
            anyhow::ensure!(since.elapsed() < timeout, "bpftrace was not tracing within {timeout:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Its loaded programs: id and statistics.
    pub fn programs(&self) -> Vec<(u32, ProgramStats)> {
        let pid = self.child.id();
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
        let mut programs: Vec<(u32, ProgramStats)> = fds
            .flatten()
            .filter(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|link| link.to_string_lossy() == "anon_inode:bpf-prog")
            })
            .filter_map(|fd| {
                let info = std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    fd.file_name().to_string_lossy()
                ))
                .ok()?;
                let field = |name: &str| -> Option<u64> {
                    info.lines().find_map(|line| line.strip_prefix(name)).and_then(|v| v.trim().parse().ok())
                };
                let stats =
                    ProgramStats { run_time_ns: field("run_time_ns:")?, run_count: field("run_cnt:")? };
                Some((field("prog_id:")? as u32, stats))
            })
            .collect();
        programs.sort_by_key(|(id, _)| *id);
        programs.dedup_by_key(|(id, _)| *id);
        programs
    }

    /// The sum over its programs.
    pub fn total(&self) -> ProgramStats {
        self.programs().iter().fold(ProgramStats::default(), |sum, (_, stats)| ProgramStats {
            run_time_ns: sum.run_time_ns + stats.run_time_ns,
            run_count: sum.run_count + stats.run_count,
        })
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dstrace and bpftrace on the same load, at the same time.
pub struct Comparison {
    pub load: &'static str,
    /// Each program that ran: (name, median ns per run, runs in a repetition).
    pub programs: Vec<(String, f64, u64)>,
    /// Median over repetitions of all dstrace's programs' time per context switch.
    pub dstrace_per_switch: f64,
    /// The same for bpftrace's program.
    pub bpftrace_per_switch: f64,
    /// The same for the empty program: the floor of one program on the hook.
    pub floor_per_switch: f64,
    /// Median over repetitions of bpftrace's time / dstrace's.
    pub ratio: f64,
}

/// Runs `run` `rounds` times with dstrace's programs (and the empty floor) and
/// bpftrace's attached, and compares what each spent.
pub fn compare(
    tracer: &dstrace::kernel::loader::Tracer,
    peer: &Bpftrace,
    load: &'static str,
    rounds: usize,
    run: impl Fn() -> Result<()>,
) -> Result<Comparison> {
    use dstrace_common::names;
    let ours: Vec<&str> = names::PROGRAMS
        .iter()
        .copied()
        .filter(|p| tracer.program_stats(p).is_ok())
        .filter(|p| *p != names::PROG_SCHED_SWITCH_EMPTY && *p != names::PROG_SCHED_WAKING_EMPTY)
        .collect();
    let floor = names::PROG_SCHED_SWITCH_EMPTY;
    let snapshot = || -> Result<Vec<ProgramStats>> {
        let mut all: Vec<ProgramStats> =
            ours.iter().chain([&floor]).map(|p| tracer.program_stats(p)).collect::<Result<_>>()?;
        all.push(peer.total());
        Ok(all)
    };
    let mut per_program: Vec<Vec<ProgramStats>> = vec![Vec::new(); ours.len() + 2];
    let (mut dstrace, mut bpftrace, mut floors, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let before = snapshot()?;
        run()?;
        let after = snapshot()?;
        let delta: Vec<ProgramStats> = after.iter().zip(&before).map(|(a, b)| a.since(b)).collect();
        let switches = delta[ours.len()].run_count.max(1) as f64;
        let ours_ns: u64 = delta[..ours.len()].iter().map(|s| s.run_time_ns).sum();
        let peer_ns = delta[ours.len() + 1].run_time_ns;
        dstrace.push(ours_ns as f64 / switches);
        bpftrace.push(peer_ns as f64 / switches);
        floors.push(delta[ours.len()].run_time_ns as f64 / switches);
        ratios.push(peer_ns as f64 / (ours_ns as f64).max(1.0));
        for (i, stats) in delta.into_iter().enumerate() {
            per_program[i].push(stats);
        }
    }
    let names =
        ours.iter().map(|p| format!("`{p}`")).chain([format!("`{floor}` (floor)"), "bpftrace".to_owned()]);
    let programs = names
        .zip(per_program)
        .filter_map(|(name, mut samples)| {
            samples.sort_by(|a, b| a.ns_per_run().total_cmp(&b.ns_per_run()));
            let median = samples[samples.len() / 2];
            (median.run_count > 0).then(|| (name, median.ns_per_run(), median.run_count))
        })
        .collect();
    Ok(Comparison {
        load,
        programs,
        dstrace_per_switch: crate::median(dstrace),
        bpftrace_per_switch: crate::median(bpftrace),
        floor_per_switch: crate::median(floors),
        ratio: crate::median(ratios),
    })
}

/// The report's section on the comparison with bpftrace.
pub fn report(version: &str, comparisons: &[Comparison], rounds: usize) -> String {
    let mut out = format!(
        "\n## Beside bpftrace\n\n\
         Method: the peer is bpftrace ({version}) running `xtask/bench/doffcpu.bt`, the same aggregation \
         as dstrace's default (D-state time by kernel stack and command: `sched_switch` with \
         `prev_state == TASK_UNINTERRUPTIBLE` records the start and kernel stack, the switch-in adds \
         the duration to a histogram and a sum). It runs at the same time as dstrace's programs (loaded \
         as `dstrace run` loads them) and the empty floor, so all see the same context switches; each \
         load runs {rounds} times and the figures are medians. Per switch: the time of all of a tool's \
         programs over the load divided by the context switches (the floor's runs). bpftrace attaches \
         to the classic tracepoint, whose record is filled before its program runs: that part of its \
         cost is not in BPF statistics, so its figures are lower bounds; dstrace's `tp_btf` programs \
         have no such hidden part.\n\n\
         | load | program | runs | ns per run |\n|---|---|---:|---:|\n"
    );
    for comparison in comparisons {
        for (program, ns, runs) in &comparison.programs {
            out.push_str(&format!("| {} | {program} | {runs} | {ns:.1} |\n", comparison.load));
        }
    }
    out.push_str(
        "\n| load | dstrace ns per switch (all programs) | bpftrace ns per switch | floor ns per switch | \
         bpftrace / dstrace |\n|---|---:|---:|---:|---:|\n",
    );
    for c in comparisons {
        out.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2}x |\n",
            c.load, c.dstrace_per_switch, c.bpftrace_per_switch, c.floor_per_switch, c.ratio
        ));
    }
    out.push_str("\nGoal (issue 9): at least 3x cheaper than bpftrace's equivalent overall.\n");
    out
}
