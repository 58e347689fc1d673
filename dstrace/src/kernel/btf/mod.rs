//! What the eBPF side must know about the running kernel, read from its BTF at
//! start-up: no kernel struct offset is compiled into dstrace.

mod types;

use anyhow::{anyhow, bail, Context as _, Result};

use self::types::{Btf, Kind, Type};

use dstrace_common::{FuseOffsets, IterOffsets, LockOffsets, Offsets, VfsOffsets, NO_OFFSET};

use crate::kernel::preflight::VMLINUX_BTF;

/// Offsets and signatures of the running kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// Byte offset of `task_struct.pid`.
    pub task_pid_offset: u32,
    /// Byte offset of `task_struct.__state` (`state` before Linux 5.14).
    pub task_state_offset: u32,
    /// Byte offset of `task_struct.flags`.
    pub task_flags_offset: u32,
    /// Whether `sched_switch` passes `prev_state` as an argument (Linux 5.18+).
    pub sched_switch_has_state_arg: bool,
    /// Offsets to read what a syscall names, or why they are unknown.
    pub target_offsets: Result<Offsets, String>,
    /// Offsets to name a file's mount and a path walk, or why they are unknown.
    pub vfs_offsets: Result<VfsOffsets, String>,
    /// Offsets to name a lock's owner and inode, or why they are unknown.
    pub lock_offsets: Result<LockOffsets, String>,
    /// Whether the `lock:contention_begin`/`_end` tracepoints exist (Linux 5.19+).
    pub has_lock_tracepoints: bool,
    /// Whether the kernel has the `sunrpc` tracepoints (built in, the module's BTF
    /// loaded, or, for a module without BTF as on 5.10, listed in tracefs).
    pub has_sunrpc: bool,
    /// Whether `d_alloc_parallel` and `__d_lookup_unhash_wake` can be hooked (6.x).
    pub has_dlookup_functions: bool,
    /// Offsets of FUSE requests and connections (from vmlinux, or from the FUSE
    /// module's BTF), or why there are none.
    pub fuse_offsets: Result<FuseOffsets, String>,
    /// Whether the `fuse_request_send`/`_end` tracepoints exist (6.13+, FUSE built in).
    pub has_fuse_tracepoints: bool,
    /// What the task iterator needs.
    pub iter: IterLayout,
}

/// What the task iterator programs need of the running kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IterLayout {
    /// Whether the kernel has `iter/task` and `iter/task_file` (5.8+).
    pub has_task_iterators: bool,
    /// Whether it has `bpf_get_task_stack` (5.9+).
    pub has_get_task_stack: bool,
    /// Whether it has `bpf_task_pt_regs` (5.15+).
    pub has_task_pt_regs: bool,
    /// The offsets only the iterator reads ([`NO_OFFSET`] where missing).
    pub offsets: IterOffsets,
    /// Where the FUSE types were found, or why they were not.
    pub fuse_types: Result<FuseTypes, String>,
}

/// Where the kernel's FUSE types are described.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuseTypes {
    /// In vmlinux: FUSE is built in.
    BuiltIn,
    /// In the FUSE module's split BTF, `/sys/kernel/btf/fuse`.
    Module,
}

/// The FUSE module's BTF, split against vmlinux's.
pub const FUSE_MODULE_BTF: &str = "/sys/kernel/btf/fuse";

