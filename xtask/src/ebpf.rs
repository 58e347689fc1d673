//! Building the eBPF object (`dstrace-ebpf`, target `bpfel-unknown-none`).
//!
//! The eBPF crate is a workspace of its own: it is built by a nested cargo with the
//! toolchain of [`crate::toolchain`], `-Z build-std=core`, its own lock file
//! (`--locked`) and its own target directory (`target/ebpf`), so that the nested
//! build never waits for the lock of the outer one and is incremental across
//! profiles.

use std::{
    error::Error,
    fs, io,
    path::{Path, PathBuf},
    process::Stdio,
};

use crate::toolchain::Toolchain;

/// The eBPF target.
pub const TARGET: &str = "bpfel-unknown-none";
/// `e_machine` of an eBPF ELF object.
const EM_BPF: u16 = 247;

/// Paths and inputs of the eBPF build, relative to the workspace root.
pub struct Layout {
    /// The workspace root.
    pub root: PathBuf,
}

impl Layout {
    /// The layout of the workspace at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// The eBPF crate.
    pub fn crate_dir(&self) -> PathBuf {
        self.root.join("dstrace-ebpf")
    }

    /// Where the nested cargo puts its output.
    pub fn target_dir(&self) -> PathBuf {
        self.root.join("target").join("ebpf")
    }

    /// The object the build produces.
    pub fn object(&self) -> PathBuf {
        self.target_dir().join(TARGET).join("release").join("dstrace")
    }

    /// Files whose change means the object must be built again.
    pub fn inputs(&self) -> Vec<PathBuf> {
        [
            "dstrace-ebpf/src",
            "dstrace-ebpf/Cargo.toml",
            "dstrace-ebpf/Cargo.lock",
            "dstrace-common/src",
            "dstrace-common/Cargo.toml",
        ]
        .iter()
        .map(|path| self.root.join(path))
        .collect()
    }
}

/// Builds the eBPF object and returns its path, after checking that it is one.
///
/// The nested cargo's output goes to standard error, so that a build script's
/// standard output (read by the outer cargo) stays clean.
pub fn build(toolchain: &Toolchain, layout: &Layout) -> Result<PathBuf, Box<dyn Error>> {
    let status = toolchain
        .cargo()
        .current_dir(layout.crate_dir())
        .args(["build", "--release", "--locked", "--target", TARGET, "-Z", "build-std=core", "--target-dir"])
        .arg(layout.target_dir())
        .stdout(Stdio::from(io::stderr()))
        .status()
        .map_err(|err| format!("cannot run cargo for the eBPF crate ({toolchain}): {err}"))?;
    if !status.success() {
        return Err(format!("building the eBPF crate with {toolchain} failed ({status})").into());
    }
    let object = layout.object();
    check_object(&fs::read(&object).map_err(|err| format!("{}: {err}", object.display()))?)
        .map_err(|err| format!("{}: {err}", object.display()))?;
    Ok(object)
}

/// Checks that `bytes` are a little-endian 64-bit eBPF ELF object with content.
pub fn check_object(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err(format!("not an ELF object ({} bytes)", bytes.len()));
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF object".to_owned());
    }
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    if machine != EM_BPF {
        return Err(format!("ELF machine {machine} is not eBPF ({EM_BPF})"));
    }
    Ok(())
}

/// The workspace root, from the directory of a member crate's manifest.
pub fn workspace_root(member_manifest_dir: &Path) -> PathBuf {
    member_manifest_dir.parent().map(Path::to_path_buf).unwrap_or_else(|| member_manifest_dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_an_ebpf_object() {
        assert!(check_object(b"").is_err());
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        assert!(check_object(&elf).unwrap_err().contains("not eBPF"));
        elf[18..20].copy_from_slice(&EM_BPF.to_le_bytes());
        assert_eq!(check_object(&elf), Ok(()));
    }
}
