//! `cargo xtask vm`: dstrace on other kernels, in a qemu guest.
//!
//! This machine runs one kernel (6.18, without NFS, sunrpc or modules); dstrace's
//! users run Debian-like kernels from 5.10 up, with NFS. This module boots Debian's
//! own kernels (5.10, 6.1, 6.12) in qemu, runs a scenario script in the guest with the
//! freshly built `dstrace`, brings the results back over a 9p share, and checks them
//! on the host ([`checks`]).
//!
//! qemu runs under TCG (software emulation): this project's machines have a
//! `/dev/kvm` on which a Debian guest never boots.
//!
//! What it builds is cached under [`cache_dir`], never in the repository:
//!
//! * `kernels/<suite>/`: the `linux-image-amd64` of a Debian release, downloaded with
//!   apt through a private directory (its own sources list, package lists and
//!   archive cache: the host's apt setup is not touched), unpacked with
//!   `dpkg-deb -x` and indexed with `depmod`; also busybox-static for the initrd;
//! * `rootfs-<key>.ext4`: a bookworm minbase root (mmdebstrap) with the NFS server
//!   and client, as an ext4 image made with `mke2fs -d` (no loop mount); the key
//!   hashes [`ROOTFS_VERSION`] and [`GUEST_PACKAGES`], so a change rebuilds it.
//!   qemu opens it with `snapshot=on`: every boot starts from the same image.
//!
//! Each boot gets, under `target/vm/<kernel>-<scenario>/`, a small uncompressed
//! initrd (busybox and the modules that reach the disk and the 9p shares, in load
//! order from `modules.dep`) and an `io` directory shared with the guest: the
//! `dstrace` binary, the guest scripts of `xtask/vm/` and, after the run,
//! `results/`. The kernel's module tree is shared read-only, so `modprobe nfsd`
//! works in the guest.
//!
//! Nothing can hang: the guest powers itself off after the scenario's deadline
//! (`echo o > /proc/sysrq-trigger`, which works beside a hung NFS mount) and xtask
//! kills qemu after a longer one; either counts as a failure.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};

use xtask::toolchain;

pub mod checks;

/// A Debian kernel the guest can boot.
#[derive(Debug)]
pub struct Kernel {
    /// Short name on the command line (`6.1`).
    pub name: &'static str,
    /// Debian release whose `linux-image-amd64` it is.
    pub suite: &'static str,
}

/// The kernel matrix: the oldest Debian kernel with BTF, and the two newest releases.
pub const KERNELS: [Kernel; 3] = [
    Kernel { name: "5.10", suite: "bullseye" },
    Kernel { name: "6.1", suite: "bookworm" },
    Kernel { name: "6.12", suite: "trixie" },
];

/// A script run in the guest and the check of what it brought back.
pub struct Scenario {
    /// Name on the command line and of `xtask/vm/scenarios/<name>.sh`.
    pub name: &'static str,
    /// What it proves, for `--help` and the log.
    pub about: &'static str,
    /// The guest powers off after this long, done or not.
    pub guest_timeout: Duration,
    /// Checks the results directory; returns facts worth printing.
    pub check: fn(&Path) -> Result<Vec<String>>,
    /// The integration test binaries (`tests/tests/<name>.rs`) it carries into the
    /// guest, in `/mnt/io/tests/`.
    pub tests: &'static [&'static str],
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Every scenario.
pub const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "load",
        about: "dstrace loads, attaches and reports real D waits (synchronous writes)",
        guest_timeout: Duration::from_secs(240),
        check: checks::load,
        tests: &[],
    },
    Scenario {
        name: "nfs",
        about: "an NFS server dies under v3 and v4 mounts; dstrace names the tasks, where they wait, \
                and the mounts",
        guest_timeout: Duration::from_secs(300),
        check: checks::nfs,
        tests: &[],
    },
    Scenario {
        name: "tests",
        about: "the host's engine, d_states, iterator, fused and after_hang integration tests pass \
                against this kernel",
        guest_timeout: Duration::from_secs(900),
        check: checks::tests,
        tests: checks::GUEST_TESTS,
    },
];