/// The running kernel's layout, its BTF as aya relocates and attaches the
/// programs with (aya's own parse, on a thread of its own while the layout is
/// read), and the loader to load them with, its own BTF already dropped.
///
/// aya's loader parses the kernel's BTF when it is made, a parse it drops again
/// once given this one: it is made first and emptied at once, so that the two
/// parses never hold memory at the same time (the start-up peak: some 15 MiB
/// each on a 6.x kernel).
pub fn running_kernel<'a>() -> Result<(KernelLayout, aya::Btf, aya::EbpfLoader<'a>)> {
    let aya_side = || {
        let mut loader = aya::EbpfLoader::new();
        loader.btf(None);
        (loader, aya::Btf::from_sys_fs())
    };
    std::thread::scope(|scope| {
        let aya_thread = std::thread::Builder::new().name("btf".into()).spawn_scoped(scope, aya_side).ok();
        let layout = KernelLayout::from_running_kernel();
        let (loader, btf) = match aya_thread.map(std::thread::ScopedJoinHandle::join) {
            Some(Ok(side)) => side,
            _ => aya_side(),
        };
        Ok((layout?, btf.context("cannot read the kernel's BTF")?, loader))
    })
}

impl KernelLayout {
    /// Reads the layout from `/sys/kernel/btf/vmlinux`.
    pub fn from_running_kernel() -> Result<Self> {
        let bytes = std::fs::read(VMLINUX_BTF).map_err(|err| anyhow!("cannot read {VMLINUX_BTF}: {err}"))?;
        let btf = Btf::from_bytes(bytes).map_err(|err| anyhow!("cannot read {VMLINUX_BTF}: {err:#}"))?;
        Self::from_btf(&btf)
    }

    /// Reads the layout from parsed BTF.
    pub fn from_btf(btf: &Btf<'static>) -> Result<Self> {
        let task_pid_offset = member_offset(btf, "task_struct", &["pid"])?;
        let task_state_offset = member_offset(btf, "task_struct", &["__state", "state"])?;
        let task_flags_offset = member_offset(btf, "task_struct", &["flags"])?;
        // typedef void (*btf_trace_sched_switch)(void *__data, bool preempt,
        //     struct task_struct *prev, struct task_struct *next, unsigned int prev_state);
        let params = tracepoint_params(btf, "sched_switch").map_err(|err| {
            anyhow!(
                "the kernel's BTF does not describe the sched_switch tracepoint ({err}): dstrace needs \
                 BTF-enabled tracepoints, Linux 5.8 or later with CONFIG_DEBUG_INFO_BTF=y"
            )
        })?;
        let fuse = fuse_btf(btf);
        let fuse_btf = match &fuse {
            Ok((_, Some(module))) => module,
            _ => btf,
        };
        Ok(KernelLayout {
            task_pid_offset,
            task_state_offset,
            task_flags_offset,
            sched_switch_has_state_arg: params >= 5,
            target_offsets: target_offsets(btf).map_err(|err| format!("{err:#}")),
            vfs_offsets: vfs_offsets(btf).map_err(|err| format!("{err:#}")),
            lock_offsets: lock_offsets(btf).map_err(|err| format!("{err:#}")),
            has_lock_tracepoints: tracepoint_params(btf, "contention_begin").is_ok()
                && tracepoint_params(btf, "contention_end").is_ok(),
            has_sunrpc: tracepoint_params(btf, "rpc_task_begin").is_ok()
                || std::path::Path::new("/sys/kernel/btf/sunrpc").exists()
                || crate::kernel::tracefs::has_group("sunrpc"),
            has_dlookup_functions: has_function(btf, "d_alloc_parallel")
                && has_function(btf, "__d_lookup_unhash_wake"),
            fuse_offsets: match &fuse {
                Ok(_) => fuse_offsets(fuse_btf).map_err(|err| format!("{err:#}")),
                Err(why) => Err(why.clone()),
            },
            has_fuse_tracepoints: tracepoint_params(btf, "fuse_request_send").is_ok()
                && tracepoint_params(btf, "fuse_request_end").is_ok(),
            iter: IterLayout {
                has_task_iterators: has_function(btf, "bpf_iter_task")
                    && has_function(btf, "bpf_iter_task_file"),
                has_get_task_stack: enum_value(btf, "bpf_func_id", "BPF_FUNC_get_task_stack").is_some(),
                has_task_pt_regs: enum_value(btf, "bpf_func_id", "BPF_FUNC_task_pt_regs").is_some(),
                offsets: iter_offsets(btf, fuse_btf),
                fuse_types: fuse.map(|(types, _)| types),
            },
        })
    }
}

