//! Settings the kernel side reads: the `CONFIG` global (its flags and the kernel
//! struct offsets userspace resolves from the running kernel's BTF or tracefs) and
//! the `SYSCALL_ARGS` entries.
//!
//! Each group of offsets is filled wherever the running kernel's BTF has every field
//! of the group, whether or not a live program uses it (the task iterator reads them
//! too); a group this kernel lacks is left at its `UNSET` value, [`NO_OFFSET`] in
//! every field. The `CONFIG_*` flags say which live programs use which group.

/// An offset this kernel does not have (a field, or a whole group of offsets,
/// unknown): the iterator programs skip what needs it.
pub const NO_OFFSET: u32 = u32::MAX;

/// `Config::flags`: also record `TASK_IDLE` waits (idle kernel threads), live and in
/// the task iterator's pass of tasks in D.
pub const CONFIG_INCLUDE_IDLE: u32 = 1 << 0;
/// `Config::flags`: also record the user stack of each wait.
pub const CONFIG_USER_STACKS: u32 = 1 << 1;
/// `Config::flags`: only tasks whose tgid is in `FILTER_TGIDS`.
pub const CONFIG_FILTER_TGID: u32 = 1 << 2;
/// `Config::flags`: only tasks whose tid is in `FILTER_TIDS`.
pub const CONFIG_FILTER_TID: u32 = 1 << 3;
/// `Config::flags`: only tasks whose cgroup (v2 id) is in `FILTER_CGROUPS`.
pub const CONFIG_FILTER_CGROUP: u32 = 1 << 4;
/// `Config::flags`: only tasks whose comm is in `FILTER_COMMS`.
pub const CONFIG_FILTER_COMM: u32 = 1 << 5;

/// `Config::flags`: `Config::offsets` are set: record what the syscall in
/// progress names (Linux 5.18+ program only: it needs `bpf_task_pt_regs`).
pub const CONFIG_SYSCALL_TARGET: u32 = 1 << 6;

/// `Config::flags`: `Config::vfs` and `Config::offsets` are set: record the path walk
/// of a task entering D (both `sched_switch` programs) and, with
/// [`CONFIG_SYSCALL_TARGET`], the mount ID of its file descriptor's file.
pub const CONFIG_VFS: u32 = 1 << 10;

/// `Config::flags`: `Config::locks` are set: the lock contention programs name
/// the lock's owner and, for an inode's `i_rwsem`, the inode.
pub const CONFIG_LOCK_OWNERS: u32 = 1 << 7;