/// Packages of the guest, beside minbase.
pub const GUEST_PACKAGES: &[&str] =
    &["nfs-kernel-server", "nfs-common", "procps", "kmod", "iproute2", "nftables"];
/// Bump to rebuild the guest image when how it is made changes.
pub const ROOTFS_VERSION: &str = "1";
/// The guest's release: its glibc must not be older than the host's, which built
/// `dstrace` (both are Debian 12 here).
const GUEST_SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Modules the initrd loads (with their dependencies) where the kernel has them as
/// modules: virtio PCI and block, ext4 (and the crc32c it asks the crypto API for),
/// 9p over virtio.
const INITRD_MODULES: &[&str] =
    &["virtio_pci", "virtio_blk", "crc32c_generic", "crc32c_intel", "ext4", "9pnet_virtio", "9p"];
/// Time qemu gets beyond the guest's own deadline (boot and power-off under TCG).
const QEMU_MARGIN: Duration = Duration::from_secs(180);

/// Host programs `cargo xtask vm` needs, and the Debian packages that have them.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("mmdebstrap", "mmdebstrap"),
    ("depmod", "kmod"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    ("cpio", "cpio"),
    ("mke2fs", "e2fsprogs"),
    ("dpkg-deb", "dpkg"),
];

/// The outcome of one boot.
#[derive(Debug)]
pub struct Outcome {
    /// `6.1/nfs`.
    pub what: String,
    /// Facts the check printed, or why it failed.
    pub result: Result<Vec<String>, String>,
    /// Boot to power-off.
    pub elapsed: Duration,
}

/// What goes into the guest besides the scripts: the `dstrace` binary, and the
/// integration test binaries by name (`engine` -> its executable).
pub struct Payload {
    /// `target/release/dstrace`.
    pub dstrace: PathBuf,
    /// The test binaries the scenarios carry.
    pub tests: Vec<(String, PathBuf)>,
    /// Programs the test binaries run (`dstrace-test-fused`), in `/mnt/io/bin/`.
    pub helpers: Vec<PathBuf>,
}