/// The offsets the lock contention programs need to name an owner and an inode.
pub fn lock_offsets(btf: &Btf) -> Result<LockOffsets> {
    Ok(LockOffsets {
        rwsem_owner: member_offset(btf, "rw_semaphore", &["owner"])?,
        // PREEMPT_RT mutexes are rt-mutexes, whose owner is elsewhere: then only
        // rwsem owners are read.
        mutex_owner: member_offset(btf, "mutex", &["owner"]).unwrap_or(u32::MAX),
        task_tgid: member_offset(btf, "task_struct", &["tgid"])?,
        task_comm: member_offset(btf, "task_struct", &["comm"])?,
        inode_rwsem: member_offset(btf, "inode", &["i_rwsem"])?,
        sb_root: member_offset(btf, "super_block", &["s_root"])?,
        dentry_sb: member_offset(btf, "dentry", &["d_sb"])?,
        dentry_flags: member_offset(btf, "dentry", &["d_flags"])?,
        dentry_parent: member_offset(btf, "dentry", &["d_parent"])?,
        dentry_name: member_offset(btf, "dentry", &["d_name"])?,
        qstr_hash_len: member_offset(btf, "qstr", &["hash_len"])?,
        dcache_par_lookup: dcache_par_lookup(btf),
    })
}

/// `DCACHE_PAR_LOOKUP`: from the `dentry_flags` enum where the kernel has one (its
/// BTF then says it); before that a `#define`, 0x10000000 from 4.7 to 6.x.
fn dcache_par_lookup(btf: &Btf) -> u32 {
    const DEFINE: u32 = 0x1000_0000;
    enum_value(btf, "dentry_flags", "DCACHE_PAR_LOOKUP").unwrap_or(DEFINE)
}

/// The value of `member` of the enum `name`, if the kernel's BTF has both.
pub fn enum_value(btf: &Btf, name: &str, member: &str) -> Option<u32> {
    btf.named(name)
        .iter()
        .find_map(|ty| ty.values().find_map(|(value, val)| (value == member).then_some(val)))
}

/// Whether the kernel has a function of this name that fentry can attach to.
pub fn has_function(btf: &Btf, name: &str) -> bool {
    btf.named(name).iter().any(|ty| ty.kind == Kind::Func)
}

/// The offsets the kernel side needs to read a task's syscall and the file behind a
/// file descriptor, for this machine's architecture.
pub fn target_offsets(btf: &Btf) -> Result<Offsets> {
    let (regs_syscall_nr, regs_args) = syscall_registers(btf)?;
    Ok(Offsets {
        regs_syscall_nr,
        regs_args,
        task_files: member_offset(btf, "task_struct", &["files"])?,
        files_fdt: member_offset(btf, "files_struct", &["fdt"])?,
        fdt_max_fds: member_offset(btf, "fdtable", &["max_fds"])?,
        fdt_fd: member_offset(btf, "fdtable", &["fd"])?,
        file_inode: member_offset(btf, "file", &["f_inode"])?,
        inode_sb: member_offset(btf, "inode", &["i_sb"])?,
        inode_ino: member_offset(btf, "inode", &["i_ino"])?,
        sb_dev: member_offset(btf, "super_block", &["s_dev"])?,
        _pad: 0,
    })
}

