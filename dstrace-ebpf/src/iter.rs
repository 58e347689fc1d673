//! The task iterators: what every task in D now waits on, read from kernel memory,
//! for the waits that began before dstrace did (it arrives after the hang).
//!
//! * `iter/task` (`bpf_iter_task`, kernel/bpf/task_iter.c, Linux 5.8+;
//!   `bpf_get_task_stack` needs 5.9): one [`TaskRecord`] per task a pass selects:
//!   [`iter_in_d`] every task in D (but dstrace's own), [`iter_wanted`] the tids of
//!   `ITER_WANTED_TIDS` whatever their state (the owners the records name),
//!   [`iter_walking`] the tasks whose path walk is in a directory of
//!   `ITER_WANTED_DIRS` (who looks up a name others wait for in `d_alloc_parallel`).
//!   Each has a `_pre515` variant without `bpf_task_pt_regs` (5.15+): no syscall and
//!   no file descriptor's file, which userspace then reads from `/proc/PID/syscall`.
//! * `iter/task_file` (`bpf_iter_task_file`, same file, 5.8+): one [`FuseFileRecord`]
//!   per open `/dev/fuse` file: its connection (the mount's device) and the requests
//!   queued on it.
//!
//! Records are built in per-CPU scratch maps and written with `bpf_seq_write`. When
//! the read's buffer is full the kernel runs the program again for the same task at
//! the next read, so the programs only read and write their own record (they are
//! idempotent). The context and the task pointer are read by direct loads and
//! passed on as the kernel gave them: `bpf_get_task_stack`, `bpf_task_pt_regs` and
//! `bpf_seq_write` refuse a pointer read through a helper (a scalar). The selection
//! reads `task_struct` by direct loads at `CONFIG` offsets, which the verifier
//! knows (`.rodata` is frozen): half the cost of a probe read per task. Everything
//! else goes through the probe helpers; an offset this kernel lacks skips what needs
//! it (`read::known`).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{seq_file, task_struct},
    helpers::generated::{bpf_get_task_stack, bpf_jiffies64, bpf_seq_write},
};
use dstrace_common::{
    Counter, FuseFileRecord, FuseRequestRecord, PeerRecord, TaskRecord, Walk, BLOCKER_TYPE_MASK,
    BLOCKER_TYPE_MUTEX, BLOCKER_TYPE_SEM, COMM_LEN, CONFIG_INCLUDE_IDLE, FUSE_DEV_RDEV, FUSE_PENDING_MAX,
    FUSE_PQ_HASH_SIZE, FUSE_REQUESTS_KEPT, FUSE_REQUEST_READ, HAVE_BLOCKER, HAVE_BLOCKER_MUTEX_ONLY,
    HAVE_CGROUP, HAVE_CONNECTION, HAVE_CPU, HAVE_CREATE_TIME, HAVE_EXEC_START, HAVE_FD_FILE, HAVE_PENDING,
    HAVE_PROCESSING, HAVE_SYSCALL, HAVE_WALK, ITER_RWSEM_WAITERS, ITER_STACK_FRAMES, LIST_HEAD_SIZE,
    OWNER_FLAGS_MASK, PEER_KNOWN, PEER_READER_HINT, PF_KTHREAD, RWSEM_HELD_MASK, RWSEM_READER_OWNED, S_IFCHR,
    S_IFMT, TASK_NOLOAD, TASK_UNINTERRUPTIBLE, WAIT_LIST_NONE, WAIT_LIST_READER, WAIT_LIST_WRITER,
};

use crate::maps::{
    count, counted, CONFIG, ITER_FUSE, ITER_FUSE_QUEUE, ITER_TASK, ITER_WANTED_DIRS, ITER_WANTED_TIDS,
};
use crate::read::{config_u32, known, now_ns, read_bytes, read_ptr, read_str, read_u16, read_u32, read_u64};
use crate::target::{
    file_ids, file_of, nameidata, syscall_arg, syscall_fd_arg, syscall_nr, user_regs, walk_dir, walk_path,
};

/// [`iter_in_d`]'s pass: the tasks in D.
const IN_D: u8 = 0;
/// [`iter_wanted`]'s pass: the tids of `ITER_WANTED_TIDS`.
const WANTED: u8 = 1;
/// [`iter_walking`]'s pass: the walkers of the directories of `ITER_WANTED_DIRS`.
const WALKING: u8 = 2;