/// Runs `scenarios` on `kernels` with the binaries of `payload`; fails if any run
/// fails, after running them all.
pub fn run(root: &Path, payload: &Payload, kernels: &[&Kernel], scenarios: &[&Scenario]) -> Result<()> {
    let started = Instant::now();
    ensure!(
        toolchain::is_root(),
        "`cargo xtask vm` needs root (mmdebstrap, and the guest image's file owners): run it with sudo"
    );
    install_host_tools()?;
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    eprintln!("xtask: vm: cache in {}", cache.display());
    let rootfs = rootfs(&cache)?;
    let busybox = busybox(&cache)?;
    let mut outcomes = Vec::new();
    for kernel in kernels {
        let fetched = fetch_kernel(&cache, kernel)?;
        for scenario in scenarios {
            let dir = run_dir(root, kernel, scenario);
            let boot_started = Instant::now();
            let mut booted = boot(root, &dir, payload, &fetched, &busybox, &rootfs, scenario);
            let mut wedged = None;
            if let Err(err) = &booted {
                // Seen a few times in some dozens of boots under TCG: the guest
                // stopped before its own watchdog could power it off, or its kernel
                // panicked patching its own text (an int3 left by a static key, at
                // boot too, before dstrace ran). Not a verdict on dstrace; one more
                // boot is, and the result says what the first did.
                let first = err
                    .downcast_ref::<GuestWedged>()
                    .map(ToString::to_string)
                    .or_else(|| err.downcast_ref::<GuestPanicked>().map(ToString::to_string));
                if let Some(first) = first {
                    eprintln!("xtask: vm: {}/{}: {first}; booting it once more", kernel.name, scenario.name);
                    wedged = Some(first);
                    booted = boot(root, &dir, payload, &fetched, &busybox, &rootfs, scenario);
                }
            }
            let result = booted
                .and_then(|results| {
                    (scenario.check)(&results).with_context(|| format!("results in {}", results.display()))
                })
                .map(|mut facts| {
                    if let Some(first) = wedged {
                        facts.push(format!("passed on a second boot; the first: {first}"));
                    }
                    facts
                })
                .map_err(|err| format!("{err:#}"));
            let outcome = Outcome {
                what: format!("{}/{}", kernel.name, scenario.name),
                result,
                elapsed: boot_started.elapsed(),
            };
            report(&outcome);
            outcomes.push(outcome);
        }
    }
    eprintln!("xtask: vm: summary ({:.0?} in all):", started.elapsed());
    for outcome in &outcomes {
        let verdict = if outcome.result.is_ok() { "ok" } else { "FAILED" };
        eprintln!("  {:<10} {:<7} {:>6.0?}", outcome.what, verdict, outcome.elapsed);
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|outcome| outcome.result.is_err())
        .map(|outcome| outcome.what.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("VM scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Checks the results the last runs left in `target/vm/`, booting nothing.
pub fn check_only(root: &Path, kernels: &[&Kernel], scenarios: &[&Scenario]) -> Result<()> {
    let mut failed = Vec::new();
    for kernel in kernels {
        for scenario in scenarios {
            let results = run_dir(root, kernel, scenario).join("io/results");
            let result = (scenario.check)(&results).map_err(|err| format!("{err:#}"));
            let outcome = Outcome {
                what: format!("{}/{}", kernel.name, scenario.name),
                result,
                elapsed: Duration::ZERO,
            };
            report(&outcome);
            if outcome.result.is_err() {
                failed.push(outcome.what);
            }
        }
    }
    ensure!(failed.is_empty(), "VM scenarios failed: {}", failed.join(", "));
    Ok(())
}

/// `target/vm/<kernel>-<scenario>`: a run's initrd, console log and io share.
fn run_dir(root: &Path, kernel: &Kernel, scenario: &Scenario) -> PathBuf {
    root.join("target/vm").join(format!("{}-{}", kernel.name, scenario.name))
}

fn report(outcome: &Outcome) {
    match &outcome.result {
        Ok(facts) => {
            eprintln!("xtask: vm: {} passed ({:.0?})", outcome.what, outcome.elapsed);
            for fact in facts {
                eprintln!("    {fact}");
            }
        }
        Err(err) => eprintln!("xtask: vm: {} FAILED ({:.0?}): {err}", outcome.what, outcome.elapsed),
    }
}

/// Where kernels and the guest image are cached: `$DSTRACE_VM_CACHE`, else
/// `/var/cache/dstrace-vm`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("DSTRACE_VM_CACHE").map_or_else(|| PathBuf::from("/var/cache/dstrace-vm"), PathBuf::from)
}

fn install_host_tools() -> Result<()> {
    let missing: Vec<&str> =
        HOST_TOOLS.iter().filter(|(tool, _)| !on_path(tool)).map(|&(_, package)| package).collect();
    if missing.is_empty() {
        return Ok(());
    }
    toolchain::apt_install(&missing).map_err(|err| anyhow!("{err}"))?;
    let still: Vec<&str> =
        HOST_TOOLS.iter().filter(|(tool, _)| !on_path(tool)).map(|&(tool, _)| tool).collect();
    ensure!(still.is_empty(), "still missing after apt-get install: {}", still.join(", "));
    Ok(())
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| dir.join(tool).is_file())
}

/// A private apt directory for one Debian release: its own sources list, lists and
/// archive cache; the host's configuration and package state are not used.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(cache: &Path, suite: &str) -> Result<PrivateApt> {
        let dir = cache.join("apt").join(suite);
        for sub in ["state/lists/partial", "cache/archives/partial", "download"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        fs::write(dir.join("state/status"), "")?;
        fs::write(
            dir.join("sources.list"),
            format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {MIRROR} {suite} main\n"),
        )?;
        Ok(PrivateApt { dir })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let dir = self.dir.display();
        for option in [
            format!("Dir::Etc::SourceList={dir}/sources.list"),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            "Dir::Etc::Preferences=/dev/null".to_owned(),
            "Dir::Etc::PreferencesParts=/dev/null".to_owned(),
            format!("Dir::State={dir}/state"),
            format!("Dir::State::status={dir}/state/status"),
            format!("Dir::Cache={dir}/cache"),
            "Debug::NoLocking=1".to_owned(),
            "APT::Architecture=amd64".to_owned(),
            "APT::Sandbox::User=root".to_owned(),
            "Acquire::Languages=none".to_owned(),
        ] {
            cmd.arg("-o").arg(option);
        }
        cmd
    }

    fn update(&self) -> Result<()> {
        let mut cmd = self.command("apt-get");
        cmd.args(["update", "-qq"]);
        status(cmd)
    }

    /// The package a metapackage depends on (`linux-image-amd64` ->
    /// `linux-image-6.1.0-50-amd64`).
    fn dependency_of(&self, metapackage: &str) -> Result<String> {
        let mut cmd = self.command("apt-cache");
        cmd.args(["depends", metapackage]);
        let text = output(cmd)?;
        text.lines()
            .find_map(|line| line.trim().strip_prefix("Depends: "))
            .map(|name| name.trim().to_owned())
            .ok_or_else(|| anyhow!("apt-cache depends {metapackage} names no dependency:\n{text}"))
    }

    /// Downloads `package` and unpacks it into `into`.
    fn download_and_unpack(&self, package: &str, into: &Path) -> Result<()> {
        let download = self.dir.join("download");
        for entry in fs::read_dir(&download)? {
            fs::remove_file(entry?.path())?;
        }
        let mut cmd = self.command("apt-get");
        cmd.args(["download", "-qq", package]).current_dir(&download);
        status(cmd)?;
        let deb = fs::read_dir(&download)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
            .ok_or_else(|| anyhow!("apt-get download {package} left no .deb in {}", download.display()))?;
        let mut cmd = Command::new("dpkg-deb");
        cmd.arg("-x").arg(&deb).arg(into);
        status(cmd)?;
        fs::remove_file(&deb)?;
        Ok(())
    }
}