/// The offsets that name a file's mount and a path walk by kernel identity.
pub fn vfs_offsets(btf: &Btf) -> Result<VfsOffsets> {
    Ok(VfsOffsets {
        file_path_mnt: member_path_offset(btf, "file", &["f_path", "mnt"])?,
        mount_mnt: member_offset(btf, "mount", &["mnt"])?,
        mount_mnt_id: member_offset(btf, "mount", &["mnt_id"])?,
        vfsmount_sb: member_offset(btf, "vfsmount", &["mnt_sb"])?,
        task_nameidata: member_offset(btf, "task_struct", &["nameidata"])?,
        nd_path_mnt: member_path_offset(btf, "nameidata", &["path", "mnt"])?,
        nd_path_dentry: member_path_offset(btf, "nameidata", &["path", "dentry"])?,
        nd_last_name: member_path_offset(btf, "nameidata", &["last", "name"])?,
        nd_name: member_offset(btf, "nameidata", &["name"])?,
        filename_name: member_offset(btf, "filename", &["name"])?,
        dentry_inode: member_offset(btf, "dentry", &["d_inode"])?,
        _pad: 0,
    })
}

/// The offsets only the task iterator reads, field by field ([`NO_OFFSET`] where
/// this kernel lacks one); `fuse` is the BTF that describes the FUSE types (vmlinux,
/// or the module's split BTF).
pub fn iter_offsets(btf: &Btf, fuse: &Btf) -> IterOffsets {
    let field =
        |btf: &Btf, strukt: &str, path: &[&str]| member_path_offset(btf, strukt, path).unwrap_or(NO_OFFSET);
    let task = |path: &[&str]| field(btf, "task_struct", path);
    let cpu = task(&["thread_info", "cpu"]);
    let waiting_for_read = enum_value(btf, "rwsem_waiter_type", "RWSEM_WAITING_FOR_READ");
    IterOffsets {
        task_exec_start: task(&["se", "exec_start"]),
        task_cpu: if cpu != NO_OFFSET { cpu } else { task(&["cpu"]) },
        task_blocker: task(&["blocker"]),
        task_blocker_mutex: task(&["blocker_mutex"]),
        task_cgroups: task(&["cgroups"]),
        css_set_dfl_cgrp: field(btf, "css_set", &["dfl_cgrp"]),
        cgroup_kn: field(btf, "cgroup", &["kn"]),
        kernfs_node_id: field(btf, "kernfs_node", &["id"]),
        inode_mode: field(btf, "inode", &["i_mode"]),
        inode_rdev: field(btf, "inode", &["i_rdev"]),
        rwsem_count: field(btf, "rw_semaphore", &["count"]),
        sem_last_holder: field(btf, "semaphore", &["last_holder"]),
        file_private_data: field(btf, "file", &["private_data"]),
        fud_fc: field(fuse, "fuse_dev", &["fc"]),
        fc_connected: field(fuse, "fuse_conn", &["connected"]),
        fc_num_waiting: field(fuse, "fuse_conn", &["num_waiting"]),
        fc_iq_pending: field(fuse, "fuse_conn", &["iq", "pending"]),
        req_list: field(fuse, "fuse_req", &["list"]),
        req_pid: field(fuse, "fuse_req", &["in", "h", "pid"]),
        req_create_time: field(fuse, "fuse_req", &["create_time"]),
        rwsem_wait_list: field(btf, "rw_semaphore", &["wait_list"]),
        waiter_list: field(btf, "rwsem_waiter", &["list"]),
        waiter_task: field(btf, "rwsem_waiter", &["task"]),
        // Of no use without the value that says a waiter reads.
        waiter_type: if waiting_for_read.is_some() {
            field(btf, "rwsem_waiter", &["type"])
        } else {
            NO_OFFSET
        },
        waiting_for_read: waiting_for_read.unwrap_or(NO_OFFSET),
        fud_processing: pointer_member_offset(fuse, "fuse_dev", &["pq", "processing"]).unwrap_or(NO_OFFSET),
    }
}

