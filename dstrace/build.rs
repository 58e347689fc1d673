//! Builds the eBPF object and hands it to the crate (embedded with
//! `include_bytes!`), or stops the build with a message naming what to install.
//!
//! `DSTRACE_EBPF_OBJECT=/path/to/object` uses a prebuilt object instead (packagers,
//! build hosts without the eBPF toolchain). Either way the object is checked to be
//! an eBPF ELF object: an empty or foreign file never gets embedded.
//!
//! It also stamps the git commit into `--version` (`DSTRACE_COMMIT`), so that a
//! binary found on a host says which source it is; a build outside a git checkout
//! (a source tarball) says `unknown commit`.

use std::{
    env, fs,
    path::PathBuf,
    process::{exit, Command},
};

use xtask::ebpf::{self, Layout};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let layout = Layout::new(ebpf::workspace_root(&manifest_dir));
    println!("cargo:rerun-if-env-changed=DSTRACE_EBPF_OBJECT");
    println!("cargo:rustc-env=DSTRACE_COMMIT={}", commit(&manifest_dir));

    let object = match env::var_os("DSTRACE_EBPF_OBJECT") {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", PathBuf::from(&path).display());
            PathBuf::from(path)
        }
        None => {
            for input in layout.inputs() {
                println!("cargo:rerun-if-changed={}", input.display());
            }
            let toolchain = xtask::toolchain::detect().unwrap_or_else(|missing| fail(&missing.to_string()));
            ebpf::build(&toolchain, &layout).unwrap_or_else(|err| fail(&err.to_string()))
        }
    };
    let bytes = fs::read(&object).unwrap_or_else(|err| fail(&format!("{}: {err}", object.display())));
    if let Err(err) = ebpf::check_object(&bytes) {
        fail(&format!("{}: {err}", object.display()));
    }
    if let Err(err) = fs::write(out_dir.join("dstrace.bpf.o"), &bytes) {
        fail(&format!("cannot write the eBPF object to OUT_DIR: {err}"));
    }
}

/// `commit 0123abcd` of the checkout the build is in, or `unknown commit`; the
/// build runs again when HEAD moves (a commit, a checkout).
fn commit(manifest_dir: &std::path::Path) -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).current_dir(manifest_dir).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for file in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        // Only files that exist: a missing one would make every build run this again.
        let path = git(&["rev-parse", "--git-path", file]).map(|path| manifest_dir.join(path));
        if let Some(path) = path.filter(|path| path.is_file()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(hash) => format!("commit {hash}"),
        None => "unknown commit".to_owned(),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: dstrace: {message}");
    println!("cargo:warning=dstrace: {message}");
    exit(1);
}
