//! `cargo xtask fuzz`: the cargo-fuzz targets of `fuzz/` (libFuzzer, coverage-guided),
//! built and run for a bounded time each; `cargo xtask test` runs it in CI.
//!
//! The seeded mutation tests of the recording reader mutate a few files blindly;
//! libFuzzer follows the coverage of the code it reaches, so it gets past the checks
//! those tests only hit by chance. The targets (`fuzz/fuzz_targets/`):
//!
//! * `recording`: the reader `dstrace report` runs on a file's bytes;
//! * `daemon_config`: the daemon's TOML configuration, parsed and resolved.
//!
//! No nightly is needed: with `--sanitizer none` (the default) cargo-fuzz passes only
//! stable flags (the coverage instrumentation is LLVM's, libFuzzer comes with
//! `libfuzzer-sys`), so any rustc builds the targets, Debian's included. dstrace's
//! code they reach has no `unsafe`: a panic, an abort, a hang or a blow-up is what can
//! go wrong there, and each fails without a sanitizer. With AddressSanitizer the
//! recording target runs a quarter of the inputs per second; `--sanitizer address` is
//! there for unsafe code: it needs `-Zsanitizer` (so `RUSTC_BOOTSTRAP=1`, as the eBPF
//! build uses) and the runtime in the sysroot (rustup's toolchains have it, Debian's
//! rustc has not).
//!
//! Each target runs in a process of its own, both at once (CI has two CPUs), for
//! `--seconds`, with a scratch corpus under `target/fuzz/corpus/<target>/` (kept, so a
//! later run starts where the last stopped) seeded from `fuzz/corpus/<target>/`, the
//! committed seeds, which are never written to. An input that takes more than
//! [`INPUT_TIMEOUT_S`] or [`RSS_LIMIT_MB`] fails as a panic does. libFuzzer writes the
//! failing input under `fuzz/artifacts/<target>/`; the error names it and how to
//! replay it. Nothing hangs: a target still running [`GRACE`] after its time is
//! killed, with its process group, and fails.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use xtask::toolchain;

/// The fuzz targets, as named in `fuzz/Cargo.toml`, and the libFuzzer dictionary of
/// each (a file of `fuzz/`: words worth inserting, such as the configuration's keys).
pub const TARGETS: &[(&str, Option<&str>)] =
    &[("recording", None), ("daemon_config", Some("daemon_config.dict"))];

/// Seconds each target runs for, by default and in CI.
pub const SECONDS: u64 = 60;

/// The longest one input may take before it counts as a hang.
pub const INPUT_TIMEOUT_S: u64 = 10;

/// The most memory a target may use (libFuzzer's own default, said out loud).
pub const RSS_LIMIT_MB: u64 = 2048;

/// How long after its time a target may take to stop (its last report, the
/// debug formatting of a failing input) before it is killed.
const GRACE: Duration = Duration::from_secs(120);

/// The sanitizers `--sanitizer` takes (cargo-fuzz's names).
pub const SANITIZERS: [&str; 2] = ["none", "address"];