/// Where the FUSE types are: vmlinux when FUSE is built in, else the module's split
/// BTF (read against vmlinux's, which it extends), or why neither.
fn fuse_btf<'a>(vmlinux: &'a Btf<'static>) -> Result<(FuseTypes, Option<Btf<'a>>), String> {
    if has_struct(vmlinux, "fuse_conn") {
        return Ok((FuseTypes::BuiltIn, None));
    }
    if !std::path::Path::new(FUSE_MODULE_BTF).exists() {
        return Err(if std::path::Path::new("/sys/module/fuse").exists() {
            format!(
                "the FUSE module has no BTF ({FUSE_MODULE_BTF} is missing: module BTF needs Linux 5.11 with \
                 CONFIG_DEBUG_INFO_BTF_MODULES)"
            )
        } else {
            format!("FUSE is a module that is not loaded ({FUSE_MODULE_BTF} is missing)")
        });
    }
    let bytes =
        std::fs::read(FUSE_MODULE_BTF).map_err(|err| format!("cannot read {FUSE_MODULE_BTF}: {err}"))?;
    let module = Btf::from_split_bytes(bytes, vmlinux)
        .map_err(|err| format!("cannot read {FUSE_MODULE_BTF}: {err:#}"))?;
    Ok((FuseTypes::Module, Some(module)))
}

/// Whether the kernel's BTF has a struct of this name.
fn has_struct(btf: &Btf, name: &str) -> bool {
    btf.named(name).iter().any(|ty| ty.kind == Kind::Struct)
}

/// Where `struct pt_regs` keeps the syscall number and its six arguments.
fn syscall_registers(btf: &Btf) -> Result<(u32, [u32; 6])> {
    let field = |name: &str| member_offset(btf, "pt_regs", &[name]);
    match std::env::consts::ARCH {
        "x86_64" => Ok((
            field("orig_ax")?,
            [field("di")?, field("si")?, field("dx")?, field("r10")?, field("r8")?, field("r9")?],
        )),
        "aarch64" => {
            // The first argument is also in orig_x0; regs[0] is overwritten by the
            // return value only when the syscall returns.
            let regs = field("regs")?;
            Ok((field("syscallno")?, [0, 1, 2, 3, 4, 5].map(|i| regs + 8 * i)))
        }
        arch => bail!("reading syscall arguments is not supported on {arch}"),
    }
}

/// Byte offset of the first of `names` found in `struct strukt`, looking into
/// anonymous struct and union members as C does.
pub fn member_offset(btf: &Btf, strukt: &str, names: &[&str]) -> Result<u32> {
    let ty = struct_named(btf, strukt)?;
    for name in names {
        if let Some((bits, _)) = find_member(btf, &ty, name, 0)? {
            if bits % 8 != 0 {
                bail!("{strukt}.{name} is a bit field");
            }
            return Ok(bits / 8);
        }
    }
    bail!("BTF: struct {strukt} has no member {}", names.join(" or "))
}

/// The struct named `strukt`.
fn struct_named<'a>(btf: &'a Btf, strukt: &str) -> Result<Type<'a>> {
    btf.named(strukt)
        .into_iter()
        .find(|ty| ty.kind == Kind::Struct)
        .ok_or_else(|| anyhow!("BTF has no struct {strukt}"))
}

/// Bit offset of `name` in `ty` and the member's type id, searching anonymous
/// members too.
fn find_member(btf: &Btf, ty: &Type<'_>, name: &str, base: u32) -> Result<Option<(u32, u32)>> {
    for member in ty.members() {
        if member.name == name {
            return Ok(Some((base + member.bit_offset, member.type_id)));
        }
        if member.name.is_empty() {
            if let Ok(inner) = btf.ty(member.type_id) {
                if matches!(inner.kind, Kind::Struct | Kind::Union) {
                    if let Some(found) = find_member(btf, &inner, name, base + member.bit_offset)? {
                        return Ok(Some(found));
                    }
                }
            }
        }
    }
    Ok(None)
}

/// Byte offset of a member reached through nested structs, e.g.
/// `fuse_req` + `["in", "h", "opcode"]` for `req->in.h.opcode`.
pub fn member_path_offset(btf: &Btf, strukt: &str, path: &[&str]) -> Result<u32> {
    member_path(btf, strukt, path).map(|(offset, _)| offset)
}

