//! `dstrace-bench`, run by `cargo xtask bench`: what dstrace's eBPF programs cost.
//!
//! Wall-clock timings of context switches are noisy on these machines; the kernel's
//! own accounting is steady. With BPF statistics enabled (`BPF_ENABLE_STATS`, which
//! lasts as long as its file descriptor and changes no sysctl), the kernel sums each
//! program's run time and run count. dstrace's `sched_switch` and `sched_waking` are
//! each attached beside an empty program on the same tracepoint, so both see exactly
//! the same events: the empty one is the floor, the cost of being called at all.
//!
//! Loads, each repeated and reported as the median over the repetitions:
//! * switch-heavy: two threads ping-pong a byte over a socket pair (every exchange
//!   puts a task to sleep in S and wakes it): switches that do not enter D;
//! * D-heavy: write and fsync a small file in a loop: the writer sleeps in D on
//!   every fsync, and so do the kernel threads doing the I/O.
//!
//! Then the time to the first screen of `dstrace run` and to a `dstrace snapshot`
//! with [`FIRST_SCREEN_TASKS`] tasks already in D (wall clock, from spawning the
//! binary; the median of [`ROUNDS`] runs).
//!
//! The same loads again with bpftrace running the equivalent script beside dstrace
//! ([`peer`]); the highest rate of D waits followed without a drop and the
//! collector's CPU and memory ([`rate`]); the start-up with 10,000 threads on the
//! machine; the slowdown of workloads, measured in pairs ([`ab`]).
//!
//! Then `dstrace record` (the release binary beside this one) records for a minute
//! (`DSTRACE_BENCH_RECORD_SECONDS`) under a steady fsync loop: the recording's size,
//! extrapolated to an hour, and the recorder's CPU time.
//!
//! Last, a soak of `dstrace daemon` for three minutes (`DSTRACE_BENCH_SOAK_SECONDS`,
//! 600 for the ten-minute soak) under a steady D-wait load with process churn,
//! scraped every second: its resident memory over time and its CPU per wait.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ab;
mod peer;
mod rate;

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use dstrace::{
    clock::rfc3339_utc,
    kernel::loader::{FloorOrder, Options, ProgramStats, Tracer},
};
use dstrace_common::{names, Counter};

/// Repetitions of each load.
const ROUNDS: usize = 5;
/// Round trips of the switch-heavy load, per repetition.
const PING_PONGS: usize = 50_000;
/// fsyncs of the D-heavy load, per repetition.
const FSYNCS: usize = 300;

/// Tasks in D while the first screen is timed.
const FIRST_SCREEN_TASKS: usize = 100;
/// Threads on the machine for the second start-up measure.
const MANY_THREADS: usize = 10_000;

/// The kernel side's settings of `dstrace run` with its defaults.
fn run_options() -> Options {
    let min_duration =
        dstrace::cli::parse::parse_duration(dstrace::cli::parse::DEFAULT_MIN_DURATION).unwrap_or_default();
    Options { min_duration, ..Options::default() }
}

/// The median (the upper one of an even count); 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// One repetition's figures for one program.
#[derive(Clone, Copy, Default)]
struct Sample {
    stats: ProgramStats,
}

