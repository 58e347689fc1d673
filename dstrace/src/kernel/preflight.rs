//! What must hold before dstrace loads anything, each checked with a one-line
//! error that names the cause and the fix.

use std::path::Path;

use anyhow::{bail, Result};

/// The kernel's BTF, which the loader reads `task_struct` offsets from and which
/// BTF-enabled tracepoints need.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Checks privileges and BTF, and lifts the locked-memory limit where that is
/// still needed.
pub fn check() -> Result<()> {
    check_capabilities(effective_capabilities()?)?;
    if !Path::new(VMLINUX_BTF).exists() {
        bail!(
            "the kernel has no BTF ({VMLINUX_BTF} is missing): dstrace needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (Linux 5.8 or later)"
        );
    }
    raise_memlock_limit();
    Ok(())
}

/// Fails unless `caps` (a `CapEff` bit set) allows loading tracing programs.
pub fn check_capabilities(caps: u64) -> Result<()> {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect();
    bail!(
        "permission denied: loading eBPF programs needs root, or CAP_BPF and CAP_PERFMON \
         (missing: {}); run it with sudo, or use `dstrace snapshot`, which needs neither",
        missing.join(", ")
    )
}

/// Whether this process may load tracing programs (root, or CAP_BPF and
/// CAP_PERFMON).
pub fn may_load_bpf() -> bool {
    effective_capabilities().is_ok_and(|caps| check_capabilities(caps).is_ok())
}

/// The effective capability set of this process, from `/proc/self/status`.
fn effective_capabilities() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_cap_eff(&status).ok_or_else(|| anyhow::anyhow!("/proc/self/status has no readable CapEff line"))
}

/// The `CapEff:` bit set of a `/proc/PID/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

/// Kernels before 5.11 charge BPF maps to `RLIMIT_MEMLOCK`; later ones charge the
/// memory cgroup and ignore it. Raising it can fail without CAP_SYS_RESOURCE, which
/// only matters on old kernels, where the load error then says so.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a valid pointer to an initialized rlimit that outlives the call.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        assert!(check_capabilities(u64::MAX).is_ok());
        assert!(check_capabilities(1 << CAP_SYS_ADMIN).is_ok());
        assert!(check_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
        let err = check_capabilities(1 << CAP_BPF).unwrap_err().to_string();
        assert!(err.contains("missing: CAP_PERFMON") && err.contains("sudo"), "{err}");
        let err = check_capabilities(0).unwrap_err().to_string();
        assert!(err.contains("missing: CAP_BPF, CAP_PERFMON"), "{err}");
    }

    #[test]
    fn cap_eff_line() {
        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name:\tcat\n"), None);
    }
}