/// A kernel unpacked in the cache.
#[derive(Debug)]
pub struct FetchedKernel {
    kernel: &'static str,
    /// `uname -r`.
    release: String,
    /// The bzImage.
    image: PathBuf,
    /// `lib/modules/<release>`, indexed by depmod.
    modules: PathBuf,
}

fn fetch_kernel(cache: &Path, kernel: &Kernel) -> Result<FetchedKernel> {
    let dir = cache.join("kernels").join(kernel.suite);
    let ready = dir.join("release");
    if !ready.is_file() {
        let started = Instant::now();
        eprintln!("xtask: vm: downloading Debian {}'s kernel ({})", kernel.suite, kernel.name);
        let apt = PrivateApt::new(cache, kernel.suite)?;
        apt.update()?;
        let package = apt.dependency_of("linux-image-amd64")?;
        let tree = dir.join("tree");
        if tree.exists() {
            fs::remove_dir_all(&tree)?;
        }
        fs::create_dir_all(&tree)?;
        apt.download_and_unpack(&package, &tree)?;
        let release = package
            .strip_prefix("linux-image-")
            .map(|release| release.trim_end_matches("-unsigned").to_owned())
            .ok_or_else(|| anyhow!("unexpected kernel package name {package}"))?;
        // From trixie on, packages ship /usr/lib/modules (merged /usr); depmod -b
        // and the rest look in lib/modules.
        if !tree.join("lib").exists() && tree.join("usr/lib/modules").is_dir() {
            std::os::unix::fs::symlink("usr/lib", tree.join("lib"))?;
        }
        let mut depmod = Command::new("depmod");
        depmod.arg("-b").arg(&tree).arg(&release);
        status(depmod)?;
        fs::write(&ready, &release)?;
        eprintln!("xtask: vm: kernel {release} ready ({:.0?})", started.elapsed());
    }
    let release = fs::read_to_string(&ready)?.trim().to_owned();
    let tree = dir.join("tree");
    let fetched = FetchedKernel {
        kernel: kernel.name,
        image: tree.join(format!("boot/vmlinuz-{release}")),
        modules: tree.join(format!("lib/modules/{release}")),
        release,
    };
    ensure!(
        fetched.image.is_file() && fetched.modules.join("modules.dep").is_file(),
        "incomplete kernel in {}: delete that directory",
        dir.display()
    );
    Ok(fetched)
}