/// As [`member_path_offset`], for a member that must be a pointer (an error if BTF
/// says it is anything else: an array, a struct).
pub fn pointer_member_offset(btf: &Btf, strukt: &str, path: &[&str]) -> Result<u32> {
    let (offset, type_id) = member_path(btf, strukt, path)?;
    match unqualified(btf, type_id)? {
        Some(ty) if ty.kind == Kind::Ptr => Ok(offset),
        Some(other) => bail!("BTF: {strukt}.{} is a {}, not a pointer", path.join("."), other.kind.name()),
        None => bail!("BTF: {strukt}.{}: too many levels of typedefs", path.join(".")),
    }
}

/// The byte offset and the type id of a member reached through nested structs.
fn member_path(btf: &Btf, strukt: &str, path: &[&str]) -> Result<(u32, u32)> {
    let mut ty = struct_named(btf, strukt)?;
    let mut bits = 0;
    let mut last = 0;
    for (i, name) in path.iter().enumerate() {
        let (offset, type_id) = find_member(btf, &ty, name, 0)?
            .ok_or_else(|| anyhow!("BTF: {strukt}.{} is missing", path.join(".")))?;
        bits += offset;
        last = type_id;
        if i + 1 < path.len() {
            ty = match unqualified(btf, type_id)? {
                Some(next) if matches!(next.kind, Kind::Struct | Kind::Union) => next,
                _ => bail!("BTF: {strukt}.{} is not a struct", path[..=i].join(".")),
            };
        }
    }
    if bits % 8 != 0 {
        bail!("{strukt}.{} is a bit field", path.join("."));
    }
    Ok((bits / 8, last))
}

/// The type a type id names, through typedefs and qualifiers (`None` past eight of
/// them).
fn unqualified<'a>(btf: &'a Btf, mut type_id: u32) -> Result<Option<Type<'a>>> {
    for _ in 0..8 {
        let ty = btf.ty(type_id)?;
        match ty.kind {
            Kind::Typedef | Kind::Const | Kind::Volatile => type_id = ty.type_id,
            _ => return Ok(Some(ty)),
        }
    }
    Ok(None)
}

/// The offsets the FUSE request programs need.
pub fn fuse_offsets(btf: &Btf) -> Result<FuseOffsets> {
    Ok(FuseOffsets {
        req_opcode: member_path_offset(btf, "fuse_req", &["in", "h", "opcode"])?,
        req_unique: member_path_offset(btf, "fuse_req", &["in", "h", "unique"])?,
        req_nodeid: member_path_offset(btf, "fuse_req", &["in", "h", "nodeid"])?,
        req_fm: member_offset(btf, "fuse_req", &["fm"])?,
        fm_fc: member_offset(btf, "fuse_mount", &["fc"])?,
        fc_dev: member_offset(btf, "fuse_conn", &["dev"])?,
    })
}

/// Number of parameters of the probe function of a tracepoint, `__data` included,
/// from its `btf_trace_<name>` typedef.
pub fn tracepoint_params(btf: &Btf, tracepoint: &str) -> Result<usize> {
    let typedef = format!("btf_trace_{tracepoint}");
    let mut ty = *btf.named(&typedef).first().ok_or_else(|| anyhow!("BTF has no {typedef}"))?;
    for _ in 0..4 {
        ty = match ty.kind {
            Kind::FuncProto => return Ok(ty.params()),
            Kind::Typedef | Kind::Ptr | Kind::Const => btf.ty(ty.type_id)?,
            _ => bail!("{typedef} is a {}, not a function pointer", ty.kind.name()),
        };
    }
    bail!("{typedef}: too many levels of indirection")
}

