//! What a task waits on, named by the kernel objects it holds: its syscall and the
//! file behind its file descriptor argument (device, inode, the mount it was opened
//! through), and the path walk in progress (the directory walked, its mount, the
//! kernel's copy of the path). Kernel memory only: never the task's user memory.
//!
//! [`record_syscall`] runs only in the 5.18+ `sched_switch` (`bpf_task_pt_regs` is
//! 5.15+), [`record_walk`] in both; the readers below them take the task they read,
//! so that the task iterator (`iter`) reads other tasks with the same code.

use aya_ebpf::{
    bindings::task_struct,
    helpers::{bpf_get_current_task_btf, generated::bpf_task_pt_regs},
};
use dstrace_common::{limits, syscall_arg_indexes, Counter, Target, Walk, PF_KTHREAD};

use crate::maps::{counted, CONFIG, SYSCALL_ARGS};
use crate::read::{config_u32, known, read_ptr, read_str, read_u32, read_u64};

/// Notes what the syscall of `task`, the current task, names: the syscall, its file
/// descriptor argument and that file's device, inode and mount. A kernel thread has
/// no syscall: its registers are not read.
#[inline(always)]
pub(crate) fn record_syscall(task: *const u8, target: &mut Target) -> Result<(), Counter> {
    if read_u32(task, config_u32(&CONFIG.task_flags_offset))? & PF_KTHREAD != 0 {
        return Ok(());
    }
    // SAFETY: the helper takes no argument; it returns the current task (`task`) as
    // the trusted BTF pointer `bpf_task_pt_regs` demands.
    let regs = user_regs(unsafe { bpf_get_current_task_btf() })?;
    let nr = syscall_nr(regs)?;
    if nr < 0 || nr >= i64::from(limits::SYSCALLS) {
        // Not in a syscall (-1: a page fault, say), or beyond the table (x32).
        return Ok(());
    }
    target.syscall = nr as i32;
    let Some(fd) = syscall_arg(regs, syscall_fd_arg(nr)?)? else { return Ok(()) };
    let fd = fd as i32;
    target.fd = fd;
    if fd < 0 {
        return Ok(()); // AT_FDCWD and the like
    }
    let Some(file) = file_of(task, fd as u32)? else { return Ok(()) };
    let ids = file_ids(file)?;
    target.dev = ids.dev;
    target.ino = ids.ino;
    target.mnt_id = ids.mnt_id;
    Ok(())
}

/// Notes the path walk `task` is in, if any: the directory walked and the kernel's
/// copy of the path.
#[inline(always)]
pub(crate) fn record_walk(task: *const u8, target: &mut Target) -> Result<(), Counter> {
    let Some(nd) = nameidata(task)? else { return Ok(()) };
    // Counted here: the path is still to be read.
    counted(walk_dir(nd, &mut target.walk));
    walk_path(nd, &mut target.path)
}

/// The saved user registers of `task` (`bpf_task_pt_regs`, 5.15+), which must be
/// the verifier-typed task pointer the helper demands (the current task from
/// `bpf_get_current_task_btf`, an iterator's task as its context gave it).
#[inline(always)]
pub(crate) fn user_regs(task: *mut task_struct) -> Result<*const u8, Counter> {
    // SAFETY: the helper checks its argument's type; it only returns an address.
    let regs = unsafe { bpf_task_pt_regs(task) } as *const u8;
    if regs.is_null() {
        return Err(Counter::DropReadFailed);
    }
    Ok(regs)
}

/// The syscall number in saved user registers: -1 outside a syscall (a page fault).
#[inline(always)]
pub(crate) fn syscall_nr(regs: *const u8) -> Result<i64, Counter> {
    Ok(read_u64(regs, config_u32(&CONFIG.offsets.regs_syscall_nr))? as i64)
}

/// Which argument of syscall `nr` is a file descriptor (`SYSCALL_ARGS`); `None` for
/// no syscall, one beyond the table (x32), or one without an fd argument.
#[inline(always)]
pub(crate) fn syscall_fd_arg(nr: i64) -> Result<Option<u8>, Counter> {
    if nr < 0 || nr >= i64::from(limits::SYSCALLS) {
        return Ok(None);
    }
    let args = *SYSCALL_ARGS.get(nr as u32).ok_or(Counter::DropSlotMissing)?;
    Ok(syscall_arg_indexes(args).1)
}

/// Syscall argument `index` (0-5) from saved user registers; `None` for no argument.
#[inline(always)]
pub(crate) fn syscall_arg(regs: *const u8, index: Option<u8>) -> Result<Option<u64>, Counter> {
    let offsets = &CONFIG.offsets.regs_args;
    let offset = match index {
        Some(0) => config_u32(&offsets[0]),
        Some(1) => config_u32(&offsets[1]),
        Some(2) => config_u32(&offsets[2]),
        Some(3) => config_u32(&offsets[3]),
        Some(4) => config_u32(&offsets[4]),
        Some(5) => config_u32(&offsets[5]),
        _ => return Ok(None),
    };
    read_u64(regs, offset).map(Some)
}