/// `iter/task`: every task in `TASK_UNINTERRUPTIBLE` but `TASK_NOLOAD` (`TASK_IDLE`
/// too with `CONFIG_INCLUDE_IDLE`), dstrace's own excepted. Linux 5.15+.
#[no_mangle]
#[link_section = "iter/task"]
pub fn iter_in_d(ctx: *mut c_void) -> i32 {
    match try_iter_task::<IN_D, true>(&IterContext(ctx)) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

/// `iter/task`: the tids of `ITER_WANTED_TIDS`, whatever their state. Linux 5.15+.
#[no_mangle]
#[link_section = "iter/task"]
pub fn iter_wanted(ctx: *mut c_void) -> i32 {
    match try_iter_task::<WANTED, true>(&IterContext(ctx)) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

/// `iter/task`: the tasks walking a directory of `ITER_WANTED_DIRS`, whatever their
/// state. Linux 5.15+.
#[no_mangle]
#[link_section = "iter/task"]
pub fn iter_walking(ctx: *mut c_void) -> i32 {
    match try_iter_task::<WALKING, true>(&IterContext(ctx)) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

/// [`iter_in_d`] without `bpf_task_pt_regs`: Linux 5.9 to 5.14.
#[no_mangle]
#[link_section = "iter/task"]
pub fn iter_in_d_pre515(ctx: *mut c_void) -> i32 {
    match try_iter_task::<IN_D, false>(&IterContext(ctx)) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

/// [`iter_wanted`] without `bpf_task_pt_regs`: Linux 5.9 to 5.14.
#[no_mangle]
#[link_section = "iter/task"]
pub fn iter_wanted_pre515(ctx: *mut c_void) -> i32 {
    match try_iter_task::<WANTED, false>(&IterContext(ctx)) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

/// [`iter_walking`] without `bpf_task_pt_regs`: Linux 5.9 to 5.14.
#[no_mangle]
#[link_section = "iter/task"]
pub fn iter_walking_pre515(ctx: *mut c_void) -> i32 {
    match try_iter_task::<WALKING, false>(&IterContext(ctx)) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

/// `iter/task_file`: every open `/dev/fuse` file. Linux 5.8+.
#[no_mangle]
#[link_section = "iter/task_file"]
pub fn iter_fuse_files(ctx: *mut c_void) -> i32 {
    match try_iter_fuse_files(&IterContext(ctx)) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

/// `struct bpf_iter_meta` (include/linux/bpf.h, 5.8+): the iterator's `seq_file`
/// first. BPF program ABI, checked by the verifier against the kernel's BTF.
#[repr(C)]
struct IterMeta {
    seq: *mut seq_file,
    session_id: u64,
    seq_num: u64,
}

/// An iterator program's context, 8-byte slots: `struct bpf_iter__task { meta; task;
/// }`, `struct bpf_iter__task_file { meta; task; u32 fd; file; }` (program ABI).
/// Each slot is read with one direct load, so that the verifier types it from the
/// iterator's BTF; it refuses a context read through a helper.
struct IterContext(*mut c_void);

impl IterContext {
    /// The `n`th 8-byte slot.
    #[inline(always)]
    fn slot(&self, n: usize) -> u64 {
        // SAFETY: a direct load of the context, which the verifier checks against the
        // iterator's context type.
        unsafe { core::ptr::read_volatile((self.0 as *const u64).add(n)) }
    }

    /// The task (null on the final call, after the last one).
    #[inline(always)]
    fn task(&self) -> *mut task_struct {
        self.slot(1) as *mut task_struct
    }

    /// `bpf_iter__task_file.fd` (a `u32` at byte 16).
    #[inline(always)]
    fn fd(&self) -> u32 {
        // SAFETY: as in `slot`, a 4-byte load of the `fd` member.
        unsafe { core::ptr::read_volatile((self.0 as *const u8).add(16) as *const u32) }
    }

    /// `bpf_iter__task_file.file` (null on the final call).
    #[inline(always)]
    fn file(&self) -> *const u8 {
        self.slot(3) as *const u8
    }

    /// Writes `record` to the iterator's output. `Err(IterRecordRetried)` when the
    /// read's buffer is full: the kernel then runs the program again for the same
    /// object at the start of the next read.
    #[inline(always)]
    fn write<T>(&self, record: &T) -> Result<(), Counter> {
        let meta = self.slot(0) as *const IterMeta;
        // SAFETY: `meta` is the verifier-typed `struct bpf_iter_meta *`; `seq` is read
        // with a direct load so that it stays the `struct seq_file *` that
        // `bpf_seq_write` demands; `record` is `size_of::<T>()` readable bytes.
        let written = unsafe {
            let seq = core::ptr::read_volatile(&(*meta).seq);
            bpf_seq_write(seq, (record as *const T).cast::<c_void>(), size_of::<T>() as u32)
        };
        if written != 0 {
            return Err(Counter::IterRecordRetried);
        }
        Ok(())
    }
}

/// A `u32` of `task` by a direct load at a `CONFIG` offset, `None` where this kernel
/// lacks it: the verifier knows the offset (frozen `.rodata`) and checks the load
/// against `task_struct`'s BTF (a fault-safe `PROBE_MEM` load).
#[inline(always)]
fn task_u32(task: *mut task_struct, field: &u32) -> Option<u32> {
    let offset = known(field)?;
    // SAFETY: see above; `task` is the non-null task of the context.
    Some(unsafe { core::ptr::read_volatile((task as *const u8).add(offset as usize) as *const u32) })
}

/// One task of an `iter/task` pass.
#[inline(always)]
fn try_iter_task<const PASS: u8, const PT_REGS: bool>(ctx: &IterContext) -> Result<(), Counter> {
    let task = ctx.task();
    if task.is_null() {
        return Ok(()); // the final call
    }
    let (Some(state), Some(tid), Some(tgid)) = (
        task_u32(task, &CONFIG.task_state_offset),
        task_u32(task, &CONFIG.task_pid_offset),
        task_u32(task, &CONFIG.locks.task_tgid),
    ) else {
        return Ok(()); // the loader loads no iterator without these
    };
    if !selected::<PASS>(task, state, tid, tgid)? {
        return Ok(());
    }
    let record = ITER_TASK.get_ptr_mut(0).ok_or(Counter::DropSlotMissing)?;
    // SAFETY: this CPU's scratch slot. Only another iterator read preempting this
    // one on this CPU could write it meanwhile (iterator programs run with migration,
    // not preemption, disabled); dstrace reads one iterator at a time.
    let record = unsafe { &mut *record };
    record.tid = tid;
    record.tgid = tgid;
    record.state = state;
    task_record::<PT_REGS>(task, record);
    ctx.write(record)
}

/// Whether this pass records the task.
#[inline(always)]
fn selected<const PASS: u8>(
    task: *mut task_struct,
    state: u32,
    tid: u32,
    tgid: u32,
) -> Result<bool, Counter> {
    Ok(match PASS {
        IN_D => {
            state & TASK_UNINTERRUPTIBLE != 0
                && (state & TASK_NOLOAD == 0 || config_u32(&CONFIG.flags) & CONFIG_INCLUDE_IDLE != 0)
                && tgid != config_u32(&CONFIG.self_tgid)
        }
        WANTED => ITER_WANTED_TIDS.get_ptr(tid).is_some(),
        _ => match nameidata(task as *const u8)? {
            Some(nd) => {
                let dentry = read_u64(nd, config_u32(&CONFIG.vfs.nd_path_dentry))?;
                ITER_WANTED_DIRS.get_ptr(dentry).is_some()
            }
            None => false,
        },
    })
}

/// Fills every part of `record` but its identity, each read on its own: a part that
/// fails is counted and left out, and the record is written all the same.
#[inline(always)]
fn task_record<const PT_REGS: bool>(task: *mut task_struct, record: &mut TaskRecord) {
    let base = task as *const u8;
    let iter = &CONFIG.iter;
    record.have = 0;
    record.flags = counted(read_u32(base, config_u32(&CONFIG.task_flags_offset))).unwrap_or(0);
    record.cpu = u32::MAX;
    if let Some(offset) = known(&iter.task_cpu) {
        if let Some(cpu) = counted(read_u32(base, offset)) {
            record.cpu = cpu;
            record.have |= HAVE_CPU;
        }
    }
    record.exec_start_ns = 0;
    if let Some(offset) = known(&iter.task_exec_start) {
        if let Some(at) = counted(read_u64(base, offset)) {
            record.exec_start_ns = at;
            record.have |= HAVE_EXEC_START;
        }
    }
    if counted(read_bytes(base, config_u32(&CONFIG.locks.task_comm), &mut record.comm)).is_none() {
        record.comm = [0; COMM_LEN];
    }
    record.cgroup_id = 0;
    if let Some(Some(id)) = counted(cgroup_id(base)) {
        record.cgroup_id = id;
        record.have |= HAVE_CGROUP;
    }
    // SAFETY: `task` is the non-null, verifier-typed task of the context, as the
    // helper demands; the buffer is the record's, exactly that long.
    record.stack_bytes = unsafe {
        bpf_get_task_stack(
            task,
            record.stack.as_mut_ptr().cast::<c_void>(),
            (ITER_STACK_FRAMES * 8) as u32,
            0,
        )
    };
    if record.stack_bytes < 0 {
        count(Counter::DropStackLost);
    }
    record.syscall_nr = -1;
    record.args = [0; 6];
    record.fd = -1;
    record.fd_mnt_id = 0;
    record.fd_dev = 0;
    record.fd_waiting = WAIT_LIST_NONE;
    record.fd_ino = 0;
    record.fd_rwsem = 0;
    record.fd_owner = PeerRecord::NONE;
    if PT_REGS && record.flags & PF_KTHREAD == 0 {
        counted(syscall(task, record));
    }
    record.walk = Walk::NONE;
    record.walk_dir_dentry = 0;
    record.walk_dir_rwsem = 0;
    record.walk_dir_waiting = WAIT_LIST_NONE;
    record._pad = 0;
    record.walk_dir_owner = PeerRecord::NONE;
    record.walk_last[0] = 0;
    record.walk_path[0] = 0;
    if let Some(Some(nd)) = counted(nameidata(base)) {
        record.have |= HAVE_WALK;
        walk(base, nd, record);
    }
    record.blocker = 0;
    record.blocker_owner = PeerRecord::NONE;
    counted(blocker(base, record));
}

/// The cgroup v2 id of a task: `task->cgroups->dfl_cgrp->kn->id`.
#[inline(always)]
fn cgroup_id(task: *const u8) -> Result<Option<u64>, Counter> {
    let iter = &CONFIG.iter;
    let (Some(cgroups), Some(dfl_cgrp), Some(kn), Some(id)) = (
        known(&iter.task_cgroups),
        known(&iter.css_set_dfl_cgrp),
        known(&iter.cgroup_kn),
        known(&iter.kernfs_node_id),
    ) else {
        return Ok(None);
    };
    let Some(cset) = read_ptr(task, cgroups)? else { return Ok(None) };
    let Some(cgroup) = read_ptr(cset, dfl_cgrp)? else { return Ok(None) };
    let Some(node) = read_ptr(cgroup, kn)? else { return Ok(None) };
    read_u64(node, id).map(Some)
}

/// The syscall in `task`'s saved user registers, and the file behind its file
/// descriptor argument: mount, device, inode, the inode's `i_rwsem`, its owner and
/// whether the task waits for it.
#[inline(always)]
fn syscall(task: *mut task_struct, record: &mut TaskRecord) -> Result<(), Counter> {
    let regs = user_regs(task)?;
    record.syscall_nr = syscall_nr(regs)?;
    record.have |= HAVE_SYSCALL;
    // Counted here, each: the other arguments are still to be read.
    record.args[0] = counted(syscall_arg(regs, Some(0))).flatten().unwrap_or(0);
    record.args[1] = counted(syscall_arg(regs, Some(1))).flatten().unwrap_or(0);
    record.args[2] = counted(syscall_arg(regs, Some(2))).flatten().unwrap_or(0);
    record.args[3] = counted(syscall_arg(regs, Some(3))).flatten().unwrap_or(0);
    record.args[4] = counted(syscall_arg(regs, Some(4))).flatten().unwrap_or(0);
    record.args[5] = counted(syscall_arg(regs, Some(5))).flatten().unwrap_or(0);
    let fd = match syscall_fd_arg(record.syscall_nr)? {
        Some(0) => record.args[0],
        Some(1) => record.args[1],
        Some(2) => record.args[2],
        Some(3) => record.args[3],
        Some(4) => record.args[4],
        Some(5) => record.args[5],
        _ => return Ok(()),
    } as i32;
    record.fd = fd;
    if fd < 0 {
        return Ok(()); // AT_FDCWD and the like
    }
    let Some(file) = file_of(task as *const u8, fd as u32)? else { return Ok(()) };
    let ids = file_ids(file)?;
    record.fd_mnt_id = ids.mnt_id;
    record.fd_dev = ids.dev;
    record.fd_ino = ids.ino;
    record.have |= HAVE_FD_FILE;
    if let (false, Some(rwsem)) = (ids.inode.is_null(), known(&CONFIG.locks.inode_rwsem)) {
        let rwsem = ids.inode.wrapping_add(rwsem as usize);
        record.fd_rwsem = rwsem as u64;
        record.fd_waiting = counted(waiting(rwsem, task as *const u8)).unwrap_or(WAIT_LIST_NONE);
        rwsem_owner(rwsem, &mut record.fd_owner)?;
    }
    Ok(())
}

/// The path walk `nd` of `task`: the directory (mount, inode, dentry, `i_rwsem`,
/// its owner and whether the task waits for it), the name looked up and the path,
/// each counted where it fails.
#[inline(always)]
fn walk(task: *const u8, nd: *const u8, record: &mut TaskRecord) {
    if let Some(dir) = counted(walk_dir(nd, &mut record.walk)) {
        record.walk_dir_dentry = dir.dentry as u64;
        if let (false, Some(rwsem)) = (dir.inode.is_null(), known(&CONFIG.locks.inode_rwsem)) {
            let rwsem = dir.inode.wrapping_add(rwsem as usize);
            record.walk_dir_rwsem = rwsem as u64;
            record.walk_dir_waiting = counted(waiting(rwsem, task)).unwrap_or(WAIT_LIST_NONE);
            counted(rwsem_owner(rwsem, &mut record.walk_dir_owner));
        }
    }
    if let Some(last) = known(&CONFIG.vfs.nd_last_name) {
        if let Some(Some(name)) = counted(read_ptr(nd, last)) {
            counted(read_str(name, &mut record.walk_last));
        }
    }
    counted(walk_path(nd, &mut record.walk_path));
}

/// The lock the task waits for, as the hung-task detector notes it:
/// `task_struct.blocker` (6.16+: the address, the type in the low bits) or
/// `blocker_mutex` (6.15: a mutex), and its owner.
#[inline(always)]
fn blocker(task: *const u8, record: &mut TaskRecord) -> Result<(), Counter> {
    let iter = &CONFIG.iter;
    let (word, kind) = if let Some(offset) = known(&iter.task_blocker) {
        let word = read_u64(task, offset)?;
        (word, word & BLOCKER_TYPE_MASK)
    } else if let Some(offset) = known(&iter.task_blocker_mutex) {
        (read_u64(task, offset)?, BLOCKER_TYPE_MUTEX)
    } else {
        return Ok(());
    };
    if word == 0 {
        return Ok(());
    }
    record.blocker = word;
    record.have |= HAVE_BLOCKER;
    if known(&iter.task_blocker).is_none() {
        record.have |= HAVE_BLOCKER_MUTEX_ONLY;
    }
    let lock = (word & !BLOCKER_TYPE_MASK) as *const u8;
    match kind {
        BLOCKER_TYPE_MUTEX => {
            let Some(owner) = known(&CONFIG.locks.mutex_owner) else { return Ok(()) };
            let word = read_u64(lock, owner)?;
            peer(word, 0, &mut record.blocker_owner)
        }
        BLOCKER_TYPE_SEM => {
            // A semaphore has no owner: its last holder is a hint.
            let Some(holder) = known(&iter.sem_last_holder) else { return Ok(()) };
            let word = read_u64(lock, holder)?;
            peer(word, PEER_READER_HINT, &mut record.blocker_owner)
        }
        _ => rwsem_owner(lock, &mut record.blocker_owner),
    }
}

/// The owner of the rwsem at `rwsem`, if it is held: its `owner` word, a task with
/// flags in the low bits; a reader-owned rwsem names only its last reader (a hint).
#[inline(always)]
fn rwsem_owner(rwsem: *const u8, out: &mut PeerRecord) -> Result<(), Counter> {
    if let Some(count) = known(&CONFIG.iter.rwsem_count) {
        if read_u64(rwsem, count)? & RWSEM_HELD_MASK == 0 {
            return Ok(()); // free: its owner word may still name its last reader
        }
    }
    let Some(owner) = known(&CONFIG.locks.rwsem_owner) else { return Ok(()) };
    let word = read_u64(rwsem, owner)?;
    let hint = if word & RWSEM_READER_OWNED != 0 { PEER_READER_HINT } else { 0 };
    peer(word, hint, out)
}

/// Whether `task` waits for the rwsem at `rwsem`, and for what (`WAIT_LIST_*`): its
/// `struct rwsem_waiter` (kernel/locking/rwsem.c, on the waiting task's own stack)
/// is on `rw_semaphore.wait_list`, which a task sleeping in
/// `rwsem_down_{read,write}_slowpath` is on until it gets the lock. The first
/// `ITER_RWSEM_WAITERS` entries are looked at. The list is walked without its
/// `wait_lock`: each step is a probe read, so an entry gone meanwhile ends the walk
/// (a failed read) or leads back to the head, never faults.
#[inline(always)]
fn waiting(rwsem: *const u8, task: *const u8) -> Result<u32, Counter> {
    let iter = &CONFIG.iter;
    let (Some(list), Some(entry), Some(waiter_task), Some(waiter_type)) = (
        known(&iter.rwsem_wait_list),
        known(&iter.waiter_list),
        known(&iter.waiter_task),
        known(&iter.waiter_type),
    ) else {
        return Ok(WAIT_LIST_NONE);
    };
    let head = rwsem.wrapping_add(list as usize);
    let mut next = read_u64(head, 0)? as *const u8;
    for _ in 0..ITER_RWSEM_WAITERS {
        if next == head || next.is_null() {
            break;
        }
        let waiter = next.wrapping_sub(entry as usize);
        if read_u64(waiter, waiter_task)? == task as u64 {
            let reads = read_u32(waiter, waiter_type)? == config_u32(&iter.waiting_for_read);
            return Ok(if reads { WAIT_LIST_READER } else { WAIT_LIST_WRITER });
        }
        next = read_u64(next, 0)? as *const u8;
    }
    Ok(WAIT_LIST_NONE)
}

/// The task an owner word names (`PEER_*` `flags` added), if any.
#[inline(always)]
fn peer(word: u64, flags: u32, out: &mut PeerRecord) -> Result<(), Counter> {
    let task = (word & !OWNER_FLAGS_MASK) as *const u8;
    if task.is_null() {
        return Ok(());
    }
    out.tid = read_u32(task, config_u32(&CONFIG.task_pid_offset))?;
    out.tgid = read_u32(task, config_u32(&CONFIG.locks.task_tgid))?;
    out.state = read_u32(task, config_u32(&CONFIG.task_state_offset))?;
    read_bytes(task, config_u32(&CONFIG.locks.task_comm), &mut out.comm)?;
    out.flags = PEER_KNOWN | flags;
    Ok(())
}

/// One open file of one process: recorded if it is `/dev/fuse`.
#[inline(always)]
fn try_iter_fuse_files(ctx: &IterContext) -> Result<(), Counter> {
    let task = ctx.task() as *const u8;
    let file = ctx.file();
    if task.is_null() || file.is_null() {
        return Ok(()); // the final call
    }
    let iter = &CONFIG.iter;
    let (Some(mode), Some(rdev)) = (known(&iter.inode_mode), known(&iter.inode_rdev)) else {
        return Ok(());
    };
    let Some(inode) = read_ptr(file, config_u32(&CONFIG.offsets.file_inode))? else { return Ok(()) };
    if read_u16(inode, mode)? & S_IFMT != S_IFCHR || read_u32(inode, rdev)? != FUSE_DEV_RDEV {
        return Ok(());
    }
    let record = ITER_FUSE.get_ptr_mut(0).ok_or(Counter::DropSlotMissing)?;
    // SAFETY: as in `try_iter_task`.
    let record = unsafe { &mut *record };
    record.tgid = read_u32(task, config_u32(&CONFIG.locks.task_tgid))?;
    record.tid = read_u32(task, config_u32(&CONFIG.task_pid_offset))?;
    record.fd = ctx.fd();
    record.state = counted(read_u32(task, config_u32(&CONFIG.task_state_offset))).unwrap_or(0);
    if counted(read_bytes(task, config_u32(&CONFIG.locks.task_comm), &mut record.comm)).is_none() {
        record.comm = [0; COMM_LEN];
    }
    record.dev = 0;
    record.connected = 0;
    record.num_waiting = 0;
    record.pending = 0;
    record.have = 0;
    record.processing = 0;
    record.kept = 0;
    record._pad = 0;
    record.fuse_dev = 0;
    // SAFETY: the helpers take no argument.
    record.now_jiffies = unsafe { bpf_jiffies64() };
    record.now_ns = now_ns();
    counted(connection(file, record));
    ctx.write(record)
}

/// The FUSE connection of a `/dev/fuse` file, its pending requests and those its
/// daemon read from this file: `file->private_data` is its `struct fuse_dev` once
/// mounted (null before), `fud->fc` the connection.
#[inline(always)]
fn connection(file: *const u8, record: &mut FuseFileRecord) -> Result<(), Counter> {
    let iter = &CONFIG.iter;
    let (Some(private_data), Some(fud_fc), Some(dev)) =
        (known(&iter.file_private_data), known(&iter.fud_fc), known(&CONFIG.fuse.fc_dev))
    else {
        return Ok(());
    };
    let Some(fud) = read_ptr(file, private_data)? else { return Ok(()) };
    record.fuse_dev = fud as u64;
    let Some(fc) = read_ptr(fud, fud_fc)? else { return Ok(()) };
    record.dev = read_u32(fc, dev)?;
    if let Some(connected) = known(&iter.fc_connected) {
        // A bit field's byte in older kernels, an unsigned int since: its low bit.
        record.connected = counted(read_u32(fc, connected)).unwrap_or(0) & 1;
    }
    if let Some(waiting) = known(&iter.fc_num_waiting) {
        record.num_waiting = counted(read_u32(fc, waiting)).unwrap_or(0);
    }
    record.have |= HAVE_CONNECTION;
    if create_time_known() {
        record.have |= HAVE_CREATE_TIME;
    }
    // Each on its own: a queue that fails to read leaves the other.
    counted(pending(fc, record));
    processing(fud, record)
}

/// Whether this kernel says when a request was made (`fuse_req.create_time`).
#[inline(always)]
fn create_time_known() -> bool {
    known(&CONFIG.iter.req_create_time).is_some()
}

/// The requests queued on `fc->iq.pending` (not yet read by the daemon): counted up
/// to `FUSE_PENDING_MAX` (+1: more), the first `FUSE_REQUESTS_KEPT` described. The
/// list is walked without its lock: a count, not a snapshot; each step is a probe
/// read, so a request freed meanwhile ends the walk, never faults.
#[inline(always)]
fn pending(fc: *const u8, record: &mut FuseFileRecord) -> Result<(), Counter> {
    let iter = &CONFIG.iter;
    let (Some(list), Some(req_list)) = (known(&iter.fc_iq_pending), known(&iter.req_list)) else {
        return Ok(());
    };
    let head = fc.wrapping_add(list as usize);
    let mut next = read_u64(head, 0)? as *const u8;
    let mut n = 0u32;
    while n <= FUSE_PENDING_MAX {
        if next == head || next.is_null() {
            break;
        }
        if let Some(slot) = record.requests.get_mut(n as usize) {
            request(next.wrapping_sub(req_list as usize), 0, slot)?;
            record.kept = n + 1;
        }
        n += 1;
        next = read_u64(next, 0)? as *const u8;
    }
    record.pending = n;
    record.have |= HAVE_PENDING;
    Ok(())
}

/// The requests the daemon read from this `/dev/fuse` file and has not answered:
/// `fud->pq.processing` points to `FUSE_PQ_HASH_SIZE` list heads (a hash of each
/// request's `unique`, `fuse_req_hash`), where `fuse_dev_do_read` moves a request
/// once copied to the daemon and whence the answer (`fuse_dev_do_write`) or an
/// abort takes it. Each bucket that is not empty counts once and its first request
/// fills a slot left after the pending ones (flagged read). Read without the
/// queue's lock, as [`pending`]: the heads in one probe read (a loop of one read
/// per head was two thirds of the time to load dstrace, in the verifier), then
/// each kept request.
#[inline(always)]
fn processing(fud: *const u8, record: &mut FuseFileRecord) -> Result<(), Counter> {
    let iter = &CONFIG.iter;
    let (Some(table), Some(req_list)) = (known(&iter.fud_processing), known(&iter.req_list)) else {
        return Ok(());
    };
    let Some(table) = read_ptr(fud, table)? else { return Ok(()) };
    let scratch = ITER_FUSE_QUEUE.get_ptr_mut(0).ok_or(Counter::DropSlotMissing)?;
    // SAFETY: this CPU's slot of a per-CPU map, used by this program only, which a
    // CPU runs once at a time (migration is disabled while it runs).
    let scratch = unsafe { &mut *scratch };
    // SAFETY: the heads are plain `u64`s: any bytes are a valid value, and the
    // slice covers exactly their memory.
    let heads = unsafe {
        core::slice::from_raw_parts_mut(
            scratch.heads.as_mut_ptr().cast::<u8>(),
            core::mem::size_of_val(&scratch.heads),
        )
    };
    read_bytes(table, 0, heads)?;
    // The slots' index lives in the record (map memory, read volatile each time):
    // a value the verifier does not track, so that the loop's states differ by
    // bucket only (a count kept in a register made them bucket x slot x range),
    // and the bounds check is on the register the store uses.
    // SAFETY: a field of this CPU's record.
    let first_slot = unsafe { core::ptr::read_volatile(&record.kept) };
    let mut n = 0u32;
    for bucket in 0..FUSE_PQ_HASH_SIZE as usize {
        let head = (table as u64).wrapping_add((bucket as u64) * u64::from(LIST_HEAD_SIZE));
        let Some(&first) = scratch.heads.get(2 * bucket) else { break };
        if first == head || first == 0 {
            continue;
        }
        n += 1;
        // SAFETY: as above.
        let kept = unsafe { core::ptr::read_volatile(&record.kept) };
        if let Some(slot) = scratch.firsts.get_mut(kept as usize) {
            *slot = first;
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(&mut record.kept, kept + 1) };
        }
    }
    record.processing = n;
    record.have |= HAVE_PROCESSING;
    // Each kept request described, in place of its slot; one freed meanwhile ends
    // the list there (its read fails).
    // SAFETY: as above.
    let end = unsafe { core::ptr::read_volatile(&record.kept) };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&mut record.kept, first_slot) };
    for slot in 0..FUSE_REQUESTS_KEPT {
        if (slot as u32) < first_slot || slot as u32 >= end {
            continue;
        }
        let (Some(&first), Some(out)) = (scratch.firsts.get(slot), record.requests.get_mut(slot)) else {
            break;
        };
        let mut read = FuseRequestRecord::NONE;
        request((first as *const u8).wrapping_sub(req_list as usize), FUSE_REQUEST_READ, &mut read)?;
        *out = read;
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&mut record.kept, slot as u32 + 1) };
    }
    Ok(())
}

/// Describes the `struct fuse_req` at `req` in `slot`, with `flags`.
#[inline(always)]
fn request(req: *const u8, flags: u32, slot: &mut FuseRequestRecord) -> Result<(), Counter> {
    let iter = &CONFIG.iter;
    let fuse = &CONFIG.fuse;
    slot.opcode = read_u32(req, config_u32(&fuse.req_opcode))?;
    slot.unique = read_u64(req, config_u32(&fuse.req_unique))?;
    slot.nodeid = read_u64(req, config_u32(&fuse.req_nodeid))?;
    slot.pid = known(&iter.req_pid).map_or(Ok(0), |pid| read_u32(req, pid))?;
    slot.create_jiffies = known(&iter.req_create_time).map_or(Ok(0), |at| read_u64(req, at))?;
    slot.flags = flags;
    slot._pad = 0;
    Ok(())
}

const _: () = assert!(FUSE_REQUESTS_KEPT <= FUSE_PENDING_MAX as usize);
