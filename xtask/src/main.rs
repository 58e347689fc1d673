//! `cargo xtask`: the one entry point for building, running and testing dstrace.
//!
//! Every command first makes sure an eBPF toolchain is there (installing it on a
//! Debian/Ubuntu machine when it is not; a no-op taking a fraction of a second when
//! it is), so that a fresh clone needs nothing but cargo.

use std::{
    env,
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use xtask::{ebpf, toolchain};

mod fuzz;
mod vm;

#[derive(Parser)]
#[command(about = "Build, run and test dstrace", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the eBPF build and the tests need, if it is missing (apt packages,
    /// bpf-linker; tmux, go and inferno-flamegraph for the tests; g++ and cargo-fuzz
    /// for the fuzz targets).
    Setup,
    /// Build the eBPF object and the dstrace binary that embeds it.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build dstrace (release) and run it as root; arguments go to dstrace
    /// (default: `run`).
    Run {
        /// Arguments for dstrace, e.g. `cargo xtask run -- run --min-duration 10ms`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check formatting and lints, then run every test (unit, CLI, and integration
    /// tests that load the eBPF object and make real D states; these need root). In CI
    /// (`CI` set), then `fuzz` for its default time.
    Test {
        /// Extra arguments for `cargo test`, e.g. `-- --nocapture`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the cargo-fuzz targets of fuzz/ (the recording reader `dstrace report`
    /// runs, the daemon's configuration parser) and run each, both at once, for a
    /// bounded time; fails on a panic, a hang or a blow-up, naming the input. Installs
    /// cargo-fuzz and a C++ compiler if missing.
    Fuzz {
        /// How long each target runs, in seconds (libFuzzer takes 0 for no end: refused).
        #[arg(long, default_value_t = fuzz::SECONDS, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        /// cargo-fuzz's sanitizer: none, or address (AddressSanitizer, for unsafe
        /// code: needs its runtime, which rustup's toolchains have).
        #[arg(long, default_value = "none", value_parser = fuzz::SANITIZERS)]
        sanitizer: String,
    },
    /// Measure what dstrace costs and write BENCHMARKS.md (installs bpftrace, the
    /// peer it is compared with): its eBPF programs per invocation beside an empty
    /// program on the same hook and bpftrace's equivalent script, the highest rate
    /// of D waits streamed without a drop with the collector's CPU and memory, the
    /// time to the first screen, and the slowdown of workloads. About 10 minutes.
    /// Needs root.
    Bench,
    /// Boot Debian's 5.10, 6.1 and 6.12 kernels in qemu (TCG) and run scenarios there
    /// with the freshly built dstrace. Needs root.
    #[command(long_about = VM_HELP)]
    Vm {
        /// Kernel to boot: 5.10 (bullseye), 6.1 (bookworm), 6.12 (trixie), or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Scenario to run: load, nfs, tests, or all.
        #[arg(long, default_value = "all")]
        scenario: String,
        /// Boot nothing: check again the results the last run left in target/vm/.
        #[arg(long)]
        check_only: bool,
    },
}

const VM_HELP: &str = "\
Boot Debian's own kernels in qemu (TCG) and run scenarios there with the freshly built
dstrace: the portability proof for the BTF-resolved offsets, and NFS, which this
machine's kernel lacks.

Scenarios:
  load  dstrace loads, attaches and reports real D waits (dd oflag=sync on the root disk)
  nfs   an NFS server in the guest dies (nft drops) under v3 and v4 mounts over 127.0.0.1;
        `dstrace snapshot` and `dstrace run` must name the hung df, stat, flock and fcntl
        tasks, where they block, and the mounts (127.0.0.1:/export, nfs and nfs4)
  tests the host's engine, d_states, iterator, fused and after_hang integration tests,
        run in the guest against its kernel (FUSE servers that stop answering, the real
        eBPF object); a test whose kernel feature is missing (lock owners before 5.19,
        ...) is skipped and named

Each scenario boots its own guest (under TCG: load about 35 s, nfs about 2 min, tests
about 3 min). Kernels (apt downloads through a private apt directory) and the guest
image (mmdebstrap) are cached in $DSTRACE_VM_CACHE or /var/cache/dstrace-vm; delete that
directory to start afresh.
Each run's files (console log, results) are in target/vm/<kernel>-<scenario>/.
The guest powers itself off at the scenario's deadline and qemu is killed after a
longer one; any failure makes the command fail.

Example: sudo -E cargo xtask vm --kernel 6.1 --scenario nfs";

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root()?;
    let toolchain = toolchain::install().map_err(|err| anyhow::anyhow!("{err}"))?;
    if matches!(cli.command, Cmd::Setup | Cmd::Test { .. }) {
        toolchain::install_test_tools().map_err(|err| anyhow::anyhow!("{err}"))?;
    }
    if matches!(cli.command, Cmd::Setup | Cmd::Fuzz { .. })
        || (matches!(cli.command, Cmd::Test { .. }) && in_ci())
    {
        toolchain::install_fuzz_tools().map_err(|err| anyhow::anyhow!("{err}"))?;
    }
    if matches!(cli.command, Cmd::Bench) {
        toolchain::install_bench_tools().map_err(|err| anyhow::anyhow!("{err}"))?;
    }
    match cli.command {
        Cmd::Setup => {
            eprintln!("xtask: eBPF toolchain: {toolchain}");
            Ok(())
        }
        Cmd::Build { release } => build(&root, release),
        Cmd::Run { args } => {
            build(&root, true)?;
            let binary = root.join("target/release/dstrace");
            let args = if args.is_empty() { vec!["run".to_owned()] } else { args };
            let mut cmd = as_root(&binary);
            cmd.args(&args);
            let status = cmd.status().with_context(|| format!("cannot start {}", binary.display()))?;
            if !status.success() {
                bail!("dstrace exited with {status}");
            }
            Ok(())
        }
        Cmd::Test { args } => test(&root, &args),
        Cmd::Fuzz { seconds, sanitizer } => fuzz::run(&root, seconds, &sanitizer),
        Cmd::Bench => {
            let mut build = cargo(&root);
            build.args(["build", "--release", "--package", "dstrace", "--package", "dstrace-tests"]);
            build.args(["--bin", "dstrace", "--bin", "dstrace-bench"]);
            status(build)?;
            let mut bench = as_root(&root.join("target/release/dstrace-bench"));
            bench.arg(root.join("BENCHMARKS.md")).env("DSTRACE_BIN", root.join("target/release/dstrace"));
            bench.env("DSTRACE_BENCH_BPFTRACE", toolchain::find_program("bpftrace").unwrap_or_default());
            status(bench)
        }
        Cmd::Vm { kernel, scenario, check_only } => {
            let kernels: Vec<&vm::Kernel> = if kernel == "all" {
                vm::KERNELS.iter().collect()
            } else {
                let known = vm::KERNELS.iter().find(|known| known.name == kernel);
                vec![known.with_context(|| format!("unknown kernel {kernel}: 5.10, 6.1, 6.12 or all"))?]
            };
            let scenarios: Vec<&vm::Scenario> = if scenario == "all" {
                vm::SCENARIOS.iter().collect()
            } else {
                let known = vm::SCENARIOS.iter().find(|known| known.name == scenario);
                vec![known.with_context(|| format!("unknown scenario {scenario}: load, nfs, tests or all"))?]
            };
            if check_only {
                return vm::check_only(&root, &kernels, &scenarios);
            }
            build(&root, true)?;
            let names: Vec<&str> =
                scenarios.iter().flat_map(|scenario| scenario.tests.iter().copied()).collect();
            let (tests, helpers) = build_tests(&root, &names)?;
            let payload = vm::Payload { dstrace: root.join("target/release/dstrace"), tests, helpers };
            vm::run(&root, &payload, &kernels, &scenarios)
        }
    }
}

fn build(root: &std::path::Path, release: bool) -> Result<()> {
    let mut cmd = cargo(root);
    cmd.args(["build", "--package", "dstrace"]);
    if release {
        cmd.arg("--release");
    }
    status(cmd)
}

/// The programs of the tests package that test binaries run (`dstrace-test-fused`,
/// the FUSE daemon in a process of its own): carried beside them.
const TEST_HELPERS: &[&str] = &["dstrace-test-fused"];

/// A test binary's name and its executable.
type Built = Vec<(String, std::path::PathBuf)>;

/// Builds the integration test binaries `names` (`tests/tests/<name>.rs`, the test
/// profile `cargo xtask test` builds, so usually nothing to do) and returns each
/// name with its executable, as cargo reports it, and the executables of
/// [`TEST_HELPERS`] (cargo builds a package's programs with its tests).
fn build_tests(root: &std::path::Path, names: &[&str]) -> Result<(Built, Vec<std::path::PathBuf>)> {
    if names.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut cmd = cargo(root);
    cmd.args(["test", "--package", "dstrace-tests", "--no-run", "--message-format=json-render-diagnostics"]);
    for name in names {
        cmd.args(["--test", name]);
    }
    cmd.stderr(std::process::Stdio::inherit());
    let out = cmd.output().context("cannot run cargo test --no-run")?;
    anyhow::ensure!(out.status.success(), "building the test binaries failed ({})", out.status);
    let mut built = Vec::new();
    let mut helpers = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(name), Some(executable)) =
            (message["target"]["name"].as_str(), message["executable"].as_str())
        else {
            continue;
        };
        if message["target"]["kind"] == serde_json::json!(["test"]) && names.contains(&name) {
            built.push((name.to_owned(), std::path::PathBuf::from(executable)));
        } else if message["target"]["kind"] == serde_json::json!(["bin"]) && TEST_HELPERS.contains(&name) {
            helpers.push(std::path::PathBuf::from(executable));
        }
    }
    Ok((built, helpers))
}