/// Debian's static busybox, for the initrd.
fn busybox(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("busybox");
    let binary = dir.join("bin/busybox");
    if !binary.is_file() {
        let apt = PrivateApt::new(cache, GUEST_SUITE)?;
        apt.update()?;
        apt.download_and_unpack("busybox-static", &dir)?;
        ensure!(binary.is_file(), "busybox-static has no bin/busybox");
    }
    Ok(binary)
}

/// The guest's root image, built once per [`rootfs_key`].
fn rootfs(cache: &Path) -> Result<PathBuf> {
    let image = cache.join(format!("rootfs-{}.ext4", rootfs_key()));
    if image.is_file() {
        return Ok(image);
    }
    let started = Instant::now();
    eprintln!("xtask: vm: building the guest image {} (about two minutes)", image.display());
    let staging = cache.join("rootfs.staging");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap.args(["--quiet", "--variant=minbase"]).arg(format!("--include={}", GUEST_PACKAGES.join(",")));
    mmdebstrap.arg(GUEST_SUITE).arg(&staging).arg(MIRROR);
    status(mmdebstrap)?;
    fs::create_dir_all(staging.join("mnt/io"))?;
    fs::create_dir_all(staging.join("export"))?;
    let partial = image.with_extension("partial");
    let mut mke2fs = Command::new("mke2fs");
    mke2fs.args(["-q", "-F", "-t", "ext4", "-L", "dstrace-vm", "-d"]).arg(&staging).arg(&partial).arg("2G");
    status(mke2fs)?;
    fs::rename(&partial, &image)?;
    fs::remove_dir_all(&staging)?;
    // Older images are of no further use.
    for entry in fs::read_dir(cache)? {
        let path = entry?.path();
        let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with("rootfs-") && path != image {
            let _ = fs::remove_file(&path);
        }
    }
    eprintln!("xtask: vm: guest image ready ({:.0?})", started.elapsed());
    Ok(image)
}

/// What the guest image depends on, hashed (FNV-1a: stable across Rust versions).
pub fn rootfs_key() -> String {
    let text = format!("{ROOTFS_VERSION} {GUEST_SUITE} {}", GUEST_PACKAGES.join(","));
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{GUEST_SUITE}-{:08x}", hash >> 32)
}

/// Modules to load, dependencies first, as paths relative to the module tree:
/// `roots` that are modules (built-in ones and unknown ones are left out) and what
/// they depend on, from a `modules.dep` text.
pub fn module_load_order(modules_dep: &str, roots: &[&str]) -> Vec<String> {
    let deps: Vec<(String, Vec<&str>)> = modules_dep
        .lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            Some((module.trim().to_owned(), deps.split_whitespace().collect()))
        })
        .collect();
    let by_name = |name: &str| deps.iter().position(|(path, _)| module_name(path) == name.replace('-', "_"));
    let by_path = |path: &str| deps.iter().position(|(known, _)| known == path);
    let mut order = Vec::new();
    fn visit(
        index: usize,
        deps: &[(String, Vec<&str>)],
        by_path: &dyn Fn(&str) -> Option<usize>,
        order: &mut Vec<String>,
        depth: usize,
    ) {
        let (path, needs) = &deps[index];
        if order.contains(path) || depth > 32 {
            return;
        }
        for need in needs {
            if let Some(need) = by_path(need) {
                visit(need, deps, by_path, order, depth + 1);
            }
        }
        if !order.contains(path) {
            order.push(path.clone());
        }
    }
    for root in roots {
        if let Some(index) = by_name(root) {
            visit(index, &deps, &by_path, &mut order, 0);
        }
    }
    order
}

