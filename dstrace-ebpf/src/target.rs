//! What the syscall in progress names, read when its task enters D: the syscall, its
//! file descriptor argument (that file's device and inode) and its path argument.

use aya_ebpf::helpers::{
    bpf_get_current_task_btf, generated::bpf_probe_read_user_str, generated::bpf_task_pt_regs,
};
use dstrace_common::{limits, syscall_arg_indexes, Target, PATH_LEN};

use crate::maps::{CONFIG, SYSCALL_ARGS};
use crate::read::{config_u32, read_ptr, read_u32, read_u64};

/// Notes what the current task's syscall names: its file descriptor argument (and
/// that file's device and inode) and its path argument.
#[inline(always)]
pub(crate) fn record_target(target: &mut Target) {
    let offsets = &CONFIG.offsets;
    // SAFETY: the helpers take the current task, a trusted BTF pointer.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    if regs.is_null() {
        return;
    }
    let Some(nr) = read_u64(regs, config_u32(&offsets.regs_syscall_nr)) else { return };
    let nr = nr as i64;
    if nr < 0 || nr >= i64::from(limits::SYSCALLS) {
        return;
    }
    target.syscall = nr as i32;
    let Some(&args) = SYSCALL_ARGS.get(nr as u32) else { return };
    let (path_arg, fd_arg) = syscall_arg_indexes(args);
    if let Some(fd) = arg(regs, fd_arg) {
        let fd = fd as i32;
        target.fd = fd;
        if fd >= 0 {
            if let Some((dev, ino)) = file_of(fd as u32) {
                target.dev = dev;
                target.ino = ino;
            }
        }
    }
    if let Some(path) = arg(regs, path_arg) {
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
}

/// Syscall argument `index` (0-5) from the saved user registers; `None` for no
/// argument or a failed read.
#[inline(always)]
pub(crate) fn arg(regs: *const u8, index: Option<u8>) -> Option<u64> {
    let offsets = &CONFIG.offsets.regs_args;
    let offset = match index? {
        0 => config_u32(&offsets[0]),
        1 => config_u32(&offsets[1]),
        2 => config_u32(&offsets[2]),
        3 => config_u32(&offsets[3]),
        4 => config_u32(&offsets[4]),
        5 => config_u32(&offsets[5]),
        _ => return None,
    };
    read_u64(regs, offset)
}

/// Device and inode of the current task's file descriptor `fd`:
/// `current->files->fdt->fd[fd]->f_inode->{i_sb->s_dev, i_ino}`.
#[inline(always)]
pub(crate) fn file_of(fd: u32) -> Option<(u32, u64)> {
    let offsets = &CONFIG.offsets;
    // SAFETY: the helper takes no argument.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    let files = read_ptr(task, config_u32(&offsets.task_files))?;
    let fdt = read_ptr(files, config_u32(&offsets.files_fdt))?;
    let max_fds = read_u32(fdt, config_u32(&offsets.fdt_max_fds))?;
    if fd >= max_fds {
        return None;
    }
    let fds = read_ptr(fdt, config_u32(&offsets.fdt_fd))?;
    let file = read_ptr(fds, fd * 8)?;
    let inode = read_ptr(file, config_u32(&offsets.file_inode))?;
    let sb = read_ptr(inode, config_u32(&offsets.inode_sb))?;
    let dev = read_u32(sb, config_u32(&offsets.sb_dev))?;
    let ino = read_u64(inode, config_u32(&offsets.inode_ino))?;
    Some((dev, ino))
}
