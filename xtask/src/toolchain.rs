//! Finding, and on Debian/Ubuntu installing, a toolchain that builds the eBPF crate.
//!
//! The eBPF crate needs three things (docs/TOOLCHAIN.md has the verified facts):
//!
//! * a rustc that can build `core` for `bpfel-unknown-none` (`-Z build-std=core`),
//!   which needs the `core` sources: either a rustup nightly with the `rust-src`
//!   component (a developer workstation), or Debian's `rustc-web` + `rust-web-src`
//!   (machines that cannot download `rust-src`), used with `RUSTC_BOOTSTRAP=1`;
//! * `bpf-linker`, built against the same LLVM major version as that rustc, since it
//!   links rustc's LLVM bitcode;
//! * for building `bpf-linker` from source: that LLVM's development files.
//!
//! [`detect`] only looks (it is what `dstrace/build.rs` calls, and it is quick);
//! [`install`] installs what is missing, idempotently (what `cargo xtask setup`,
//! `build`, `run` and `test` call).

use std::{
    env, fmt,
    path::{Path, PathBuf},
    process::Command,
};

/// The bpf-linker release known to work here (docs/TOOLCHAIN.md).
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors that `bpf-linker` 0.13 can be built for.
const BPF_LINKER_LLVM_MAJORS: [u32; 3] = [21, 22, 23];
/// The rustc of Debian's `rustc-web` package.
const SYSTEM_RUSTC: &str = "/usr/bin/rustc";

/// How to invoke cargo for the eBPF crate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compiler {
    /// `rustup run nightly cargo ...`, with the `rust-src` component.
    RustupNightly,
    /// A rustc with the `core` sources in its sysroot that is not a nightly
    /// (Debian's `rustc-web` + `rust-web-src`): used through the `RUSTC` variable
    /// with `RUSTC_BOOTSTRAP=1`.
    Bootstrapped {
        /// Path of the rustc binary.
        rustc: PathBuf,
    },
}

/// A complete eBPF toolchain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toolchain {
    /// The compiler and how to call it.
    pub compiler: Compiler,
    /// The LLVM major version of that compiler.
    pub llvm_major: u32,
    /// The `bpf-linker` binary.
    pub linker: PathBuf,
}

impl Toolchain {
    /// A `cargo` command set up to build for `bpfel-unknown-none` with this toolchain.
    ///
    /// The variables that an outer cargo sets for build scripts (`RUSTC`,
    /// `RUSTC_WRAPPER`, `CARGO_ENCODED_RUSTFLAGS`, ...) are removed, so that the
    /// nested build uses this toolchain and nothing else.
    pub fn cargo(&self) -> Command {
        let mut cmd = match &self.compiler {
            Compiler::RustupNightly => {
                let mut cmd = Command::new("rustup");
                cmd.args(["run", "nightly", "cargo"]);
                cmd.env_remove("RUSTC");
                cmd
            }
            Compiler::Bootstrapped { rustc } => {
                let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
                cmd.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
                cmd
            }
        };
        for var in [
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
            "RUSTUP_TOOLCHAIN",
        ] {
            cmd.env_remove(var);
        }
        // bpfel-unknown-none links with `bpf-linker` found on PATH.
        if let Some(dir) = self.linker.parent() {
            let mut paths = vec![dir.to_path_buf()];
            paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
            if let Ok(path) = env::join_paths(paths) {
                cmd.env("PATH", path);
            }
        }
        cmd
    }
}

impl fmt::Display for Toolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.compiler {
            Compiler::RustupNightly => write!(f, "rustup nightly with rust-src")?,
            Compiler::Bootstrapped { rustc } => write!(f, "{} with RUSTC_BOOTSTRAP=1", rustc.display())?,
        }
        write!(f, " (LLVM {}), {}", self.llvm_major, self.linker.display())
    }
}

/// What is missing for an eBPF build, and how to get it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// One line per missing piece.
    pub reasons: Vec<String>,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no toolchain can build the eBPF object: {}; run `cargo xtask setup` to install one \
             (on Debian/Ubuntu: apt-get install rustc-web rust-web-src llvm-22-dev, then \
             LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version {BPF_LINKER_VERSION} \
             --no-default-features --features llvm-22; elsewhere: rustup toolchain install \
             nightly --component rust-src and cargo install bpf-linker)",
            self.reasons.join("; ")
        )
    }
}