/// Byte offsets for the lock contention programs, from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockOffsets {
    /// `rw_semaphore.owner`.
    pub rwsem_owner: u32,
    /// `mutex.owner`.
    pub mutex_owner: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.comm`.
    pub task_comm: u32,
    /// `inode.i_rwsem`.
    pub inode_rwsem: u32,
    /// `super_block.s_root`.
    pub sb_root: u32,
    /// `dentry.d_sb`.
    pub dentry_sb: u32,
    /// `dentry.d_flags`.
    pub dentry_flags: u32,
    /// `dentry.d_parent`.
    pub dentry_parent: u32,
    /// `dentry.d_name` (a `qstr`).
    pub dentry_name: u32,
    /// `qstr.hash_len`.
    pub qstr_hash_len: u32,
    /// The value of `DCACHE_PAR_LOOKUP` (a dentry being looked up).
    pub dcache_par_lookup: u32,
}
const _: () = assert!(core::mem::size_of::<LockOffsets>() == 48);

impl LockOffsets {
    /// Unknown.
    pub const UNSET: LockOffsets = LockOffsets {
        rwsem_owner: NO_OFFSET,
        mutex_owner: NO_OFFSET,
        task_tgid: NO_OFFSET,
        task_comm: NO_OFFSET,
        inode_rwsem: NO_OFFSET,
        sb_root: NO_OFFSET,
        dentry_sb: NO_OFFSET,
        dentry_flags: NO_OFFSET,
        dentry_parent: NO_OFFSET,
        dentry_name: NO_OFFSET,
        qstr_hash_len: NO_OFFSET,
        dcache_par_lookup: 0,
    };
}

/// `Config::flags`: `Config::fuse` is set: the FUSE request programs are attached.
pub const CONFIG_FUSE_REQUESTS: u32 = 1 << 8;

/// Byte offsets for the FUSE request programs, from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuseOffsets {
    /// `fuse_req.in.h.opcode`.
    pub req_opcode: u32,
    /// `fuse_req.in.h.unique`.
    pub req_unique: u32,
    /// `fuse_req.in.h.nodeid`.
    pub req_nodeid: u32,
    /// `fuse_req.fm`.
    pub req_fm: u32,
    /// `fuse_mount.fc`.
    pub fm_fc: u32,
    /// `fuse_conn.dev`.
    pub fc_dev: u32,
}
const _: () = assert!(core::mem::size_of::<FuseOffsets>() == 24);

impl FuseOffsets {
    /// Unknown.
    pub const UNSET: FuseOffsets = FuseOffsets {
        req_opcode: NO_OFFSET,
        req_unique: NO_OFFSET,
        req_nodeid: NO_OFFSET,
        req_fm: NO_OFFSET,
        fm_fc: NO_OFFSET,
        fc_dev: NO_OFFSET,
    };
}

/// `Config::flags`: `Config::rpc` is set: the sunrpc programs are attached.
pub const CONFIG_RPC: u32 = 1 << 9;

/// Where a field is in a sunrpc tracepoint's record: byte offsets read at start-up
/// from the event's `format` file in tracefs (`u32::MAX`: the event lacks it).
///
/// Classic tracepoints rather than BTF ones: their records are described by tracefs
/// on every kernel, including those whose sunrpc module has no BTF (Debian 5.10), and
/// they carry the strings (program and procedure names) already copied.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcOffsets {
    /// `task_id` (the RPC task's debug id, `tk_pid`) in each of the five events,
    /// in the order begin, request, transmit, timeout, end.
    pub task_id: [u32; 5],
    /// `client_id` (`cl_clid`) in each of the five events, in the same order.
    pub client_id: [u32; 5],
    /// `rpc_request.version`.
    pub request_version: u32,
    /// `rpc_request.progname` (a `__data_loc char[]`).
    pub request_progname: u32,
    /// `rpc_request.procname` (a `__data_loc char[]`).
    pub request_procname: u32,
    /// `xprt_transmit.xid`.
    pub transmit_xid: u32,
}
const _: () = assert!(core::mem::size_of::<RpcOffsets>() == 56);

impl RpcOffsets {
    /// Unknown.
    pub const UNSET: RpcOffsets = RpcOffsets {
        task_id: [u32::MAX; 5],
        client_id: [u32::MAX; 5],
        request_version: u32::MAX,
        request_progname: u32::MAX,
        request_procname: u32::MAX,
        transmit_xid: u32::MAX,
    };
}

/// Byte offsets of the kernel fields the kernel side reads to learn what a task's
/// syscall names, all from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// `pt_regs` field holding the syscall number (`orig_ax` on x86-64).
    pub regs_syscall_nr: u32,
    /// `pt_regs` fields holding the six syscall arguments.
    pub regs_args: [u32; 6],
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.max_fds`.
    pub fdt_max_fds: u32,
    /// `fdtable.fd`.
    pub fdt_fd: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `inode.i_sb`.
    pub inode_sb: u32,
    /// `inode.i_ino`.
    pub inode_ino: u32,
    /// `super_block.s_dev`.
    pub sb_dev: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Offsets>() == 64);

impl Offsets {
    /// Unknown.
    pub const UNSET: Offsets = Offsets {
        regs_syscall_nr: NO_OFFSET,
        regs_args: [NO_OFFSET; 6],
        task_files: NO_OFFSET,
        files_fdt: NO_OFFSET,
        fdt_max_fds: NO_OFFSET,
        fdt_fd: NO_OFFSET,
        file_inode: NO_OFFSET,
        inode_sb: NO_OFFSET,
        inode_ino: NO_OFFSET,
        sb_dev: NO_OFFSET,
        _pad: 0,
    };
}

/// Byte offsets of what names a task's file and its path walk by kernel identity
/// (mount IDs, the directory walked, the kernel's copy of the path), all from the
/// running kernel's BTF: `struct mount` and `struct nameidata` are private to fs/,
/// but described there.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VfsOffsets {
    /// `file.f_path.mnt` (the `vfsmount` a file was opened through).
    pub file_path_mnt: u32,
    /// `mount.mnt`: where the `vfsmount` sits in its `struct mount` (fs/mount.h).
    pub mount_mnt: u32,
    /// `mount.mnt_id`.
    pub mount_mnt_id: u32,
    /// `vfsmount.mnt_sb`.
    pub vfsmount_sb: u32,
    /// `task_struct.nameidata` (non-null during a path walk).
    pub task_nameidata: u32,
    /// `nameidata.path.mnt` (fs/namei.c).
    pub nd_path_mnt: u32,
    /// `nameidata.path.dentry`: the directory being walked.
    pub nd_path_dentry: u32,
    /// `nameidata.last.name`: the component being looked up.
    pub nd_last_name: u32,
    /// `nameidata.name` (a `struct filename *`).
    pub nd_name: u32,
    /// `filename.name`: the kernel's copy of the path.
    pub filename_name: u32,
    /// `dentry.d_inode`.
    pub dentry_inode: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<VfsOffsets>() == 48);

