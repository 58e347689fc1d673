//! What a task waits on in the kernel: a lock (`lock:contention_begin`/`_end`, its
//! owner and, for an inode's `i_rwsem`, the inode) or a name another task is looking up
//! (`d_alloc_parallel`).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fentry, fexit},
    programs::{BtfTracePointContext, FEntryContext, FExitContext},
};
use dstrace_common::{
    Cause, Counter, DentryKey, CAUSE_DENTRY, CAUSE_HOLDER_KNOWN, CAUSE_HOLDER_READER_HINT, CAUSE_INODE_RWSEM,
    CAUSE_LOCK, CONFIG_LOCK_OWNERS, LCB_F_MUTEX, LCB_F_PERCPU, LCB_F_READ, LCB_F_RT, LCB_F_SPIN, LCB_F_WRITE,
};

use crate::maps::{count, counted, CONFIG, CONTENDING, DLOOKUP_OWNERS, DLOOKUP_WAITING};
use crate::read::{config_u32, current_task, read_bytes, read_ptr, read_u32, read_u64};

/// `contention_begin(void *lock, unsigned int flags)`, Linux 5.19+: the event is in
/// include/trace/events/lock.h, fired by `trace_contention_begin()` in the slow paths
/// of kernel/locking/ (`__mutex_lock_common()` in mutex.c,
/// `rwsem_down_{read,write}_slowpath()` in rwsem.c, ...). The current task is about
/// to wait for a kernel lock. Spinning waits are left out (they never sleep); for the
/// others the lock, its kind, its owner and, for an inode's `i_rwsem`, the inode are
/// noted until the wait ends.
#[btf_tracepoint(function = "contention_begin")]
pub fn contention_begin(ctx: BtfTracePointContext) -> u32 {
    match try_contention_begin(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

#[inline(always)]
fn try_contention_begin(ctx: &BtfTracePointContext) -> Result<(), Counter> {
    let flags: u64 = ctx.arg(1);
    let flags = flags as u32;
    if flags & LCB_F_SPIN != 0 {
        return Ok(());
    }
    let lock: *const u8 = ctx.arg(0);
    let mut cause = Cause::NONE;
    cause.kind = CAUSE_LOCK;
    cause.flags = flags;
    cause.key = lock as u64;
    if config_u32(&CONFIG.flags) & CONFIG_LOCK_OWNERS != 0 {
        lock_details(lock, &mut cause);
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    CONTENDING.insert(tid, cause, 0).map_err(|_| Counter::DropLockMapFull)
}

/// The owner of a mutex or rwsem and, for an rwsem, the inode whose `i_rwsem` it is.
#[inline(always)]
fn lock_details(lock: *const u8, cause: &mut Cause) {
    let flags = cause.flags;
    let rwsem =
        flags & (LCB_F_READ | LCB_F_WRITE) != 0 && flags & (LCB_F_RT | LCB_F_PERCPU | LCB_F_MUTEX) == 0;
    // Counted here, each: a detail lost does not lose the lock.
    counted(lock_owner(lock, rwsem, cause));
    if rwsem {
        counted(rwsem_inode(lock, cause));
    }
}

/// The owner of a mutex or rwsem: its `owner` word, a `task_struct` pointer with
/// flags in the low bits; for a reader-owned rwsem only the last reader, a hint.
#[inline(always)]
fn lock_owner(lock: *const u8, rwsem: bool, cause: &mut Cause) -> Result<(), Counter> {
    let locks = &CONFIG.locks;
    let offset = if cause.flags & LCB_F_MUTEX != 0 {
        config_u32(&locks.mutex_owner)
    } else if rwsem {
        config_u32(&locks.rwsem_owner)
    } else {
        return Ok(());
    };
    let owner = read_u64(lock, offset)?;
    let task = (owner & !7) as *const u8;
    if task.is_null() {
        return Ok(());
    }
    let tid = read_u32(task, config_u32(&CONFIG.task_pid_offset))?;
    let tgid = read_u32(task, config_u32(&locks.task_tgid))?;
    cause.holder_tid = tid;
    cause.holder_tgid = tgid;
    cause.flags |= CAUSE_HOLDER_KNOWN;
    if rwsem && owner & 1 != 0 {
        cause.flags |= CAUSE_HOLDER_READER_HINT;
    }
    read_bytes(task, config_u32(&locks.task_comm), &mut cause.holder_comm)
}

/// The inode whose `i_rwsem` the rwsem at `lock` is, if it is one:
/// `sb->s_root->d_sb == sb` for the superblock of the would-be inode holds only for
/// a real inode.
#[inline(always)]
fn rwsem_inode(lock: *const u8, cause: &mut Cause) -> Result<(), Counter> {
    let locks = &CONFIG.locks;
    let offsets = &CONFIG.offsets;
    let inode = lock.wrapping_sub(config_u32(&locks.inode_rwsem) as usize);
    // Reads of a would-be inode: one that fails or finds a null pointer says that the
    // rwsem is not an inode's, which is no failure.
    let Ok(Some(sb)) = read_ptr(inode, config_u32(&offsets.inode_sb)) else { return Ok(()) };
    let Ok(Some(root)) = read_ptr(sb, config_u32(&locks.sb_root)) else { return Ok(()) };
    if read_ptr(root, config_u32(&locks.dentry_sb)) != Ok(Some(sb)) {
        return Ok(());
    }
    let dev = read_u32(sb, config_u32(&offsets.sb_dev))?;
    let ino = read_u64(inode, config_u32(&offsets.inode_ino))?;
    cause.dev = dev;
    cause.ino = ino;
    cause.flags |= CAUSE_INODE_RWSEM;
    Ok(())
}

/// `contention_end(void *lock, int ret)`, Linux 5.19+, same places: the wait for the
/// lock is over (got, or given up).
#[btf_tracepoint(function = "contention_end")]
pub fn contention_end(ctx: BtfTracePointContext) -> u32 {
    match try_contention_end(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

#[inline(always)]
fn try_contention_end(_ctx: &BtfTracePointContext) -> Result<(), Counter> {
    // Nothing to remove for a spinning wait, or one whose begin was counted lost.
    let _ = CONTENDING.remove(bpf_get_current_pid_tgid() as u32);
    Ok(())
}

/// `d_alloc_parallel(struct dentry *parent, const struct qstr *name,
/// wait_queue_head_t *wq)` (fs/dcache.c; fentry needs 5.5+, and this object 5.8+;
/// loaded where the kernel allows fentry): the current task looks `name` up in
/// `parent`. If another task is already looking the same name up, this one waits
/// for it in D; the name is noted so that the wait can name that task.
#[fentry(function = "d_alloc_parallel")]
pub fn d_alloc_parallel_entry(ctx: FEntryContext) -> u32 {
    match try_d_alloc_parallel_entry(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

#[inline(always)]
fn try_d_alloc_parallel_entry(ctx: &FEntryContext) -> Result<(), Counter> {
    let parent: *const u8 = ctx.arg(0);
    let name: *const u8 = ctx.arg(1);
    let hash_len = read_u64(name, config_u32(&CONFIG.locks.qstr_hash_len))?;
    let key = DentryKey { parent: parent as u64, hash_len };
    DLOOKUP_WAITING.insert(bpf_get_current_pid_tgid() as u32, key, 0).map_err(|_| Counter::DropLookupMapFull)
}

/// `d_alloc_parallel` returns (fexit, same kernels): if the dentry is in lookup
/// (`DCACHE_PAR_LOOKUP`), the current task is the one to look it up: it owns the
/// name until the lookup ends.
#[fexit(function = "d_alloc_parallel")]
pub fn d_alloc_parallel_exit(ctx: FExitContext) -> u32 {
    match try_d_alloc_parallel_exit(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

#[inline(always)]
fn try_d_alloc_parallel_exit(ctx: &FExitContext) -> Result<(), Counter> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // Not there: its entry was not seen (tracing began meanwhile) or counted lost.
    let Some(key) = DLOOKUP_WAITING.get_ptr(tid) else { return Ok(()) };
    // SAFETY: a pointer from a successful lookup of this task's own entry.
    let key = unsafe { *key };
    let _ = DLOOKUP_WAITING.remove(tid);
    let dentry: *const u8 = ctx.arg(3);
    // An ERR_PTR is in the last page of the address space.
    if dentry.is_null() || dentry as u64 >= u64::MAX - 4095 {
        return Ok(());
    }
    let locks = &CONFIG.locks;
    let flags = read_u32(dentry, config_u32(&locks.dentry_flags))?;
    if flags & config_u32(&locks.dcache_par_lookup) != 0 {
        DLOOKUP_OWNERS.insert(key, current_task(), 0).map_err(|_| Counter::DropLookupMapFull)?;
    }
    Ok(())
}

/// `__d_lookup_unhash_wake(struct dentry *dentry)` (fs/dcache.c, Linux 6.0+; the end
/// of an in-lookup dentry's lookup, which wakes its waiters): the name has no owner
/// any more.
#[fentry(function = "__d_lookup_unhash_wake")]
pub fn d_lookup_done(ctx: FEntryContext) -> u32 {
    match try_d_lookup_done(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

#[inline(always)]
fn try_d_lookup_done(ctx: &FEntryContext) -> Result<(), Counter> {
    let dentry: *const u8 = ctx.arg(0);
    let locks = &CONFIG.locks;
    let parent = read_u64(dentry, config_u32(&locks.dentry_parent))?;
    let name = dentry.wrapping_add(config_u32(&locks.dentry_name) as usize);
    let hash_len = read_u64(name, config_u32(&locks.qstr_hash_len))?;
    // Not there: the name was not being looked up (or its owner was counted lost).
    let _ = DLOOKUP_OWNERS.remove(DentryKey { parent, hash_len });
    Ok(())
}

/// If the task waits inside `d_alloc_parallel` for a name another task is looking
/// up, that name and that task.
#[inline(always)]
pub(crate) fn dentry_cause(tid: u32) -> Cause {
    let mut cause = Cause::NONE;
    let Some(key) = DLOOKUP_WAITING.get_ptr(tid) else { return cause };
    // SAFETY: a pointer from a successful lookup of this task's own entry.
    let key = unsafe { *key };
    cause.kind = CAUSE_DENTRY;
    cause.key = key.parent;
    if let Some(owner) = DLOOKUP_OWNERS.get_ptr(key) {
        // SAFETY: a pointer from a successful lookup; the entry is copied at once.
        let owner = unsafe { *owner };
        if owner.tid != tid {
            cause.holder_tid = owner.tid;
            cause.holder_tgid = owner.tgid;
            cause.holder_comm = owner.comm;
            cause.flags |= CAUSE_HOLDER_KNOWN;
        }
    }
    cause
}