impl std::error::Error for Missing {}

/// A compiler that can build `core` for BPF, with its LLVM major version.
#[derive(Clone, Debug)]
struct Candidate {
    compiler: Compiler,
    llvm_major: u32,
}

/// Finds a complete eBPF toolchain without changing anything.
pub fn detect() -> Result<Toolchain, Missing> {
    let mut reasons = Vec::new();
    let candidates = compilers(&mut reasons);
    let Some(linker) = find_bpf_linker() else {
        reasons.push("`bpf-linker` is not on PATH nor in ~/.cargo/bin".to_owned());
        return Err(Missing { reasons });
    };
    let linker_llvm = bpf_linker_llvm_major();
    for candidate in candidates {
        // An unknown linker LLVM (not installed by cargo) is given the benefit of
        // the doubt; a known one must match the compiler's.
        if linker_llvm.is_none_or(|major| major == candidate.llvm_major) {
            return Ok(Toolchain { compiler: candidate.compiler, llvm_major: candidate.llvm_major, linker });
        }
        reasons.push(format!(
            "bpf-linker is built for LLVM {} but {} uses LLVM {}",
            linker_llvm.unwrap_or_default(),
            describe(&candidate.compiler),
            candidate.llvm_major
        ));
    }
    if reasons.is_empty() {
        reasons.push("no usable compiler".to_owned());
    }
    Err(Missing { reasons })
}

/// Installs what [`detect`] misses, then detects again. Idempotent: when everything
/// is there it runs no installer.
pub fn install() -> Result<Toolchain, Box<dyn std::error::Error>> {
    if let Ok(toolchain) = detect() {
        return Ok(toolchain);
    }
    let mut ignored = Vec::new();
    let mut candidates = compilers(&mut ignored);
    if candidates.is_empty() {
        apt_install(&["rustc-web", "rust-web-src"])?;
        candidates = compilers(&mut ignored);
    }
    let Some(candidate) = candidates.into_iter().next() else {
        return Err(Missing { reasons: ignored }.into());
    };
    let major = candidate.llvm_major;
    if !BPF_LINKER_LLVM_MAJORS.contains(&major) {
        return Err(format!("bpf-linker {BPF_LINKER_VERSION} cannot be built for LLVM {major}").into());
    }
    let prefix = PathBuf::from(format!("/usr/lib/llvm-{major}"));
    // `llvm-sys` (inside bpf-linker) needs llvm-config and the unversioned libLLVM.so.
    if !prefix.join("bin/llvm-config").exists() || !prefix.join("lib/libLLVM.so").exists() {
        apt_install(&[&format!("llvm-{major}-dev")])?;
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} for LLVM {major} (about a minute)");
    let status = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--force"])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix)
        .status()?;
    if !status.success() {
        return Err(format!("`cargo install bpf-linker` failed ({status})").into());
    }
    Ok(detect()?)
}

/// The version of inferno whose `inferno-flamegraph` the report tests run.
pub const INFERNO_VERSION: &str = "0.12.8";