struct PhaseResult {
    load: &'static str,
    /// Whether the empty programs ran before or after dstrace's.
    order: &'static str,
    /// (program, median ns/run, runs in the median repetition)
    programs: Vec<(&'static str, f64, u64)>,
    /// D waits started per repetition (median).
    waits_started: u64,
    /// Wall time of the whole phase.
    seconds: f64,
}

/// bpftrace (the peer) finds tracepoints in tracefs, which many machines do not
/// mount at boot (dstrace does not need it). Where it is not mounted, the bench
/// mounts it in a mount namespace of its own, which bpftrace inherits: the host's
/// mounts are left as they were. Runs first, while the bench has one thread.
fn tracefs_for_bpftrace() -> Result<()> {
    let tracefs = std::path::Path::new("/sys/kernel/tracing");
    if tracefs.join("events").exists() {
        return Ok(());
    }
    dstrace_tests::mounts::private_namespace().context("cannot have a mount namespace for tracefs")?;
    dstrace_tests::mounts::mount(Some("nodev"), tracefs, Some("tracefs"), 0, None)
        .context("cannot mount tracefs on /sys/kernel/tracing for bpftrace")
}

/// The recording's sections: size and CPU under a D-wait load, and the size of
/// the tasks in D kept.
fn recording_reports(dir: &Path) -> Result<String> {
    eprintln!("dstrace-bench: recording");
    let seconds =
        std::env::var("DSTRACE_BENCH_RECORD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let recordings = [
        record_phase(dir, "10ms", seconds).context("the recording benchmark (default threshold)")?,
        record_phase(dir, "0", seconds / 2).context("the recording benchmark (every wait)")?,
    ];
    let mut report = record_report(&recordings);
    eprintln!("dstrace-bench: recording the tasks in D");
    let in_d = [
        in_d_phase(seconds, 0).context("the recording of no task in D")?,
        in_d_phase(seconds, 100).context("the recording of 100 tasks in D")?,
    ];
    report.push_str(&in_d_report(&in_d));
    Ok(report)
}

fn main() -> Result<()> {
    match std::env::var("DSTRACE_BENCH_ONLY").as_deref() {
        // One section alone (for working on it); `cargo xtask bench` runs all.
        Ok("recording") => {
            print!("{}", recording_reports(&fsync_dir())?);
            return Ok(());
        }
        Ok("ab") => {
            tracefs_for_bpftrace()?;
            let (bin, dir) = (dstrace_tests::dstrace_bin(), fsync_dir());
            let tracers = ab::Tracer::all(peer::binary().as_ref());
            let mut ab = ab::measure(&bin, &dir, &tracers, "fsync-heavy", || fsync_loop(&dir))?;
            ab.extend(ab::measure(&bin, &dir, &tracers, "pipe-heavy", ab::pipe_ping_pong)?);
            print!("{}", ab::report(&ab));
            return Ok(());
        }
        _ => {}
    }
    let bench_started = Instant::now();
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let output = std::env::args().nth(1).map(PathBuf::from);
    tracefs_for_bpftrace()?;
    dstrace::kernel::preflight::check()?;
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("cannot enable BPF statistics")?;
    let dir = fsync_dir();
    let bin = dstrace_tests::dstrace_bin();
    let bpftrace = peer::binary();
    let mut results = Vec::new();
    for order in [FloorOrder::Last, FloorOrder::First] {
        let tracer = Tracer::load_with_floors(&run_options(), Some(order))?;
        let programs = [
            tracer.program,
            names::PROG_SCHED_SWITCH_EMPTY,
            names::PROG_SCHED_WAKING,
            names::PROG_SCHED_WAKING_EMPTY,
        ];
        let order = match order {
            FloorOrder::Last => "floors run after",
            FloorOrder::First => "floors run before",
        };
        results.push(phase(&tracer, &programs, "switch-heavy (socket ping-pong)", order, ping_pong));
        results.push(phase(&tracer, &programs, "D-heavy (write + fsync)", order, || fsync_loop(&dir)));
    }
    let mut report = report(&results, &load_average);
    match &bpftrace {
        Some(binary) => {
            let tracer = Tracer::load_with_floors(&run_options(), Some(FloorOrder::Last))?;
            let mut peer = peer::Bpftrace::spawn(binary)?;
            peer.wait_live(Instant::now(), Duration::from_secs(60))?;
            let comparisons = [
                peer::compare(&tracer, &peer, "switch-heavy (socket ping-pong)", ROUNDS, ping_pong)?,
                peer::compare(&tracer, &peer, "D-heavy (write + fsync)", ROUNDS, || fsync_loop(&dir))?,
            ];
            drop(peer);
            drop(tracer);
            report.push_str(&peer::report(&peer::version(binary), &comparisons, ROUNDS));
        }
        None => report.push_str(
            "\n## Beside bpftrace\n\nNot measured: bpftrace is not installed (`cargo xtask bench` installs it).\n",
        ),
    }
    eprintln!("dstrace-bench: the rate of D waits without a drop");
    report.push_str(&rate::report(&rate::run(&bin)?));
    eprintln!("dstrace-bench: time to the first screen");
    report.push_str(&first_screen(bpftrace.as_ref())?);
    eprintln!("dstrace-bench: paired A/B of workloads");
    let tracers = ab::Tracer::all(bpftrace.as_ref());
    let mut ab = ab::measure(&bin, &dir, &tracers, "fsync-heavy", || fsync_loop(&dir))?;
    ab.extend(ab::measure(&bin, &dir, &tracers, "pipe-heavy", ab::pipe_ping_pong)?);
    report.push_str(&ab::report(&ab));
    report.push_str(&recording_reports(&dir)?);
    let soak_seconds =
        std::env::var("DSTRACE_BENCH_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(180);
    report.push_str(&soak_report(&soak_phase(&dir, soak_seconds).context("the daemon soak benchmark")?));
    report.push_str(&format!(
        "\n## This run\n\nThe whole bench took {:.1} min (the build before it not included).\n",
        bench_started.elapsed().as_secs_f64() / 60.0
    ));
    print!("{report}");
    if let Some(path) = output {
        std::fs::write(&path, report).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("dstrace-bench: wrote {}", path.display());
    }
    Ok(())
}

fn phase(
    tracer: &Tracer,
    programs: &[&'static str],
    load: &'static str,
    order: &'static str,
    run: impl Fn() -> Result<()>,
) -> PhaseResult {
    let started = Instant::now();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); programs.len()];
    let mut waits = Vec::new();
    for _ in 0..ROUNDS {
        let before: Vec<ProgramStats> = programs.iter().map(|p| tracer.program_stats(p).unwrap()).collect();
        let waits_before = counter(tracer, Counter::WaitsStarted);
        run().expect("the load runs");
        for (i, program) in programs.iter().enumerate() {
            let after = tracer.program_stats(program).unwrap();
            samples[i].push(Sample { stats: after.since(&before[i]) });
        }
        waits.push(counter(tracer, Counter::WaitsStarted) - waits_before);
    }
    let programs = programs
        .iter()
        .zip(samples)
        .map(|(program, mut samples)| {
            samples.sort_by(|a, b| a.stats.ns_per_run().total_cmp(&b.stats.ns_per_run()));
            let median = samples[samples.len() / 2];
            (*program, median.stats.ns_per_run(), median.stats.run_count)
        })
        .collect();
    waits.sort_unstable();
    PhaseResult {
        load,
        order,
        programs,
        waits_started: waits[waits.len() / 2],
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn counter(tracer: &Tracer, which: Counter) -> u64 {
    tracer.counters().unwrap().into_iter().find(|(c, _)| *c == which).map_or(0, |(_, n)| n)
}

/// Two threads exchange a byte over a socket pair `PING_PONGS` times.
fn ping_pong() -> Result<()> {
    let (a, b) = UnixStream::pair()?;
    exchange(a.try_clone()?, a, b.try_clone()?, b, PING_PONGS)
}

/// Two threads exchange a byte `round_trips` times: this one writes `out` and
/// reads `back`; an echo thread reads `echo_in` and writes `echo_out`.
fn exchange(
    mut out: impl Write,
    mut back: impl Read,
    mut echo_in: impl Read + Send + 'static,
    mut echo_out: impl Write + Send + 'static,
    round_trips: usize,
) -> Result<()> {
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut byte = [0u8; 1];
        for _ in 0..round_trips {
            echo_in.read_exact(&mut byte)?;
            echo_out.write_all(&byte)?;
        }
        Ok(())
    });
    let mut byte = [7u8; 1];
    for _ in 0..round_trips {
        out.write_all(&byte)?;
        back.read_exact(&mut byte)?;
    }
    echo.join().map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(())
}

/// A directory on a disk-backed filesystem, where fsync waits for the device.
fn fsync_dir() -> PathBuf {
    for dir in ["/var/tmp", "/tmp"] {
        if Path::new(dir).is_dir() {
            return PathBuf::from(dir);
        }
    }
    std::env::temp_dir()
}

/// Writes and fsyncs a small file `FSYNCS` times.
fn fsync_loop(dir: &Path) -> Result<()> {
    let path = dir.join(format!("dstrace-bench-{}", std::process::id()));
    let mut file = File::create(&path)?;
    let block = [0x5au8; 4096];
    for _ in 0..FSYNCS {
        file.write_all(&block)?;
        file.sync_all()?;
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(())
}

fn report(results: &[PhaseResult], load_average: &str) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name").map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = String::new();
    out.push_str("# BENCHMARKS\n\n");
    out.push_str("Written by `cargo xtask bench` (tests/src/bin/bench/main.rs); do not edit by hand.\n\n");
    out.push_str(&format!(
        "- date: {}\n- kernel: {}\n- machine: {cpus} CPUs, {cpu}\n- load average when the bench began (1, 5, 15 \
         min; anything else running inflates wall times and CPU shares): {}\n\n",
        rfc3339_utc(SystemTime::now()),
        kernel.trim(),
        load_average
    ));
    out.push_str(
        "## Cost of the eBPF programs per invocation\n\n\
         Method: BPF statistics (`BPF_ENABLE_STATS`: the kernel sums each program's run time and \
         run count; no sysctl is changed). dstrace's programs are loaded with the settings of \
         `dstrace run` by default (`--min-duration 1ms`). Its `sched_switch` is attached beside an empty \
         program on the same tracepoint, so both run on exactly the same context switches; the \
         empty one is the floor (the cost of being called at all, timing included). Each load \
         runs 5 times; the figures are the medians. `sched_waking` runs on every wake-up, beside its \
         own empty program. Programs on one hook run in the order they were attached and the first \
         pays for cold caches, so every load is measured twice: empty programs attached after \
         dstrace's, then before.\n\n",
    );
    out.push_str("| load | order | program | runs | ns per run | vs floor |\n|---|---|---|---:|---:|---:|\n");
    for result in results {
        let floor_of =
            |floor: &str| result.programs.iter().find(|(p, _, _)| *p == floor).map_or(0.0, |(_, ns, _)| *ns);
        for (program, ns, runs) in &result.programs {
            let floor = if program.starts_with("sched_waking") {
                floor_of(names::PROG_SCHED_WAKING_EMPTY)
            } else {
                floor_of(names::PROG_SCHED_SWITCH_EMPTY)
            };
            let versus = if floor == 0.0 { "-".to_owned() } else { format!("{:.2}x", ns / floor) };
            out.push_str(&format!(
                "| {} | {} | `{program}` | {runs} | {ns:.1} | {versus} |\n",
                result.load, result.order
            ));
        }
        out.push_str(&format!(
            "| {} | {} | (D waits started per repetition: {}; {:.1} s in all) | | | |\n",
            result.load, result.order, result.waits_started, result.seconds
        ));
    }
    out.push_str("\n### Order-balanced\n\nThe mean of the two orders, which cancels who runs first.\n\n");
    out.push_str("| load | program | ns per run | floor ns per run | vs floor |\n|---|---|---:|---:|---:|\n");
    let loads: Vec<&str> = results.iter().map(|r| r.load).fold(Vec::new(), |mut loads, load| {
        if !loads.contains(&load) {
            loads.push(load);
        }
        loads
    });
    for load in loads {
        let mean = |program: &str| {
            let values: Vec<f64> = results
                .iter()
                .filter(|r| r.load == load)
                .filter_map(|r| r.programs.iter().find(|(p, _, _)| *p == program).map(|(_, ns, _)| *ns))
                .collect();
            values.iter().sum::<f64>() / values.len().max(1) as f64
        };
        for (program, floor) in [
            (results[0].programs[0].0, names::PROG_SCHED_SWITCH_EMPTY),
            (names::PROG_SCHED_WAKING, names::PROG_SCHED_WAKING_EMPTY),
        ] {
            let (ns, floor_ns) = (mean(program), mean(floor));
            out.push_str(&format!(
                "| {load} | `{program}` | {ns:.1} | {floor_ns:.1} | {:.2}x |\n",
                ns / floor_ns.max(f64::MIN_POSITIVE)
            ));
        }
    }
    out.push_str(
        "\nGoal (issue 3): `sched_switch` within 1.5x of the floor for switches that do not enter D \
         (the switch-heavy load). The D-heavy figures are averages over every switch of the load, \
         a third of which put a task in D and take its kernel stack (and the waker's, for a wait \
         that has lasted `--min-duration` when it is woken).\n",
    );
    out
}

/// Start-up figures with a number of threads on the machine.
struct StartUp {
    threads: usize,
    listed: f64,
    live: f64,
    snapshot: f64,
    /// CPU time of `snapshot` (user + system, ms): what the machine's load does not inflate.
    snapshot_cpu: f64,
}

/// Times `dstrace run --json` to its first screen (every task already in D
/// listed) and to tracing live (the `start` record), and `dstrace snapshot --json`
/// to its end, with [`FIRST_SCREEN_TASKS`] tasks piled up in D behind a FUSE
/// mount, with the threads the machine has and with [`MANY_THREADS`]; and
/// bpftrace to tracing live. Returns the report's section.
fn first_screen(bpftrace: Option<&PathBuf>) -> Result<String> {
    let bin = dstrace_tests::dstrace_bin();
    let mount = dstrace_tests::fuse::FuseMount::new("bench-first-screen")?;
    let pileup = dstrace_tests::Pileup::start(&mount, FIRST_SCREEN_TASKS);
    let mut rows = vec![start_up(&bin, &pileup)?];
    let mut looks = vec![iterator_cost(&pileup)?];
    let idle = dstrace_tests::dload::IdleThreads::start(MANY_THREADS.saturating_sub(count_threads()))?;
    rows.push(start_up(&bin, &pileup)?);
    looks.push(iterator_cost(&pileup)?);
    drop(idle);
    drop(pileup);
    let bpftrace_live = match bpftrace {
        Some(binary) => {
            let mut times = Vec::new();
            for _ in 0..3 {
                let started = Instant::now();
                let mut peer = peer::Bpftrace::spawn(binary)?;
                times.push(peer.wait_live(started, Duration::from_secs(60))?.as_secs_f64() * 1e3);
            }
            format!("{:.1}", median(times))
        }
        None => "not installed".to_owned(),
    };
    let mut out = format!(
        "\n## Time to the first screen\n\n\
         Method: wall clock from spawning `dstrace run --json` until it has printed every one of \
         {FIRST_SCREEN_TASKS} tasks piled up in D behind a held FUSE mount (the first screen: the \
         programs loaded and attached, then every task in D read from kernel memory by the task \
         iterator, with their locks' holders and the FUSE daemons; the full-screen view draws \
         /proc's view at once, before loading), and until tracing is live (the `start` record, \
         printed right after); and the whole run of `dstrace snapshot --json` as root (it loads the \
         iterator alone and reads the tasks once; and its CPU time, user + system from `wait4`, \
         which the machine's other load inflates less than the wall time). Measured with \
         the threads the machine has, then with {MANY_THREADS} (idle threads of this process, asleep in \
         S). Median of {ROUNDS} runs, release build. bpftrace (the script of the comparison above) has \
         no first screen: its row is the time from spawning it until its program has run (median of 3 \
         runs).\n\n\
         | threads on the machine | `run`: first screen ({FIRST_SCREEN_TASKS} tasks in D listed), ms | \
         `run`: tracing live, ms | `snapshot --json`, ms | `snapshot` CPU, ms |\n\
         |---:|---:|---:|---:|---:|\n"
    );
    for row in &rows {
        out.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            row.threads, row.listed, row.live, row.snapshot, row.snapshot_cpu,
        ));
    }
    out.push_str(&format!(
        "\nbpftrace, from spawning to tracing: {bpftrace_live} ms.\n\n\
         The task iterator alone (issue 17), the same pile-up: BPF statistics of its programs over \
         {ROUNDS} looks of a loaded tracer (run time over run count: each run is one task visited, or \
         one open file for the `/dev/fuse` pass), and the wall time of a whole look (every pass: the \
         tasks in D, their locks' owners, the tasks walking the same directories, the `/dev/fuse` \
         files; and the records read).\n\n\
         | threads on the machine | tasks in D read | in-D pass, ns per task | owners pass, ns per task \
         | walkers pass, ns per task | `/dev/fuse` pass, ns per file | a whole look, ms |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n"
    ));
    for look in &looks {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |\n",
            look.threads,
            look.in_d,
            look.in_d_ns,
            look.wanted_ns,
            look.walking_ns,
            look.fuse_ns,
            look.look_ms
        ));
    }
    out.push_str(
        "\nGoals (issues 5, 9 and 17): the first screen under 500 ms, with 100 tasks already in D and with \
         10,000 threads; a snapshot of 10,000 threads under 200 ms.\n",
    );
    Ok(out)
}