/// Builds both targets with `sanitizer` and runs each for `seconds`; fails naming
/// the first failing input of each target that failed.
pub fn run(root: &Path, seconds: u64, sanitizer: &str) -> Result<()> {
    let fuzz_dir = root.join("fuzz");
    if sanitizer == "address" && !has_asan_runtime() {
        bail!(
            "--sanitizer address: this rustc has no AddressSanitizer runtime (librustc-*_rt.asan.a in its \
             sysroot): use a rustup toolchain, or --sanitizer none"
        );
    }
    let logs = root.join("target/fuzz/logs");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;

    let mut build = cargo_fuzz(root, "build", sanitizer);
    let shown = format!("{build:?}");
    let status = build
        .status()
        .with_context(|| format!("cannot run {shown} (cargo xtask setup installs cargo-fuzz)"))?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status}): {shown}");
    }

    eprintln!(
        "xtask: fuzz: running {} for {seconds} s each, at once (logs in {})",
        TARGETS.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(" and "),
        logs.display()
    );
    let mut running = Vec::new();
    for &(name, dict) in TARGETS {
        let corpus = root.join("target/fuzz/corpus").join(name);
        fs::create_dir_all(&corpus).with_context(|| format!("cannot create {}", corpus.display()))?;
        let log_path = logs.join(format!("{name}.log"));
        let log =
            fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut cmd = cargo_fuzz(root, "run", sanitizer);
        cmd.arg(name).arg(&corpus).arg(fuzz_dir.join("corpus").join(name)).arg("--");
        cmd.arg(format!("-max_total_time={seconds}"));
        cmd.arg(format!("-timeout={INPUT_TIMEOUT_S}"));
        cmd.arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"));
        cmd.arg("-print_final_stats=1");
        if let Some(dict) = dict {
            cmd.arg(format!("-dict={}", fuzz_dir.join(dict).display()));
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // Its own process group, so that a target that outlives its time is killed
        // with cargo-fuzz.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().with_context(|| format!("cannot run {cmd:?}"))?;
        running.push((name, child, log_path));
    }

    let deadline = Instant::now() + Duration::from_secs(seconds) + GRACE;
    let mut failures = Vec::new();
    for (name, child, log_path) in running {
        let status = wait_until(child, deadline);
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        match status {
            Some(status) if status.success() => {
                eprintln!("xtask: fuzz: {name}: {}, no failure", runs(&log));
            }
            status => failures.push(failure(name, sanitizer, status, &log, &log_path)),
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// `cargo fuzz SUBCOMMAND` for the crate in `fuzz/`, its output in `target/fuzz/`.
fn cargo_fuzz(root: &Path, subcommand: &str, sanitizer: &str) -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root.join("fuzz"));
    cmd.args(["fuzz", subcommand, "--sanitizer", sanitizer, "--target-dir"]).arg(root.join("target/fuzz"));
    if sanitizer != "none" {
        // `-Zsanitizer` on a stable rustc.
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    // cargo-fuzz runs the `cargo` on PATH: the one running xtask, found first.
    if let Some(dir) =
        env::var_os("CARGO").map(PathBuf::from).and_then(|cargo| cargo.parent().map(Path::to_path_buf))
    {
        let mut paths = vec![dir];
        paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
        if let Ok(path) = env::join_paths(paths) {
            cmd.env("PATH", path);
        }
    }
    cmd
}

/// Whether the rustc of this cargo has the AddressSanitizer runtime.
fn has_asan_runtime() -> bool {
    let rustc = env::var_os("CARGO")
        .map(|cargo| PathBuf::from(cargo).with_file_name("rustc"))
        .filter(|rustc| rustc.is_file())
        .unwrap_or_else(|| PathBuf::from("rustc"));
    let sysroot = toolchain::output(Command::new(&rustc).args(["--print", "sysroot"]));
    let host = toolchain::output(Command::new(&rustc).arg("-vV"))
        .and_then(|vv| vv.lines().find_map(|line| line.strip_prefix("host: ").map(str::to_owned)));
    let (Some(sysroot), Some(host)) = (sysroot, host) else { return false };
    let lib = Path::new(&sysroot).join("lib/rustlib").join(host).join("lib");
    fs::read_dir(lib).into_iter().flatten().flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.starts_with("librustc-") && name.ends_with("_rt.asan.a")
    })
}

/// Waits for `child` until `deadline`, then kills its process group; its status, or
/// `None` when it had to be killed.
fn wait_until(mut child: Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(200)),
            _ => break,
        }
    }
    // The group is the child's pid (`process_group(0)`).
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// libFuzzer's count of runs, from its last `Done N runs in S second(s)` line.
fn runs(log: &str) -> String {
    log.lines()
        .rev()
        .find_map(|line| line.strip_prefix("Done "))
        .map_or_else(|| "no run count in its log".to_owned(), |done| done.trim().to_owned())
}