impl VfsOffsets {
    /// Unknown.
    pub const UNSET: VfsOffsets = VfsOffsets {
        file_path_mnt: NO_OFFSET,
        mount_mnt: NO_OFFSET,
        mount_mnt_id: NO_OFFSET,
        vfsmount_sb: NO_OFFSET,
        task_nameidata: NO_OFFSET,
        nd_path_mnt: NO_OFFSET,
        nd_path_dentry: NO_OFFSET,
        nd_last_name: NO_OFFSET,
        nd_name: NO_OFFSET,
        filename_name: NO_OFFSET,
        dentry_inode: NO_OFFSET,
        _pad: 0,
    };
}

/// Byte offsets only the task iterator reads, each [`NO_OFFSET`] where this kernel
/// lacks the field (a kernel too old for `task_struct.blocker`, FUSE a module whose
/// BTF is not loaded, ...). It reads [`Offsets`], [`VfsOffsets`], [`LockOffsets`] and
/// [`FuseOffsets`] too.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IterOffsets {
    /// `task_struct.se.exec_start`: when it last began to run (rq task clock, ns).
    pub task_exec_start: u32,
    /// `task_struct.thread_info.cpu` (5.16+), or `task_struct.cpu` before.
    pub task_cpu: u32,
    /// `task_struct.blocker` (6.16+, `CONFIG_DETECT_HUNG_TASK_BLOCKER`): the lock it
    /// waits for, its type in the low bits.
    pub task_blocker: u32,
    /// `task_struct.blocker_mutex` (6.15 only, same option): the mutex it waits for.
    pub task_blocker_mutex: u32,
    /// `task_struct.cgroups`.
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp` (its cgroup on the v2 hierarchy).
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn`.
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (the cgroup v2 id).
    pub kernfs_node_id: u32,
    /// `inode.i_mode`.
    pub inode_mode: u32,
    /// `inode.i_rdev`.
    pub inode_rdev: u32,
    /// `rw_semaphore.count` (0: not held).
    pub rwsem_count: u32,
    /// `semaphore.last_holder` (6.16+, `CONFIG_DETECT_HUNG_TASK_BLOCKER`).
    pub sem_last_holder: u32,
    /// `file.private_data` (a `/dev/fuse` file's `struct fuse_dev *`).
    pub file_private_data: u32,
    /// `fuse_dev.fc`.
    pub fud_fc: u32,
    /// `fuse_conn.connected`.
    pub fc_connected: u32,
    /// `fuse_conn.num_waiting`.
    pub fc_num_waiting: u32,
    /// `fuse_conn.iq.pending` (a `list_head` of `fuse_req.list`).
    pub fc_iq_pending: u32,
    /// `fuse_req.list`.
    pub req_list: u32,
    /// `fuse_req.in.h.pid`.
    pub req_pid: u32,
    /// `fuse_req.create_time` (jiffies, 6.14+).
    pub req_create_time: u32,
    /// `rw_semaphore.wait_list` (a `list_head` of `rwsem_waiter.list`; not on
    /// `PREEMPT_RT`, whose rwsems are rt-mutex based).
    pub rwsem_wait_list: u32,
    /// `rwsem_waiter.list` (kernel/locking/rwsem.c; the waiter lives on the
    /// waiting task's stack).
    pub waiter_list: u32,
    /// `rwsem_waiter.task`.
    pub waiter_task: u32,
    /// `rwsem_waiter.type` (an `enum rwsem_waiter_type`, 4 bytes).
    pub waiter_type: u32,
    /// The value of `RWSEM_WAITING_FOR_READ` (`enum rwsem_waiter_type`): a waiter
    /// of another type waits to write. [`NO_OFFSET`] with `waiter_type` when the
    /// enum is not in BTF.
    pub waiting_for_read: u32,
    /// `fuse_dev.pq.processing`: a pointer to the `FUSE_PQ_HASH_SIZE` list heads of
    /// the requests the daemon read from that file and has not answered
    /// ([`NO_OFFSET`] unless BTF says it is a pointer).
    pub fud_processing: u32,
}
const _: () = assert!(core::mem::size_of::<IterOffsets>() == 104);