/// What the task iterator costs ([`iterator_cost`]).
struct IterCost {
    threads: usize,
    /// Tasks in D the last look read.
    in_d: usize,
    in_d_ns: f64,
    wanted_ns: f64,
    walking_ns: f64,
    fuse_ns: f64,
    /// Median wall time of a whole look, ms.
    look_ms: f64,
}

/// The task iterator's cost with `pileup` standing: BPF statistics of each of its
/// programs over [`ROUNDS`] looks of a loaded tracer, and the wall time of a look.
fn iterator_cost(pileup: &dstrace_tests::Pileup<'_>) -> Result<IterCost> {
    use dstrace_common::names;
    let threads = count_threads();
    let mut tracer = Tracer::load(&Options::default())?;
    // The program of each pass this kernel got (the variants before 5.15 read no
    // registers).
    let passes = [
        [names::PROG_ITER_IN_D, names::PROG_ITER_IN_D_PRE515],
        [names::PROG_ITER_WANTED, names::PROG_ITER_WANTED_PRE515],
        [names::PROG_ITER_WALKING, names::PROG_ITER_WALKING_PRE515],
        [names::PROG_ITER_FUSE_FILES, names::PROG_ITER_FUSE_FILES],
    ];
    let stats = |tracer: &Tracer| -> Vec<ProgramStats> {
        passes
            .iter()
            .map(|variants| {
                variants
                    .iter()
                    .filter_map(|program| tracer.program_stats(program).ok())
                    .find(|stats| stats.run_count > 0)
                    .unwrap_or_default()
            })
            .collect()
    };
    let before = stats(&tracer);
    let (mut times, mut in_d) = (Vec::new(), 0);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let look = tracer.look(&[])?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        in_d = look.tasks.iter().filter(|task| pileup.stuck.contains(&task.tid)).count();
    }
    anyhow::ensure!(
        in_d == pileup.stuck.len(),
        "the look read {in_d} of the {} tasks in D",
        pileup.stuck.len()
    );
    let after = stats(&tracer);
    let per = |i: usize| after[i].since(&before[i]).ns_per_run();
    Ok(IterCost {
        threads,
        in_d,
        in_d_ns: per(0),
        wanted_ns: per(1),
        walking_ns: per(2),
        fuse_ns: per(3),
        look_ms: median(times),
    })
}