/// `kernel/fs/9p/9p.ko.xz` -> `9p`; dashes read as underscores, as the kernel does.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// Builds the initrd in `dir`: busybox, `xtask/vm/init`, and the modules of
/// [`INITRD_MODULES`], uncompressed (busybox's insmod takes them as they are).
fn initrd(root: &Path, dir: &Path, kernel: &FetchedKernel, busybox: &Path) -> Result<PathBuf> {
    let staging = dir.join("initrd");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    for sub in ["bin", "modules", "proc", "sys", "dev", "newroot"] {
        fs::create_dir_all(staging.join(sub))?;
    }
    fs::copy(busybox, staging.join("bin/busybox"))?;
    fs::copy(root.join("xtask/vm/init"), staging.join("init"))?;
    let modules_dep = fs::read_to_string(kernel.modules.join("modules.dep"))?;
    let mut names = Vec::new();
    for module in module_load_order(&modules_dep, INITRD_MODULES) {
        let name = format!("{}.ko", module_name(&module));
        let source = kernel.modules.join(&module);
        let target = staging.join("modules").join(&name);
        let decompressor = if module.ends_with(".xz") {
            Some("xz")
        } else if module.ends_with(".zst") {
            Some("zstd")
        } else {
            None
        };
        match decompressor {
            Some(tool) => {
                let out = Command::new(tool).arg("-dc").arg(&source).output()?;
                ensure!(out.status.success(), "{tool} -dc {} failed", source.display());
                fs::write(&target, out.stdout)?;
            }
            None => {
                fs::copy(&source, &target).with_context(|| format!("cannot copy {}", source.display()))?;
            }
        }
        names.push(name);
    }
    fs::write(staging.join("modules.order"), names.join("\n") + "\n")?;
    let image = dir.join("initrd.img");
    let mut cpio = Command::new("sh");
    cpio.arg("-c").arg("find . | cpio --quiet -o -H newc -R 0:0 > \"$0\"").arg(&image).current_dir(&staging);
    status(cpio)?;
    Ok(image)
}

/// Boots `kernel` with `scenario`; returns the results directory once the guest
/// has powered off and reported success.
fn boot(
    root: &Path,
    dir: &Path,
    payload: &Payload,
    kernel: &FetchedKernel,
    busybox: &Path,
    rootfs: &Path,
    scenario: &Scenario,
) -> Result<PathBuf> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let io = dir.join("io");
    let results = io.join("results");
    fs::create_dir_all(io.join("scenarios"))?;
    fs::create_dir_all(&results)?;
    let binary = &payload.dstrace;
    fs::copy(binary, io.join("dstrace")).with_context(|| format!("cannot copy {}", binary.display()))?;
    if !scenario.tests.is_empty() {
        fs::create_dir_all(io.join("tests"))?;
    }
    for name in scenario.tests {
        let (_, binary) = payload
            .tests
            .iter()
            .find(|(built, _)| built == name)
            .with_context(|| format!("the {name} test binary was not built"))?;
        fs::copy(binary, io.join("tests").join(name))
            .with_context(|| format!("cannot copy {}", binary.display()))?;
    }
    if !scenario.tests.is_empty() {
        fs::create_dir_all(io.join("bin"))?;
        for helper in &payload.helpers {
            let name = helper.file_name().context("a helper program has a name")?;
            fs::copy(helper, io.join("bin").join(name))
                .with_context(|| format!("cannot copy {}", helper.display()))?;
        }
    }
    fs::copy(root.join("xtask/vm/guest-init"), io.join("guest-init"))?;
    for entry in fs::read_dir(root.join("xtask/vm/scenarios"))? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            fs::copy(&path, io.join("scenarios").join(name))?;
        }
    }
    fs::write(
        io.join("run.env"),
        format!("SCENARIO={}\nGUEST_TIMEOUT={}\n", scenario.name, scenario.guest_timeout.as_secs()),
    )?;
    let initrd = initrd(root, dir, kernel, busybox)?;
    let console = dir.join("console.log");

    let mut qemu = Command::new("qemu-system-x86_64");
    // One host thread runs both vCPUs in turn: with a thread each (MTTCG), a
    // vCPU could run a stale translation of kernel text the other was patching
    // (text_poke_bp's int3, as a tracepoint's static key is flipped on attach and
    // detach), an oops in try_to_wake_up on every 6.12 boot of the tests scenario;
    // single-threaded TCG invalidates the translations before either runs on.
    qemu.args(["-accel", "tcg,thread=single", "-cpu", "max", "-smp", "2", "-m", "2G"]);
    qemu.args(["-nodefaults", "-display", "none", "-no-reboot"]);
    qemu.arg("-kernel").arg(&kernel.image).arg("-initrd").arg(&initrd);
    qemu.args(["-append", "console=ttyS0 rdinit=/init panic=-1 loglevel=4"]);
    qemu.arg("-serial").arg(format!("file:{}", console.display()));
    qemu.arg("-drive").arg(format!("file={},if=virtio,format=raw,snapshot=on", rootfs.display()));
    qemu.arg("-virtfs").arg(format!("local,path={},mount_tag=io,security_model=none,id=io", io.display()));
    qemu.arg("-virtfs").arg(format!(
        "local,path={},mount_tag=modules,security_model=none,readonly=on,id=modules",
        kernel.modules.display()
    ));
    let qemu_log = dir.join("qemu.log");
    let log = fs::File::create(&qemu_log)?;
    qemu.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);

    let timeout = scenario.guest_timeout + QEMU_MARGIN;
    eprintln!(
        "xtask: vm: {}/{} ({}): booting {} (guest deadline {:?}, qemu killed after {:?}); console: {}",
        kernel.kernel,
        scenario.name,
        scenario.about,
        kernel.release,
        scenario.guest_timeout,
        timeout,
        console.display()
    );
    let mut child = qemu.spawn().context("cannot start qemu-system-x86_64")?;
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait()? {
            break exit;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(GuestWedged { timeout, console: tail(&console, 30) }.into());
        }
        thread::sleep(Duration::from_millis(250));
    };
    ensure!(
        exit.success(),
        "qemu failed ({exit}): {}\nconsole:\n{}",
        tail(&qemu_log, 10),
        tail(&console, 30)
    );
    let status = fs::read_to_string(results.join("status")).unwrap_or_default();
    let status = status.trim();
    let console_text = fs::read_to_string(&console).unwrap_or_default();
    if status.is_empty() && console_text.contains("Kernel panic - not syncing") {
        return Err(GuestPanicked { console: tail(&console, 40) }.into());
    }
    if status != "0" {
        let why = if status.is_empty() {
            "no status: the scenario never ended".to_owned()
        } else {
            format!("status {status}")
        };
        bail!(
            "the guest scenario failed ({why}); its log:\n{}\nconsole:\n{}",
            tail(&results.join("scenario.log"), 30),
            tail(&console, 20)
        );
    }
    Ok(results)
}