impl IterOffsets {
    /// Unknown.
    pub const UNSET: IterOffsets = IterOffsets {
        task_exec_start: NO_OFFSET,
        task_cpu: NO_OFFSET,
        task_blocker: NO_OFFSET,
        task_blocker_mutex: NO_OFFSET,
        task_cgroups: NO_OFFSET,
        css_set_dfl_cgrp: NO_OFFSET,
        cgroup_kn: NO_OFFSET,
        kernfs_node_id: NO_OFFSET,
        inode_mode: NO_OFFSET,
        inode_rdev: NO_OFFSET,
        rwsem_count: NO_OFFSET,
        sem_last_holder: NO_OFFSET,
        file_private_data: NO_OFFSET,
        fud_fc: NO_OFFSET,
        fc_connected: NO_OFFSET,
        fc_num_waiting: NO_OFFSET,
        fc_iq_pending: NO_OFFSET,
        req_list: NO_OFFSET,
        req_pid: NO_OFFSET,
        req_create_time: NO_OFFSET,
        rwsem_wait_list: NO_OFFSET,
        waiter_list: NO_OFFSET,
        waiter_task: NO_OFFSET,
        waiter_type: NO_OFFSET,
        waiting_for_read: NO_OFFSET,
        fud_processing: NO_OFFSET,
    };
}

/// A `SYSCALL_ARGS` entry: which argument (0-5) of a syscall is a path and which a
/// file descriptor. Each is stored plus one, so that 0 (a syscall not described)
/// means neither.
pub const fn syscall_args(path_arg: Option<u8>, fd_arg: Option<u8>) -> u8 {
    let path = match path_arg {
        Some(i) => (i & 0x7) + 1,
        None => 0,
    };
    let fd = match fd_arg {
        Some(i) => (i & 0x7) + 1,
        None => 0,
    };
    path | (fd << 4)
}

/// The path and fd argument indexes of a [`syscall_args`] entry.
#[inline(always)]
pub const fn syscall_arg_indexes(entry: u8) -> (Option<u8>, Option<u8>) {
    (arg_index(entry & 0xf), arg_index(entry >> 4))
}

#[inline(always)]
const fn arg_index(stored: u8) -> Option<u8> {
    if stored == 0 {
        None
    } else {
        Some(stored - 1)
    }
}

/// Settings the kernel side reads, written once into `.rodata` at load time.
///
/// Offsets come from the running kernel's BTF, never from the build host.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Waits shorter than this are not streamed on the ring buffer (they are
    /// still aggregated).
    pub min_duration_ns: u64,
    /// Byte offset of `task_struct.pid` (the thread id).
    pub task_pid_offset: u32,
    /// Byte offset of `task_struct.__state` (`state` before 5.14); read only by
    /// the program for kernels whose `sched_switch` has no `prev_state` (< 5.18).
    pub task_state_offset: u32,
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// dstrace's own process: its waits are not the machine's, and neither the
    /// switch-out path nor the iterator's pass of tasks in D records them (0: none).
    pub self_tgid: u32,
    /// Byte offset of `task_struct.flags` (`PF_KTHREAD`).
    pub task_flags_offset: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Offsets for [`CONFIG_SYSCALL_TARGET`].
    pub offsets: Offsets,
    /// Offsets for [`CONFIG_VFS`].
    pub vfs: VfsOffsets,
    /// Offsets for [`CONFIG_LOCK_OWNERS`].
    pub locks: LockOffsets,
    /// Offsets for [`CONFIG_FUSE_REQUESTS`].
    pub fuse: FuseOffsets,
    /// Offsets for [`CONFIG_RPC`].
    pub rpc: RpcOffsets,
    /// Offsets only the task iterator reads.
    pub iter: IterOffsets,
}
const _: () = assert!(core::mem::size_of::<Config>() == 376);

impl Config {
    /// A configuration that records nothing useful; the loader replaces it.
    pub const UNSET: Config = Config {
        min_duration_ns: u64::MAX,
        task_pid_offset: 0,
        task_state_offset: 0,
        flags: 0,
        self_tgid: 0,
        task_flags_offset: NO_OFFSET,
        _pad: 0,
        offsets: Offsets::UNSET,
        vfs: VfsOffsets::UNSET,
        locks: LockOffsets::UNSET,
        fuse: FuseOffsets::UNSET,
        rpc: RpcOffsets::UNSET,
        iter: IterOffsets::UNSET,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_arg_entries_round_trip() {
        for path in [None, Some(0), Some(1), Some(5)] {
            for fd in [None, Some(0), Some(4)] {
                assert_eq!(syscall_arg_indexes(syscall_args(path, fd)), (path, fd));
            }
        }
        assert_eq!(syscall_arg_indexes(0), (None, None));
    }
}