fn test(root: &std::path::Path, args: &[String]) -> Result<()> {
    let ebpf_manifest = root.join("dstrace-ebpf/Cargo.toml");
    let mut fmt = cargo(root);
    fmt.args(["fmt", "--all", "--", "--check"]);
    status(fmt).context("code is not formatted: run `cargo fmt --all`")?;
    let mut fmt = cargo(root);
    fmt.arg("fmt").arg("--manifest-path").arg(&ebpf_manifest).args(["--", "--check"]);
    status(fmt).context("the eBPF crate is not formatted: run `cargo fmt` in dstrace-ebpf")?;
    let mut fmt = cargo(root);
    fmt.arg("fmt").arg("--manifest-path").arg(root.join("fuzz/Cargo.toml")).args(["--", "--check"]);
    status(fmt).context("the fuzz targets are not formatted: run `cargo fmt` in fuzz")?;

    let mut clippy = cargo(root);
    clippy.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    status(clippy)?;
    // The eBPF crate is linted for the host: clippy checks without linking, and
    // RUSTC_BOOTSTRAP lets a stable clippy accept its nightly features.
    let mut clippy = cargo(root);
    clippy.arg("clippy").arg("--manifest-path").arg(&ebpf_manifest).arg("--locked");
    clippy.arg("--target-dir").arg(root.join("target/ebpf-clippy"));
    clippy.args(["--", "-D", "warnings"]).env("RUSTC_BOOTSTRAP", "1");
    status(clippy)?;

    // The CLI tests run this binary.
    build(root, false)?;

    let mut test = cargo(root);
    test.args(["test", "--workspace"]);
    if !toolchain::is_root() {
        // Integration tests load BPF programs and mount filesystems: run the test
        // binaries (not the build) under sudo.
        eprintln!("xtask: not root: test binaries run under `sudo -E`");
        test.args(["--config", "target.'cfg(all())'.runner = ['sudo', '-E']"]);
    }
    test.args(args);
    status(test)?;
    if in_ci() {
        fuzz::run(root, fuzz::SECONDS, "none")?;
    }
    Ok(())
}

/// Whether this runs in CI (`CI` set, as `.ci/run` does).
fn in_ci() -> bool {
    env::var_os("CI").is_some()
}

fn cargo(root: &std::path::Path) -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn as_root(binary: &std::path::Path) -> Command {
    if toolchain::is_root() {
        Command::new(binary)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("--preserve-env=DSTRACE_BIN,DSTRACE_BENCH_BPFTRACE");
        cmd.arg(binary);
        cmd
    }
}

fn status(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR").context("run this through `cargo xtask`")?;
    Ok(ebpf::workspace_root(&PathBuf::from(manifest_dir)))
}