/// One line for a target that failed: what happened, the input, how to replay it.
fn failure(name: &str, sanitizer: &str, status: Option<ExitStatus>, log: &str, log_path: &Path) -> String {
    let Some(status) = status else {
        return format!(
            "fuzz target {name} was still running {} s after its time and was killed; its log: {}",
            GRACE.as_secs(),
            log_path.display()
        );
    };
    let Some(input) =
        log.lines().find_map(|line| line.split_once("Test unit written to ").map(|(_, path)| path.trim()))
    else {
        return format!(
            "fuzz target {name} failed ({status}) without a failing input; its log: {}",
            log_path.display()
        );
    };
    // What went wrong: a panic's place and message, else libFuzzer's own word.
    let lines: Vec<&str> = log.lines().collect();
    let cause = lines
        .iter()
        .position(|line| line.contains("panicked at "))
        .map(|at| {
            let place =
                lines[at].split_once("panicked at ").map_or("", |(_, place)| place.trim_end_matches(':'));
            format!("panicked at {place}: {}", lines.get(at + 1).map_or("", |line| line.trim()))
        })
        .or_else(|| {
            lines.iter().find_map(|line| {
                line.split_once("ERROR: libFuzzer: ").map(|(_, what)| what.trim().to_owned())
            })
        })
        .unwrap_or_else(|| status.to_string());
    let bootstrap = if sanitizer == "none" { "" } else { "RUSTC_BOOTSTRAP=1 " };
    format!(
        "fuzz target {name} failed on {input} ({cause}); replay it: cd fuzz && {bootstrap}cargo fuzz run \
         --sanitizer {sanitizer} --target-dir ../target/fuzz {name} {input}; \
         its log: {}",
        log_path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a real libFuzzer log (a target made to panic on purpose) reads as
    /// one line naming the input, the panic and the replay.
    #[test]
    fn a_failure_names_its_input_and_its_panic() {
        let log =
            "#1234\tNEW    cov: 1 ft: 1 corp: 1/1b lim: 4 exec/s: 0 rss: 60Mb L: 1/1 MS: 1 ChangeBit-\n\
                   thread '<unnamed>' panicked at fuzz_targets/daemon_config.rs:18:5:\n\
                   deliberate failure\n\
                   note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n\
                   ==8817== ERROR: libFuzzer: deadly signal\n\
                   artifact_prefix='/r/fuzz/artifacts/daemon_config/'; Test unit written to \
                   /r/fuzz/artifacts/daemon_config/crash-aa9e\n";
        let line = failure("daemon_config", "none", Some(exit_status(77)), log, Path::new("/r/x.log"));
        assert_eq!(
            line,
            "fuzz target daemon_config failed on /r/fuzz/artifacts/daemon_config/crash-aa9e (panicked at \
             fuzz_targets/daemon_config.rs:18:5: deliberate failure); replay it: cd fuzz && cargo fuzz run \
             --sanitizer none --target-dir ../target/fuzz daemon_config \
             /r/fuzz/artifacts/daemon_config/crash-aa9e; its log: /r/x.log"
        );
        let timeout = "==9== ERROR: libFuzzer: timeout after 14 seconds\n\
                       artifact_prefix='/a/'; Test unit written to /a/timeout-a9f7\n";
        let line = failure("recording", "address", Some(exit_status(70)), timeout, Path::new("/r/x.log"));
        assert!(line.starts_with("fuzz target recording failed on /a/timeout-a9f7 (timeout after 14 seconds); replay it: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer address"), "{line}");
        assert!(!line.contains('\n'));
        assert_eq!(
            runs("#9 DONE\nDone 643913 runs in 61 second(s)\nstat::x: 1\n"),
            "643913 runs in 61 second(s)"
        );
    }

    fn exit_status(code: i32) -> ExitStatus {
        std::os::unix::process::ExitStatusExt::from_raw(code << 8)
    }
}
