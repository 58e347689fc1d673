//! Capacity of the maps; userspace and the kernel side agree through these.

/// Tasks that can be tracked in D at once.
pub const INFLIGHT_ENTRIES: u32 = 32_768;
/// Distinct stacks kept (each entry holds 127 frames: about 1 KiB).
pub const STACK_ENTRIES: u32 = 8_192;
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 21;
/// Distinct aggregation keys.
pub const AGG_ENTRIES: u32 = 10_240;
/// Entries of each filter set.
pub const FILTER_ENTRIES: u32 = 64;
/// FUSE requests tracked at once.
pub const FUSE_ENTRIES: u32 = 8_192;
/// sunrpc tasks tracked at once.
pub const RPC_ENTRIES: u32 = 8_192;
/// Name lookups tracked at once (tasks in `d_alloc_parallel`, dentries in lookup).
pub const DLOOKUP_ENTRIES: u32 = 8_192;
/// Tasks waiting for a kernel lock at once.
pub const CONTENDING_ENTRIES: u32 = 8_192;
/// Syscall numbers described in `SYSCALL_ARGS`.
pub const SYSCALLS: u32 = 1024;
/// Tids, and directories, one task iterator pass looks for (more are read in
/// several passes).
pub const ITER_WANTED_ENTRIES: u32 = 4096;