/// One start-up measure: medians of [`ROUNDS`] runs (ms).
fn start_up(bin: &Path, pileup: &dstrace_tests::Pileup<'_>) -> Result<StartUp> {
    let threads = count_threads();
    let (mut listed, mut live, mut snapshots, mut cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args(["run", "--json", "--duration", "1s", "--interval", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start dstrace")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut seen = 0;
        let mut first = None;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if line.contains(r#""type":"ongoing""#)
                && pileup.stuck.iter().any(|pid| line.contains(&format!(r#""tgid":{pid},"#)))
            {
                seen += 1;
                if seen == pileup.stuck.len() {
                    first = Some(started.elapsed());
                }
            }
            if line.contains(r#""type":"start""#) {
                live.push(started.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
        child.wait()?;
        listed.push(first.context("the first screen did not list every task in D")?.as_secs_f64() * 1e3);

        let started = Instant::now();
        let child = Command::new(bin).args(["snapshot", "--json"]).stdout(Stdio::null()).spawn()?;
        // SAFETY: wait4(2) on our own child; `usage` is plain data that outlives the call.
        let (status, usage) = unsafe {
            let mut status = 0;
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage);
            (status, usage)
        };
        snapshots.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "dstrace snapshot failed");
        let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
        cpu.push(ms(usage.ru_utime) + ms(usage.ru_stime));
    }
    Ok(StartUp {
        threads,
        listed: median(listed),
        live: median(live),
        snapshot: median(snapshots),
        snapshot_cpu: median(cpu),
    })
}

/// Threads on the machine now.
fn count_threads() -> usize {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
                .filter_map(|e| std::fs::read_dir(e.path().join("task")).ok())
                .map(|tasks| tasks.count())
                .sum()
        })
        .unwrap_or(0)
}

/// One run of `dstrace record` under the fsync loop.
struct RecordResult {
    min_duration: &'static str,
    seconds: f64,
    bytes: u64,
    intervals: usize,
    rows: usize,
    waits: usize,
    d_waits: u64,
    /// CPU seconds while recording (from "recording to" to the end, the last write
    /// included).
    cpu_steady: f64,
    /// CPU seconds of the whole process, start-up and the last write included.
    cpu_total: f64,
}

/// user + system CPU seconds of a process so far (`/proc/PID/stat`).
fn cpu_seconds(pid: u32) -> f64 {
    dstrace::resolve::procfs::usage(pid).map_or(0.0, |usage| usage.cpu_ns as f64 / 1e9)
}

/// A thread that writes and fsyncs 4 KiB in a loop in `dir` until `stop`: a steady
/// D-wait load (the writer and the kernel's I/O threads sleep in D on every fsync).
fn fsync_writer(
    dir: &Path,
    name: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<std::io::Result<()>> {
    let path = dir.join(format!("dstrace-bench-{name}-{}", std::process::id()));
    std::thread::spawn(move || -> std::io::Result<()> {
        let mut file = File::create(&path)?;
        let block = [0x5au8; 4096];
        while !stop.load(Ordering::Relaxed) {
            file.write_all(&block)?;
            file.sync_all()?;
        }
        drop(file);
        std::fs::remove_file(&path)
    })
}

/// Runs `dstrace record --min-duration MIN` for `seconds` under a steady fsync loop.
fn record_phase(dir: &Path, min_duration: &'static str, seconds: u64) -> Result<RecordResult> {
    let exe = std::env::current_exe()?;
    let dstrace = exe.with_file_name("dstrace");
    anyhow::ensure!(dstrace.is_file(), "{} is not built (cargo xtask bench builds it)", dstrace.display());
    let rec = dir.join(format!("dstrace-bench-{}.rec", std::process::id()));
    let _ = std::fs::remove_file(&rec);
    let mut child = Command::new(&dstrace)
        .args(["record", "-o"])
        .arg(&rec)
        .args(["--min-duration", min_duration])
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", dstrace.display()))?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    loop {
        let line = lines.next().context("dstrace record ended before recording")??;
        if line.starts_with("dstrace: recording to") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let pid = child.id();
    let started = Instant::now();
    let cpu_start = cpu_seconds(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let load = fsync_writer(dir, "load", stop.clone());
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    load.join().map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    let elapsed = started.elapsed().as_secs_f64();
    // SAFETY: kill(2) and wait4(2) on our own child; `usage` is plain data that
    // outlives the call.
    let cpu_total = unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGINT);
        let mut status = 0;
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage);
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    };
    let cpu_steady = (cpu_total - cpu_start).max(0.0);
    let bytes = std::fs::read(&rec).with_context(|| format!("cannot read {}", rec.display()))?;
    let _ = std::fs::remove_file(&rec);
    let recording = dstrace::sinks::recording::read(&bytes).map_err(|err| anyhow::anyhow!("{err}"))?;
    anyhow::ensure!(recording.damage.is_empty(), "the recording is damaged: {:?}", recording.damage);
    let intervals = &recording.intervals;
    Ok(RecordResult {
        min_duration,
        seconds: elapsed,
        bytes: bytes.len() as u64,
        intervals: intervals.len(),
        rows: intervals.iter().map(|i| i.rows.len()).sum(),
        waits: intervals.iter().map(|i| i.waits.len()).sum(),
        d_waits: intervals.iter().flat_map(|i| &i.rows).map(|row| row.totals.count).sum(),
        cpu_steady,
        cpu_total,
    })
}

fn record_report(results: &[RecordResult]) -> String {
    let mut out = String::from(
        "\n## Recording: size per hour and CPU of `dstrace record`\n\n\
         Method: `dstrace record -o FILE` (release build, default `--interval 10s`, `--max-size` never \
         reached) runs while a thread writes and fsyncs 4 KiB in a loop on a disk-backed filesystem, \
         a steady D-wait load (the writer and the kernel's I/O threads sleep in D on every fsync). \
         The run is short (about a minute with the default threshold, half that with every wait \
         recorded one by one), so the size per hour is extrapolated: bytes / seconds x 3600. CPU is \
         user + system time of the dstrace process (`wait4`), in all (start-up with symbol loading \
         and BPF loading included) and while recording (less what it had used when it said it \
         records, read from `/proc/PID/stat` to the clock tick), as a share of one CPU over the run. \
         With `--min-duration 0` every wait is also resolved and written one by one: the worst \
         case.\n\n\
         | --min-duration | seconds | D waits (per s) | intervals | rows | waits one by one | file bytes | \
         bytes per hour | CPU while recording | CPU in all |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let per_hour = r.bytes as f64 / r.seconds * 3600.0;
        out.push_str(&format!(
            "| {} | {:.0} | {} ({:.0}) | {} | {} | {} | {} | {:.1} MiB | {:.2}% | {:.2}% |\n",
            r.min_duration,
            r.seconds,
            r.d_waits,
            r.d_waits as f64 / r.seconds,
            r.intervals,
            r.rows,
            r.waits,
            r.bytes,
            per_hour / (1024.0 * 1024.0),
            100.0 * r.cpu_steady / r.seconds,
            100.0 * r.cpu_total / r.seconds,
        ));
    }
    out
}

/// What a recording of standing tasks in D measured.
struct InDResult {
    tasks: usize,
    seconds: f64,
    bytes: u64,
    intervals: usize,
    /// Tasks in D kept, summed over the intervals.
    kept: usize,
    /// Mean bytes of a frame of tasks in D that describes them (the first, and
    /// every so often again), and of one that only refers to them.
    describing: f64,
    referring: f64,
}

/// Runs `dstrace record` (default interval) for `seconds` while `tasks` tasks
/// stand in D behind a held FUSE mount the whole time (none: a quiet machine).
fn in_d_phase(seconds: u64, tasks: usize) -> Result<InDResult> {
    let mount = dstrace_tests::fuse::FuseMount::new("bench-in-d")?;
    let pileup = (tasks > 0).then(|| dstrace_tests::Pileup::start(&mount, tasks));
    let rec = std::env::temp_dir().join(format!("dstrace-bench-in-d-{}.rec", std::process::id()));
    let _ = std::fs::remove_file(&rec);
    let mut child = dstrace_tests::start_recording(&rec, &[]);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    child.wait()?;
    let elapsed = started.elapsed().as_secs_f64();
    mount.release();
    drop(pileup);
    let bytes = std::fs::read(&rec).with_context(|| format!("cannot read {}", rec.display()))?;
    let _ = std::fs::remove_file(&rec);
    let recording = dstrace::sinks::recording::read(&bytes).map_err(|err| anyhow::anyhow!("{err}"))?;
    anyhow::ensure!(recording.damage.is_empty(), "the recording is damaged: {:?}", recording.damage);
    let kept = recording.intervals.iter().map(|i| i.in_d.len()).sum();
    anyhow::ensure!(tasks == 0 || kept >= tasks, "{kept} tasks in D kept of {tasks}");
    // The frames of tasks in D by kind, sized by the offset of the next frame.
    let records = dstrace::sinks::recording::decode(&bytes).map_err(|err| anyhow::anyhow!("{err}"))?.records;
    let (mut describing, mut referring) = (Vec::new(), Vec::new());
    for (i, (at, record)) in records.iter().enumerate() {
        let next = records.get(i + 1).map_or(bytes.len() as u64, |(next, _)| *next);
        if let dstrace::sinks::recording::Record::InD(in_d) = record {
            let size = (next - at) as f64;
            if in_d.described.is_empty() {
                referring.push(size)
            } else {
                describing.push(size)
            }
        }
    }
    let mean =
        |sizes: &[f64]| if sizes.is_empty() { 0.0 } else { sizes.iter().sum::<f64>() / sizes.len() as f64 };
    Ok(InDResult {
        tasks,
        seconds: elapsed,
        bytes: bytes.len() as u64,
        intervals: recording.intervals.len(),
        kept,
        describing: mean(&describing),
        referring: mean(&referring),
    })
}

fn in_d_report(results: &[InDResult]) -> String {
    let mut out = String::from(
        "\n## Recording: size per hour of the tasks in D\n\n\
         Method: `dstrace record -o FILE` (release build, default `--interval 10s` and \
         `--min-duration`) runs on an otherwise quiet machine, once with no task held in D and once \
         while 100 `stat` processes stand in D behind a held FUSE mount for the whole run (the 101st \
         waits for the server in S). Each interval keeps the tasks in D at its end: the first time \
         with their whole description (mount, file, lock and holder, chain), then as a number and an \
         age while they stay as they were (described again every 60 records, so that a damaged frame \
         costs a bounded time). Sizes are of the frames in the file: a frame of tasks in D that \
         describes them, and one that only refers to them. An hour at the default interval is 360 \
         intervals, 12 of which describe the tasks again: its size is the quiet recording's per hour \
         (bytes / seconds x 3600) plus 348 referring frames and 12 describing ones.\n\n\
         | tasks in D | seconds | intervals | tasks kept | file bytes | describing frame | referring frame | bytes per task and interval | bytes per hour |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let quiet_per_hour = results.first().map_or(0.0, |none| none.bytes as f64 / none.seconds * 3600.0);
    let intervals_per_hour = 360.0;
    let describing_per_hour =
        intervals_per_hour / f64::from(dstrace::sinks::recording::intern::DEFINE_AGAIN / 2);
    for r in results {
        let per_hour = if r.tasks == 0 {
            quiet_per_hour
        } else {
            quiet_per_hour
                + (intervals_per_hour - describing_per_hour) * r.referring
                + describing_per_hour * r.describing
        };
        let per_task = if r.tasks == 0 { 0.0 } else { r.referring / r.tasks as f64 };
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {:.0} B | {:.0} B | {:.1} B | {:.0} KiB |\n",
            r.tasks,
            r.seconds,
            r.intervals,
            r.kept,
            r.bytes,
            r.describing,
            r.referring,
            per_task,
            per_hour / 1024.0,
        ));
    }
    out
}

/// What the daemon soak measured.
struct SoakResult {
    seconds: f64,
    /// (seconds since start, RSS bytes, CPU seconds) every sample.
    samples: Vec<(f64, u64, f64)>,
    /// D waits started while sampled (from the daemon's own counter).
    waits: u64,
    /// Processes started by the load (each a new aggregation key).
    processes: u64,
    scrapes: u64,
    recording_bytes: u64,
}

/// A value of an unlabelled sample in a scrape.
fn scraped(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Runs `dstrace daemon` (defaults but for the port and the recording) for
/// `seconds` under a steady D-wait load: a thread writing and fsyncing in a loop,
/// and a short-lived process every 100 ms that does one fsync (new processes: new
/// keys of the in-kernel aggregation, which the daemon must forget once they
/// end). A scrape every second, as a Prometheus would; RSS and CPU sampled from
/// `/proc/PID` every 10 s after a 10 s warm-up.
fn soak_phase(dir: &Path, seconds: u64) -> Result<SoakResult> {
    let exe = std::env::current_exe()?;
    let dstrace = exe.with_file_name("dstrace");
    anyhow::ensure!(dstrace.is_file(), "{} is not built (cargo xtask bench builds it)", dstrace.display());
    let rec = dir.join(format!("dstrace-bench-daemon-{}.rec", std::process::id()));
    let _ = std::fs::remove_file(&rec);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], dstrace_tests::http::free_port()));
    let mut child = Command::new(&dstrace)
        .args(["daemon", "--listen", &addr.to_string(), "--recording"])
        .arg(&rec)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", dstrace.display()))?;
    let pid = child.id();
    let scrape = || dstrace_tests::http::get(addr, "/metrics", Duration::from_secs(10)).ok().map(|a| a.body);
    let ready = Instant::now();
    while scrape().is_none() {
        anyhow::ensure!(ready.elapsed() < Duration::from_secs(120), "the daemon did not serve metrics");
        anyhow::ensure!(child.try_wait()?.is_none(), "the daemon ended");
        std::thread::sleep(Duration::from_millis(200));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = fsync_writer(dir, "soak", stop.clone());
    let churn = {
        let stop = stop.clone();
        let path = dir.join(format!("dstrace-bench-churn-{}", std::process::id()));
        std::thread::spawn(move || -> std::io::Result<u64> {
            let mut started = 0;
            while !stop.load(Ordering::Relaxed) {
                Command::new("dd")
                    .args(["if=/dev/zero", "bs=4k", "count=1", "conv=fsync", "status=none"])
                    .arg(format!("of={}", path.display()))
                    .status()?;
                started += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = std::fs::remove_file(&path);
            Ok(started)
        })
    };
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut scrapes = 0;
    let mut first_waits = None;
    let mut last_waits = 0.0;
    let warm_up = Duration::from_secs(10);
    let mut next_sample = warm_up;
    while started.elapsed() < Duration::from_secs(seconds) + warm_up {
        if let Some(text) = scrape() {
            scrapes += 1;
            let waits = scraped(&text, "dstrace_waits_started_total").unwrap_or(0.0);
            if started.elapsed() >= next_sample {
                let usage = dstrace::resolve::procfs::usage(pid).context("the daemon is gone")?;
                samples.push((started.elapsed().as_secs_f64(), usage.rss_bytes, usage.cpu_ns as f64 / 1e9));
                first_waits.get_or_insert(waits);
                last_waits = waits;
                next_sample += Duration::from_secs(10);
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    let processes = churn.join().map_err(|_| anyhow::anyhow!("the churn thread panicked"))??;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    child.wait()?;
    let recording_bytes = std::fs::metadata(&rec).map_or(0, |m| m.len());
    let _ = std::fs::remove_file(&rec);
    Ok(SoakResult {
        seconds: samples.last().map_or(0.0, |s| s.0) - samples.first().map_or(0.0, |s| s.0),
        waits: (last_waits - first_waits.unwrap_or(0.0)) as u64,
        samples,
        processes,
        scrapes,
        recording_bytes,
    })
}

fn soak_report(soak: &SoakResult) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let (first, last) = match (soak.samples.first(), soak.samples.last()) {
        (Some(first), Some(last)) => (*first, *last),
        _ => return "\n## Daemon soak\n\nNo samples.\n".to_owned(),
    };
    let max_rss = soak.samples.iter().map(|s| s.1).max().unwrap_or(0);
    let cpu = last.2 - first.2;
    let mut out = format!(
        "\n## Daemon soak: memory and CPU of `dstrace daemon`\n\n\
         Method: `dstrace daemon` (release build, default settings: `--min-duration 1s`, \
         `--interval 30s`, recording to a temporary file) runs for {:.0} s after a 10 s warm-up, \
         under a steady D-wait load: a thread writes and fsyncs 4 KiB in a loop, and a new `dd ... \
         conv=fsync` process starts every 100 ms ({} processes in all: each a new key of the \
         in-kernel aggregation, which the daemon forgets once the process ended). It is scraped \
         every second ({} scrapes), as a Prometheus with a 1 s interval would. RSS and CPU \
         (user + system) come from `/proc/PID/statm` and `/proc/PID/stat` every 10 s; D waits \
         from the daemon's own `dstrace_waits_started_total` over the same span. The machine is \
         shared with other builds: CPU figures are upper bounds.\n\n\
         | RSS at start | RSS at end | RSS max | D waits (per s) | CPU | CPU share | CPU per wait | \
         recording bytes |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        soak.seconds, soak.processes, soak.scrapes
    );
    out.push_str(&format!(
        "| {:.1} MiB | {:.1} MiB | {:.1} MiB | {} ({:.0}) | {:.2} s | {:.2}% | {:.2} us | {} |\n",
        mib(first.1),
        mib(last.1),
        mib(max_rss),
        soak.waits,
        soak.waits as f64 / soak.seconds.max(1.0),
        cpu,
        100.0 * cpu / soak.seconds.max(1.0),
        if soak.waits == 0 { 0.0 } else { cpu * 1e6 / soak.waits as f64 },
        soak.recording_bytes,
    ));
    out.push_str("\nRSS over time (MiB, every 10 s): ");
    let series: Vec<String> = soak.samples.iter().map(|s| format!("{:.1}", mib(s.1))).collect();
    out.push_str(&series.join(" "));
    out.push('\n');
    out
}
