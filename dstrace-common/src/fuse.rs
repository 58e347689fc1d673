//! FUSE requests not answered yet (`FUSE_INFLIGHT`).

use crate::TaskId;

/// A FUSE request: the connection (the mount's device) and its unique id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FuseKey {
    /// `fuse_conn.dev` (kernel encoding).
    pub dev: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// `fuse_in_header.unique`.
    pub unique: u64,
}
const _: () = assert!(core::mem::size_of::<FuseKey>() == 16);

/// A FUSE request not answered yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuseRequest {
    /// When it was sent (`bpf_ktime_get_ns`).
    pub sent_ns: u64,
    /// The inode it is about (`fuse_in_header.nodeid`).
    pub nodeid: u64,
    /// `fuse_in_header.opcode` (`FUSE_LOOKUP` = 1, ...).
    pub opcode: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The task that sent it.
    pub task: TaskId,
}
const _: () = assert!(core::mem::size_of::<FuseRequest>() == 48);
