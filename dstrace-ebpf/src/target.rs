//! What the syscall in progress names, read when its task enters D: the syscall, its
//! file descriptor argument (that file's device and inode) and its path argument.
//!
//! Only the 5.18+ `sched_switch` calls it (`bpf_task_pt_regs` is 5.15+). [`file_of`]
//! takes the task, so that a reader of tasks other than the current one can use it.

use aya_ebpf::helpers::{
    bpf_get_current_task_btf, generated::bpf_probe_read_user_str, generated::bpf_task_pt_regs,
};
use dstrace_common::{limits, syscall_arg_indexes, Counter, Target, PATH_LEN};

use crate::maps::{counted, CONFIG, SYSCALL_ARGS};
use crate::read::{config_u32, read_ptr, read_u32, read_u64};

/// Notes what the current task's syscall names: its file descriptor argument (and
/// that file's device and inode) and its path argument.
#[inline(always)]
pub(crate) fn record_target(target: &mut Target) -> Result<(), Counter> {
    let offsets = &CONFIG.offsets;
    // SAFETY: the helper takes no argument.
    let task = unsafe { bpf_get_current_task_btf() };
    // SAFETY: the helper takes the current task, a trusted BTF pointer.
    let regs = unsafe { bpf_task_pt_regs(task) } as *const u8;
    if regs.is_null() {
        return Err(Counter::DropReadFailed);
    }
    let nr = read_u64(regs, config_u32(&offsets.regs_syscall_nr))? as i64;
    if nr < 0 || nr >= i64::from(limits::SYSCALLS) {
        // Not in a syscall (-1: a page fault, say), or beyond the table (x32).
        return Ok(());
    }
    target.syscall = nr as i32;
    let args = *SYSCALL_ARGS.get(nr as u32).ok_or(Counter::DropSlotMissing)?;
    let (path_arg, fd_arg) = syscall_arg_indexes(args);
    // Counted here, each: the path argument is still to be read.
    if let Some(Some(fd)) = counted(arg(regs, fd_arg)) {
        let fd = fd as i32;
        target.fd = fd;
        if fd >= 0 {
            if let Some(Some((dev, ino))) = counted(file_of(task as *const u8, fd as u32)) {
                target.dev = dev;
                target.ino = ino;
            }
        }
    }
    if let Some(path) = arg(regs, path_arg)? {
        // Not counted when it fails: a path argument may be NULL (`utimensat(fd, NULL,
        // ...)`), which the helper cannot tell from a fault; the path is left empty.
        // SAFETY: a read of the current task's memory through the helper, which
        // never faults and stops at the end of the buffer.
        unsafe {
            bpf_probe_read_user_str(
                target.path.as_mut_ptr().cast(),
                PATH_LEN as u32,
                path as *const core::ffi::c_void,
            )
        };
    }
    Ok(())
}

/// Syscall argument `index` (0-5) from the saved user registers; `None` for no
/// argument.
#[inline(always)]
fn arg(regs: *const u8, index: Option<u8>) -> Result<Option<u64>, Counter> {
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

/// Device and inode of `task`'s file descriptor `fd`:
/// `task->files->fdt->fd[fd]->f_inode->{i_sb->s_dev, i_ino}`; `None` when there is
/// none (a kernel thread has no `files`, a descriptor may not be open).
#[inline(always)]
pub(crate) fn file_of(task: *const u8, fd: u32) -> Result<Option<(u32, u64)>, Counter> {
    let offsets = &CONFIG.offsets;
    let Some(files) = read_ptr(task, config_u32(&offsets.task_files))? else { return Ok(None) };
    let Some(fdt) = read_ptr(files, config_u32(&offsets.files_fdt))? else { return Ok(None) };
    let max_fds = read_u32(fdt, config_u32(&offsets.fdt_max_fds))?;
    if fd >= max_fds {
        return Ok(None);
    }
    let Some(fds) = read_ptr(fdt, config_u32(&offsets.fdt_fd))? else { return Ok(None) };
    let Some(file) = read_ptr(fds, fd * 8)? else { return Ok(None) };
    let Some(inode) = read_ptr(file, config_u32(&offsets.file_inode))? else { return Ok(None) };
    let Some(sb) = read_ptr(inode, config_u32(&offsets.inode_sb))? else { return Ok(None) };
    let dev = read_u32(sb, config_u32(&offsets.sb_dev))?;
    let ino = read_u64(inode, config_u32(&offsets.inode_ino))?;
    Ok(Some((dev, ino)))
}
