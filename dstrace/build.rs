//! Builds the eBPF object and hands it to the crate (embedded with
//! `include_bytes!`), or stops the build with a message naming what to install.
//!
//! `DSTRACE_EBPF_OBJECT=/path/to/object` uses a prebuilt object instead (packagers,
//! build hosts without the eBPF toolchain). Either way the object is checked to be
//! an eBPF ELF object: an empty or foreign file never gets embedded.

use std::{env, fs, path::PathBuf, process::exit};

use xtask::ebpf::{self, Layout};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let layout = Layout::new(ebpf::workspace_root(&manifest_dir));
    println!("cargo:rerun-if-env-changed=DSTRACE_EBPF_OBJECT");

    let object = match env::var_os("DSTRACE_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
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

fn fail(message: &str) -> ! {
    eprintln!("error: dstrace: {message}");
    println!("cargo:warning=dstrace: {message}");
    exit(1);
}