/// A guest that neither ended its scenario nor let its watchdog power it off: qemu
/// was killed from outside.
#[derive(Debug)]
struct GuestWedged {
    timeout: Duration,
    console: String,
}

impl std::fmt::Display for GuestWedged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "qemu killed after {:?} (the guest's own watchdog never ran); console:\n{}",
            self.timeout, self.console
        )
    }
}

impl std::error::Error for GuestWedged {}

/// A guest whose kernel panicked before its scenario ended.
#[derive(Debug)]
struct GuestPanicked {
    console: String,
}

impl std::fmt::Display for GuestPanicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the guest's kernel panicked before its scenario ended; console:\n{}", self.console)
    }
}

impl std::error::Error for GuestPanicked {}

/// The last `lines` lines of a text file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|err| format!("({}: {err})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn status(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot run {shown}"))?;
    ensure!(status.success(), "{shown} failed ({status})");
    Ok(())
}

fn output(mut cmd: Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("cannot run {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies() {
        let dep = "kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz\n\
                   kernel/lib/crc16.ko.xz:\n\
                   kernel/fs/mbcache.ko.xz:\n\
                   kernel/fs/jbd2/jbd2.ko.xz:\n\
                   kernel/drivers/virtio/virtio_blk.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz\n\
                   kernel/drivers/virtio/virtio_ring.ko.xz: kernel/drivers/virtio/virtio.ko.xz\n\
                   kernel/drivers/virtio/virtio.ko.xz:\n\
                   kernel/arch/x86/crypto/crc32c-intel.ko.xz:\n";
        let order = module_load_order(dep, &["virtio_blk", "crc32c_intel", "ext4", "not_a_module"]);
        let names: Vec<String> = order.iter().map(|path| module_name(path)).collect();
        assert_eq!(
            names,
            ["virtio", "virtio_ring", "virtio_blk", "crc32c_intel", "crc16", "mbcache", "jbd2", "ext4"]
        );
    }

    #[test]
    fn rootfs_key_is_stable() {
        assert_eq!(rootfs_key(), rootfs_key());
        assert!(rootfs_key().starts_with("bookworm-"));
    }
}