/// Commands the tests drive, from Debian packages: `tmux` (the full-screen view
/// of `dstrace run` is tested in a tmux pane), `go` (`go tool pprof` reads the
/// report tests' profiles), `prometheus` (scrapes `dstrace daemon` in its tests;
/// its `promtool check metrics` checks the scrapes),
/// `systemd-analyze` (verifies dist/dstrace.service) and `strace` (the reliability
/// tests list every path dstrace touches beside a dead mount), `man` (renders
/// `dstrace man`) and `jq` (the `--help` examples are run as written).
pub const TEST_PACKAGES: &[(&str, &str)] = &[
    ("tmux", "tmux"),
    ("man", "man-db"),
    ("jq", "jq"),
    ("go", "golang-go"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("systemd-analyze", "systemd"),
    ("strace", "strace"),
];

/// Installs what the tests drive, if missing: the [`TEST_PACKAGES`] and
/// `inferno-flamegraph` (`cargo install inferno`, for the report tests).
/// Idempotent: when everything is there it runs nothing.
pub fn install_test_tools() -> Result<(), Box<dyn std::error::Error>> {
    install_missing(TEST_PACKAGES)?;
    cargo_install(
        "inferno-flamegraph",
        "inferno",
        INFERNO_VERSION,
        "inferno-flamegraph, for the report tests",
    )
}

/// `cargo install CRATE --version VERSION --locked` unless `program` is on PATH
/// already; `why` says in the progress line what it is for.
fn cargo_install(
    program: &str,
    krate: &str,
    version: &str,
    why: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    if find_program(program).is_some() {
        return Ok(());
    }
    eprintln!("xtask: building {krate} {version} ({why})");
    let status = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", krate, "--version", version, "--locked"])
        .status()?;
    if !status.success() {
        return Err(format!("`cargo install {krate}` failed ({status})").into());
    }
    Ok(())
}

/// The cargo-fuzz release `cargo xtask fuzz` drives.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Commands the fuzz targets' build needs, from Debian packages: a C++ compiler
/// (`libfuzzer-sys` compiles libFuzzer, which is C++, with the `cc` crate's `c++`).
pub const FUZZ_PACKAGES: &[(&str, &str)] = &[("c++", "g++")];

/// Installs what `cargo xtask fuzz` needs, if missing: the [`FUZZ_PACKAGES`] and
/// `cargo-fuzz` (`cargo install cargo-fuzz`). Idempotent: when everything is there it
/// runs nothing.
pub fn install_fuzz_tools() -> Result<(), Box<dyn std::error::Error>> {
    install_missing(FUZZ_PACKAGES)?;
    cargo_install("cargo-fuzz", "cargo-fuzz", CARGO_FUZZ_VERSION, "for `cargo xtask fuzz`, about 2 minutes")
}

/// Commands the benchmarks run, from Debian packages: `bpftrace` (the peer whose
/// equivalent D-state script dstrace is compared with).
pub const BENCH_PACKAGES: &[(&str, &str)] = &[("bpftrace", "bpftrace")];

/// Installs what the benchmarks run, if missing (the [`BENCH_PACKAGES`]).
pub fn install_bench_tools() -> Result<(), Box<dyn std::error::Error>> {
    install_missing(BENCH_PACKAGES)
}

/// Installs the packages of the `(program, package)` pairs whose program is missing.
fn install_missing(packages: &[(&str, &str)]) -> Result<(), Box<dyn std::error::Error>> {
    let mut missing: Vec<&str> = packages
        .iter()
        .filter(|(program, _)| find_program(program).is_none())
        .map(|&(_, package)| package)
        .collect();
    // Several programs may come from one package (prometheus and promtool).
    missing.dedup();
    if missing.is_empty() {
        Ok(())
    } else {
        apt_install(&missing)
    }
}

/// A program on `PATH` or in cargo's `bin` directory.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let on_path = env::var_os("PATH")
        .into_iter()
        .flat_map(|path| env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    let in_cargo_home = cargo_home().map(|home| home.join("bin").join(name));
    on_path.chain(in_cargo_home).find(|candidate| candidate.is_file())
}

/// Compilers able to build `core` for BPF, best first.
fn compilers(reasons: &mut Vec<String>) -> Vec<Candidate> {
    let mut found = Vec::new();
    match rustup_nightly() {
        Ok(candidate) => found.push(candidate),
        Err(reason) => reasons.push(reason),
    }
    match bootstrapped(Path::new(SYSTEM_RUSTC)) {
        Ok(candidate) => found.push(candidate),
        Err(reason) => reasons.push(reason),
    }
    found
}

fn rustup_nightly() -> Result<Candidate, String> {
    let sysroot = output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .ok_or("no rustup nightly toolchain")?;
    if !has_core_sources(Path::new(sysroot.trim())) {
        return Err("the rustup nightly has no rust-src component".to_owned());
    }
    let version = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
        .ok_or("`rustup run nightly rustc -vV` failed")?;
    let llvm_major = llvm_major(&version).ok_or("the nightly rustc does not say its LLVM version")?;
    Ok(Candidate { compiler: Compiler::RustupNightly, llvm_major })
}

fn bootstrapped(rustc: &Path) -> Result<Candidate, String> {
    let missing =
        || format!("{} is missing or has no core sources (Debian: rustc-web, rust-web-src)", rustc.display());
    let sysroot = output(Command::new(rustc).args(["--print", "sysroot"])).ok_or_else(missing)?;
    if !has_core_sources(Path::new(sysroot.trim())) {
        return Err(missing());
    }
    let version = output(Command::new(rustc).arg("-vV")).ok_or_else(missing)?;
    let llvm_major = llvm_major(&version).ok_or_else(missing)?;
    Ok(Candidate { compiler: Compiler::Bootstrapped { rustc: rustc.to_path_buf() }, llvm_major })
}

fn describe(compiler: &Compiler) -> String {
    match compiler {
        Compiler::RustupNightly => "the rustup nightly".to_owned(),
        Compiler::Bootstrapped { rustc } => rustc.display().to_string(),
    }
}

fn has_core_sources(sysroot: &Path) -> bool {
    sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml").is_file()
}

/// The LLVM major version in the output of `rustc -vV`.
pub fn llvm_major(rustc_vv: &str) -> Option<u32> {
    let version = rustc_vv.lines().find_map(|line| line.strip_prefix("LLVM version: "))?;
    version.split('.').next()?.trim().parse().ok()
}

fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
}

