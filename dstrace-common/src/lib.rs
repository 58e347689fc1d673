//! Everything that crosses the kernel/user boundary, defined once.
//!
//! The eBPF programs (`dstrace-ebpf`) and the userspace collector (`dstrace`) both
//! compile this crate, so a record written by the kernel side is read by userspace
//! with the very same layout. Every type here is `#[repr(C)]`, `Copy`, has its
//! padding spelled out as named fields, and carries a compile-time size assertion:
//! a change of layout breaks the build instead of the decoding.
//!
//! Map and global names are constants here too, and a test in `tests/` asserts
//! that the loaded object has each of them.
//!
//! One module per subject, every item re-exported here, so that each has one path
//! (`dstrace_common::InFlight`); [`names`] and [`limits`] stay modules.
//!
//! * [`names`]: the programs, maps and globals of the eBPF object;
//! * [`limits`]: the capacity of the maps;
//! * `config`: what userspace tells the kernel side ([`Config`], the kernel struct
//!   offsets, the `CONFIG_*` flags, the `SYSCALL_ARGS` entries);
//! * `wait`: a task in D and its end ([`InFlight`], [`WaitEvent`], [`Waker`],
//!   [`Cause`], [`Target`], [`Walk`]) and the kernel's task states and lock flags;
//! * `iter`: the task iterator's records ([`TaskRecord`], [`FuseFileRecord`]);
//! * `agg`: in-kernel aggregation ([`AggKey`], [`AggValue`], the histogram);
//! * `fuse`, `rpc`: FUSE requests and sunrpc tasks in flight;
//! * `counter`: the kernel side's counters ([`Counter`]);
//! * `pod`: `aya::Pod` for userspace (the `user` feature).
#![no_std]

mod agg;
mod config;
mod counter;
mod fuse;
mod iter;
pub mod limits;
pub mod names;
#[cfg(feature = "user")]
mod pod;
mod rpc;
mod wait;

pub use agg::{hist_bucket, hist_bucket_floor_ns, AggKey, AggValue, HIST_BUCKETS};
pub use config::{
    syscall_arg_indexes, syscall_args, Config, FuseOffsets, IterOffsets, LockOffsets, Offsets, RpcOffsets,
    VfsOffsets, CONFIG_FILTER_CGROUP, CONFIG_FILTER_COMM, CONFIG_FILTER_TGID, CONFIG_FILTER_TID,
    CONFIG_FUSE_REQUESTS, CONFIG_INCLUDE_IDLE, CONFIG_LOCK_OWNERS, CONFIG_RPC, CONFIG_SYSCALL_TARGET,
    CONFIG_USER_STACKS, CONFIG_VFS, NO_OFFSET,
};
pub use counter::Counter;
pub use fuse::{FuseKey, FuseRequest};
pub use iter::{
    FuseFileRecord, FuseRequestRecord, PeerRecord, TaskRecord, BLOCKER_TYPE_MASK, BLOCKER_TYPE_MUTEX,
    BLOCKER_TYPE_RWSEM_READER, BLOCKER_TYPE_RWSEM_WRITER, BLOCKER_TYPE_SEM, FUSE_DEV_RDEV, FUSE_PENDING_MAX,
    FUSE_PQ_HASH_SIZE, FUSE_REQUESTS_KEPT, FUSE_REQUEST_READ, HAVE_BLOCKER, HAVE_BLOCKER_MUTEX_ONLY,
    HAVE_CGROUP, HAVE_CONNECTION, HAVE_CPU, HAVE_CREATE_TIME, HAVE_EXEC_START, HAVE_FD_FILE, HAVE_PENDING,
    HAVE_PROCESSING, HAVE_SYSCALL, HAVE_WALK, ITER_NAME_LEN, ITER_PATH_LEN, ITER_RWSEM_WAITERS,
    ITER_STACK_FRAMES, LIST_HEAD_SIZE, OWNER_FLAGS_MASK, PEER_KNOWN, PEER_READER_HINT, RWSEM_HELD_MASK,
    RWSEM_READER_OWNED, S_IFCHR, S_IFMT, WAIT_LIST_NONE, WAIT_LIST_READER, WAIT_LIST_WRITER,
};
pub use rpc::{rpc_event, RpcCall, RpcKey, RPC_PROCNAME_LEN, RPC_PROGNAME_LEN};
pub use wait::{
    Cause, DentryKey, InFlight, Target, TaskId, WaitEvent, Waker, Walk, CAUSE_DENTRY, CAUSE_HOLDER_KNOWN,
    CAUSE_HOLDER_READER_HINT, CAUSE_INODE_RWSEM, CAUSE_LOCK, CAUSE_NONE, COMM_LEN, LCB_F_MUTEX, LCB_F_PERCPU,
    LCB_F_READ, LCB_F_RT, LCB_F_SPIN, LCB_F_WRITE, NO_STACK, PATH_LEN, PF_KTHREAD, TASK_DEAD, TASK_NOLOAD,
    TASK_UNINTERRUPTIBLE, TASK_WAKEKILL,
};