#[cfg(test)]
impl KernelLayout {
    /// A kernel with task offsets and nothing else, for tests.
    pub(crate) fn sample() -> KernelLayout {
        KernelLayout {
            task_pid_offset: 2000,
            task_state_offset: 24,
            task_flags_offset: 44,
            sched_switch_has_state_arg: true,
            target_offsets: Err("not in this test".into()),
            vfs_offsets: Err("not in this test".into()),
            lock_offsets: Err("not in this test".into()),
            has_lock_tracepoints: false,
            has_sunrpc: false,
            has_dlookup_functions: false,
            fuse_offsets: Err("not in this test".into()),
            has_fuse_tracepoints: false,
            iter: IterLayout {
                has_task_iterators: false,
                has_get_task_stack: false,
                has_task_pt_regs: false,
                offsets: IterOffsets::UNSET,
                fuse_types: Err("not in this test".into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF, where there is one (every machine dstrace runs on).
    fn vmlinux() -> Option<Btf<'static>> {
        Btf::from_bytes(std::fs::read(VMLINUX_BTF).ok()?).ok()
    }

    #[test]
    fn reads_task_struct_layout_of_running_kernel() {
        let Some(btf) = vmlinux() else {
            assert!(std::env::var_os("CI").is_none(), "{VMLINUX_BTF} is missing on a CI machine");
            eprintln!("skipped: {VMLINUX_BTF} is missing");
            return;
        };
        let layout = KernelLayout::from_btf(&btf).unwrap();
        assert!(layout.task_pid_offset > 0 && layout.task_pid_offset < 16384);
        assert!(layout.task_state_offset < layout.task_pid_offset);
        assert!(member_offset(&btf, "task_struct", &["no_such_member"]).is_err());
        assert!(layout.lock_offsets.is_ok() && layout.has_lock_tracepoints, "Linux 6.18 has both");
        assert_eq!(layout.lock_offsets.as_ref().unwrap().dcache_par_lookup, 1 << 24, "6.18's enum value");
        assert!(layout.has_dlookup_functions);
        let fuse = layout.fuse_offsets.clone().unwrap();
        assert_eq!(fuse.req_unique, fuse.req_opcode + 4, "fuse_in_header: len, opcode, unique");
        let offsets = layout.target_offsets.unwrap();
        assert!(offsets.regs_args.iter().all(|&o| o < 512) && offsets.sb_dev > 0);
        let vfs = layout.vfs_offsets.unwrap();
        assert!(vfs.nd_path_dentry == vfs.nd_path_mnt + 8, "struct path: mnt, dentry");
        let iter = &layout.iter;
        assert!(iter.has_task_iterators && iter.has_get_task_stack && iter.has_task_pt_regs);
        assert_eq!(iter.fuse_types, Ok(FuseTypes::BuiltIn), "FUSE is built in here");
        let offsets = iter.offsets;
        for (name, offset) in [
            ("blocker", offsets.task_blocker),
            ("cpu", offsets.task_cpu),
            ("fuse_req.create_time", offsets.req_create_time),
            ("fuse_conn.iq.pending", offsets.fc_iq_pending),
            ("semaphore.last_holder", offsets.sem_last_holder),
            ("rw_semaphore.wait_list", offsets.rwsem_wait_list),
            ("rwsem_waiter.task", offsets.waiter_task),
            ("rwsem_waiter.type", offsets.waiter_type),
            ("fuse_dev.pq.processing (a pointer)", offsets.fud_processing),
        ] {
            assert_ne!(offset, NO_OFFSET, "6.18 has {name}");
        }
        assert_eq!(offsets.task_blocker_mutex, NO_OFFSET, "6.15 only");
        assert_eq!(offsets.waiting_for_read, 1, "enum rwsem_waiter_type: FOR_WRITE, FOR_READ");
        assert_eq!(offsets.waiter_list, 0, "the list first: list_first_entry of a struct rwsem_waiter");
        assert!(pointer_member_offset(&btf, "fuse_dev", &["pq", "connected"]).is_err(), "not a pointer");
    }
}