fn find_bpf_linker() -> Option<PathBuf> {
    find_program("bpf-linker")
}

/// The LLVM feature `cargo install` built bpf-linker with, from cargo's own record.
fn bpf_linker_llvm_major() -> Option<u32> {
    let record = std::fs::read_to_string(cargo_home()?.join(".crates2.json")).ok()?;
    llvm_feature_of_bpf_linker(&record)
}

/// Reads the `llvm-N` feature of the `bpf-linker` entry of `.crates2.json`.
pub fn llvm_feature_of_bpf_linker(crates2_json: &str) -> Option<u32> {
    let entry = &crates2_json[crates2_json.find("\"bpf-linker ")?..];
    let features = &entry[entry.find("\"features\":")?..];
    let features = &features[..features.find(']')?];
    features.split('"').find_map(|word| word.strip_prefix("llvm-")?.parse().ok())
}

/// Installs Debian packages with apt-get (through sudo when not root), waiting for
/// another apt or dpkg run to release its lock rather than failing.
pub fn apt_install(packages: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    if Command::new("apt-get").arg("--version").output().is_err() {
        return Err(
            format!("cannot install {} without apt-get: install them by hand", packages.join(" ")).into()
        );
    }
    let sudo = !is_root();
    let run = |args: &[&str]| -> Result<(), Box<dyn std::error::Error>> {
        let mut cmd = if sudo { Command::new("sudo") } else { Command::new("apt-get") };
        if sudo {
            cmd.arg("apt-get");
        }
        eprintln!("xtask: {}apt-get {}", if sudo { "sudo " } else { "" }, args.join(" "));
        let status = cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive").status()?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("apt-get {} failed ({status})", args.join(" ")).into())
        }
    };
    run(&["update", "-qq"])?;
    let mut args = vec!["-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    run(&args)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// The trimmed standard output of a command that succeeded.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc_vv() {
        let vv = "rustc 1.96.0 (ac68faa20 2026-05-25)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.8\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }

    #[test]
    fn llvm_feature_from_cargo_record() {
        let record = r#"{"installs":{"cargo-nextest 0.9 (registry+x)":{"features":["llvm-9"]},"bpf-linker 0.13.0 (registry+https://github.com/rust-lang/crates.io-index)":{"version_req":"^0.13","bins":["bpf-linker"],"features":["llvm-22"],"all_features":false,"no_default_features":true}}}"#;
        assert_eq!(llvm_feature_of_bpf_linker(record), Some(22));
        assert_eq!(llvm_feature_of_bpf_linker(r#"{"installs":{}}"#), None);
    }
}
