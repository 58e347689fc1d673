//! What the programs read: kernel memory (through the probe helpers, which never
//! fault), classic tracepoint records, `CONFIG` as the loader set it, the clock and
//! the current task.
//!
//! A read that fails is an `Err(Counter::DropReadFailed)`, for the caller to pass on
//! with `?` (the program's entry point counts it) or to count where it goes on
//! without the value (`maps::counted`). A value the kernel does not have (a null
//! pointer, a field the event lacks, an offset this kernel lacks: [`known`]) is not a
//! failure: it is a `None`.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes,
    },
    programs::TracePointContext,
    EbpfContext as _,
};
use dstrace_common::{Counter, TaskId, COMM_LEN, NO_OFFSET};

use crate::maps::counted;

/// Reads a `T` at `offset` bytes into a kernel object.
#[inline(always)]
fn read<T>(base: *const u8, offset: u32) -> Result<T, Counter> {
    // SAFETY: a read of kernel memory through the probe helper, which checks it.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
        .map_err(|_| Counter::DropReadFailed)
}

/// Reads `out.len()` bytes at `offset` bytes into a kernel object into `out` (zeros
/// when it fails): in place, never through the stack.
#[inline(always)]
pub(crate) fn read_bytes(base: *const u8, offset: u32, out: &mut [u8]) -> Result<(), Counter> {
    // SAFETY: a read of kernel memory through the probe helper, which checks it and
    // writes at most `out.len()` bytes.
    unsafe { bpf_probe_read_kernel_buf(base.wrapping_add(offset as usize), out) }
        .map_err(|_| Counter::DropReadFailed)
}

/// Copies a NUL-terminated kernel string at `address` into `out` (cut to its length,
/// NUL-terminated; `out[0]` is 0 when the read fails).
#[inline(always)]
pub(crate) fn read_str(address: *const u8, out: &mut [u8]) -> Result<(), Counter> {
    // SAFETY: a read of kernel memory through the probe helper, which checks it and
    // stops at `out`'s length.
    unsafe { bpf_probe_read_kernel_str_bytes(address, out) }.map(|_| ()).map_err(|_| {
        if let Some(first) = out.first_mut() {
            *first = 0;
        }
        Counter::DropReadFailed
    })
}

/// Reads a `u16` at `offset` bytes into a kernel object.
#[inline(always)]
pub(crate) fn read_u16(base: *const u8, offset: u32) -> Result<u16, Counter> {
    read::<u16>(base, offset)
}

/// Reads a `u32` at `offset` bytes into a kernel object.
#[inline(always)]
pub(crate) fn read_u32(base: *const u8, offset: u32) -> Result<u32, Counter> {
    read::<u32>(base, offset)
}

/// Reads a `u64` at `offset` bytes into a kernel object.
#[inline(always)]
pub(crate) fn read_u64(base: *const u8, offset: u32) -> Result<u64, Counter> {
    read::<u64>(base, offset)
}

/// Reads a pointer at `offset` bytes into a kernel object: `None` when it is null.
#[inline(always)]
pub(crate) fn read_ptr(base: *const u8, offset: u32) -> Result<Option<*const u8>, Counter> {
    let ptr = read_u64(base, offset)?;
    Ok((ptr != 0).then_some(ptr as *const u8))
}

/// Reads a field of a classic tracepoint's record; `u32::MAX` marks a field the
/// event does not have (`None`).
#[inline(always)]
pub(crate) fn read_field<T>(ctx: &TracePointContext, offset: u32) -> Result<Option<T>, Counter> {
    if offset == u32::MAX {
        return Ok(None);
    }
    // SAFETY: a read of the record through the probe helper, which checks it.
    unsafe { ctx.read_at::<T>(offset as usize) }.map(Some).map_err(|_| Counter::DropReadFailed)
}

/// Copies a `__data_loc char[]` field of a classic tracepoint's record (a `u32`:
/// the string's offset in the record in the low half, its length in the high half)
/// into `out`, NUL-terminated; leaves `out` as it is when the field is missing.
#[inline(always)]
pub(crate) fn read_data_loc(ctx: &TracePointContext, offset: u32, out: &mut [u8]) -> Result<(), Counter> {
    let Some(loc) = read_field::<u32>(ctx, offset)? else { return Ok(()) };
    let start = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    // SAFETY: a read of the record through the probe helper, which checks it and
    // stops at `out`'s length.
    unsafe { bpf_probe_read_kernel_str_bytes(start, out) }.map(|_| ()).map_err(|_| Counter::DropReadFailed)
}

/// Reads a `CONFIG` field as set by the loader, not as seen by the compiler.
#[inline(always)]
pub(crate) fn config_u32(field: &u32) -> u32 {
    // SAFETY: a valid reference; the volatile read stops the compiler from folding
    // the build-time placeholder into the code.
    unsafe { core::ptr::read_volatile(field) }
}

/// A `CONFIG` offset as set by the loader, `None` when this kernel lacks the field
/// ([`NO_OFFSET`]).
#[inline(always)]
pub(crate) fn known(field: &u32) -> Option<u32> {
    let offset = config_u32(field);
    (offset != NO_OFFSET).then_some(offset)
}

/// As [`config_u32`], for a `u64` field.
#[inline(always)]
pub(crate) fn config_u64(field: &u64) -> u64 {
    // SAFETY: as in `config_u32`.
    unsafe { core::ptr::read_volatile(field) }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of every timestamp in the records.
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: the helper takes no argument and cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

/// The `comm` of the task running now; zeros, counted, if the helper fails (it does
/// not for a task).
#[inline(always)]
pub(crate) fn current_comm() -> [u8; COMM_LEN] {
    counted(bpf_get_current_comm().map_err(|_| Counter::DropReadFailed)).unwrap_or([0; COMM_LEN])
}

/// The task running now.
#[inline(always)]
pub(crate) fn current_task() -> TaskId {
    let pid_tgid = bpf_get_current_pid_tgid();
    TaskId { tid: pid_tgid as u32, tgid: (pid_tgid >> 32) as u32, comm: current_comm() }
}