/// `task`'s open file `fd`: `task->files->fdt->fd[fd]`; `None` when there is none (a
/// kernel thread has no `files`, a descriptor may not be open).
#[inline(always)]
pub(crate) fn file_of(task: *const u8, fd: u32) -> Result<Option<*const u8>, Counter> {
    let offsets = &CONFIG.offsets;
    let Some(files) = read_ptr(task, config_u32(&offsets.task_files))? else { return Ok(None) };
    let Some(fdt) = read_ptr(files, config_u32(&offsets.files_fdt))? else { return Ok(None) };
    let max_fds = read_u32(fdt, config_u32(&offsets.fdt_max_fds))?;
    if fd >= max_fds {
        return Ok(None);
    }
    let Some(fds) = read_ptr(fdt, config_u32(&offsets.fdt_fd))? else { return Ok(None) };
    read_ptr(fds, fd * 8)
}

/// What identifies an open file.
pub(crate) struct FileIds {
    /// `s_dev` of its inode's superblock.
    pub(crate) dev: u32,
    /// Its inode number.
    pub(crate) ino: u64,
    /// The mount it was opened through (0 where this kernel's layout is unknown).
    pub(crate) mnt_id: u32,
    /// Its inode.
    pub(crate) inode: *const u8,
}

/// The device, inode and mount of an open file: `file->f_inode->{i_sb->s_dev,
/// i_ino}`, `file->f_path.mnt`'s mount ID.
#[inline(always)]
pub(crate) fn file_ids(file: *const u8) -> Result<FileIds, Counter> {
    let offsets = &CONFIG.offsets;
    let mut ids = FileIds { dev: 0, ino: 0, mnt_id: 0, inode: core::ptr::null() };
    let Some(inode) = read_ptr(file, config_u32(&offsets.file_inode))? else { return Ok(ids) };
    ids.inode = inode;
    ids.ino = read_u64(inode, config_u32(&offsets.inode_ino))?;
    if let Some(sb) = read_ptr(inode, config_u32(&offsets.inode_sb))? {
        ids.dev = read_u32(sb, config_u32(&offsets.sb_dev))?;
    }
    if let Some(path_mnt) = known(&CONFIG.vfs.file_path_mnt) {
        if let Some(mnt) = read_ptr(file, path_mnt)? {
            ids.mnt_id = mount_id(mnt)?;
        }
    }
    Ok(ids)
}

/// The mount ID of a `struct vfsmount *`: `container_of(mnt, struct mount,
/// mnt)->mnt_id`, 0 where this kernel's layout is unknown.
#[inline(always)]
pub(crate) fn mount_id(mnt: *const u8) -> Result<u32, Counter> {
    let vfs = &CONFIG.vfs;
    let (Some(mount_mnt), Some(mnt_id)) = (known(&vfs.mount_mnt), known(&vfs.mount_mnt_id)) else {
        return Ok(0);
    };
    read_u32(mnt.wrapping_sub(mount_mnt as usize), mnt_id)
}

/// The path walk `task` is in (`task->nameidata`), if any.
#[inline(always)]
pub(crate) fn nameidata(task: *const u8) -> Result<Option<*const u8>, Counter> {
    let Some(offset) = known(&CONFIG.vfs.task_nameidata) else { return Ok(None) };
    read_ptr(task, offset)
}

/// Where a path walk is: its directory's dentry and inode.
pub(crate) struct WalkDir {
    /// `nd->path.dentry` (null if unread).
    pub(crate) dentry: *const u8,
    /// `nd->path.dentry->d_inode` (null if unread).
    pub(crate) inode: *const u8,
}

/// Fills `walk` with the directory walk `nd` is in: its mount (ID and superblock
/// device) and inode; returns that directory's dentry and inode.
#[inline(always)]
pub(crate) fn walk_dir(nd: *const u8, walk: &mut Walk) -> Result<WalkDir, Counter> {
    let vfs = &CONFIG.vfs;
    let mut dir = WalkDir { dentry: core::ptr::null(), inode: core::ptr::null() };
    if let Some(mnt) = read_ptr(nd, config_u32(&vfs.nd_path_mnt))? {
        walk.mnt_id = mount_id(mnt)?;
        if let Some(sb) = read_ptr(mnt, config_u32(&vfs.vfsmount_sb))? {
            walk.dev = read_u32(sb, config_u32(&CONFIG.offsets.sb_dev))?;
        }
    }
    let Some(dentry) = read_ptr(nd, config_u32(&vfs.nd_path_dentry))? else { return Ok(dir) };
    dir.dentry = dentry;
    let Some(inode) = read_ptr(dentry, config_u32(&vfs.dentry_inode))? else { return Ok(dir) };
    dir.inode = inode;
    walk.dir_ino = read_u64(inode, config_u32(&CONFIG.offsets.inode_ino))?;
    Ok(dir)
}

/// Copies the path walk `nd` walks, as the kernel copied it from the task
/// (`nd->name->name`), into `out`, NUL-terminated (empty when there is none).
#[inline(always)]
pub(crate) fn walk_path(nd: *const u8, out: &mut [u8]) -> Result<(), Counter> {
    let vfs = &CONFIG.vfs;
    let Some(name) = read_ptr(nd, config_u32(&vfs.nd_name))? else { return Ok(()) };
    let Some(path) = read_ptr(name, config_u32(&vfs.filename_name))? else { return Ok(()) };
    read_str(path, out)
}
