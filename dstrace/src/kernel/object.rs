//! The embedded eBPF object, and what every load of it shares: the `CONFIG` global
//! for the running kernel, the `SYSCALL_ARGS` table, the maps taken out by name and
//! the counters. The [`crate::kernel::loader::Tracer`] (every program) and the
//! [`crate::kernel::iter::Looker`] (the task iterators only) both load it.

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    Ebpf,
};
use dstrace_common::{names, syscall_args, Config, Counter, FuseOffsets, LockOffsets, Offsets, VfsOffsets};

use crate::kernel::{btf::KernelLayout, syscalls};

/// The eBPF object, built by `dstrace/build.rs` (never empty: the build checks it).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dstrace.bpf.o"));

/// The `CONFIG` global for this kernel, no option and no program enabled yet: the
/// task offsets, dstrace's own process, and every group of offsets the kernel's BTF
/// has (a group it lacks stays unset); the caller sets the `CONFIG_*` flags.
pub fn kernel_config(layout: &KernelLayout) -> Config {
    Config {
        task_pid_offset: layout.task_pid_offset,
        task_state_offset: layout.task_state_offset,
        task_flags_offset: layout.task_flags_offset,
        self_tgid: own_tgid(),
        offsets: layout.target_offsets.clone().unwrap_or(Offsets::UNSET),
        vfs: layout.vfs_offsets.clone().unwrap_or(VfsOffsets::UNSET),
        locks: layout.lock_offsets.clone().unwrap_or(LockOffsets::UNSET),
        fuse: layout.fuse_offsets.clone().unwrap_or(FuseOffsets::UNSET),
        iter: layout.iter.offsets,
        ..Config::UNSET
    }
}

/// dstrace's own process id as the kernel side and `/proc` name it: the target
/// of `/proc/self`, which `/proc` gives in the pid namespace it was mounted for
/// (the host's: the ids the eBPF programs see). `std::process::id()` is the id
/// in dstrace's own pid namespace: started in a container or by `unshare
/// --pid`, that is another number, and its own waits would be listed as the
/// machine's.
pub fn own_tgid() -> u32 {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|target| target.to_str()?.parse().ok())
        .unwrap_or_else(std::process::id)
}

/// Describes the syscalls whose arguments name a file (`crate::kernel::syscalls`).
pub fn fill_syscall_args(ebpf: &mut Ebpf) -> Result<()> {
    let map = names::MAP_SYSCALL_ARGS;
    let mut args: Array<_, u8> =
        Array::try_from(ebpf.map_mut(map).ok_or_else(|| anyhow!("the eBPF object has no map {map}"))?)?;
    for syscall in syscalls::TABLE {
        args.set(syscall.nr, syscall_args(syscall.path_arg, syscall.fd_arg), 0)
            .with_context(|| format!("cannot describe the syscall {}", syscall.name))?;
    }
    Ok(())
}

/// Takes map `name` out of the object, for userspace to own.
pub fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
}

/// The sum over CPUs of every counter of `COUNTERS`, in [`Counter::ALL`] order.
pub fn counters(map: &PerCpuArray<MapData, u64>) -> Result<Vec<(Counter, u64)>> {
    Counter::ALL
        .iter()
        .map(|&counter| {
            let values = map.get(&(counter as u32), 0)?;
            Ok((counter, values.iter().sum()))
        })
        .collect()
}
