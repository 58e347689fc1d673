//! sunrpc tasks in flight (`RPC_INFLIGHT`).

use crate::TaskId;

/// Index of each sunrpc event in [`RpcOffsets::task_id`](crate::RpcOffsets::task_id) and
/// [`RpcOffsets::client_id`](crate::RpcOffsets::client_id).
pub mod rpc_event {
    /// `rpc_task_begin`.
    pub const BEGIN: usize = 0;
    /// `rpc_request`.
    pub const REQUEST: usize = 1;
    /// `xprt_transmit`.
    pub const TRANSMIT: usize = 2;
    /// `rpc_timeout_status`.
    pub const TIMEOUT: usize = 3;
    /// `rpc_task_end`.
    pub const END: usize = 4;
}

/// An RPC task: its client and its debug id, as the sunrpc tracepoints name it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RpcKey {
    /// `rpc_clnt.cl_clid`.
    pub client_id: u32,
    /// `rpc_task.tk_pid`.
    pub task_id: u32,
}
const _: () = assert!(core::mem::size_of::<RpcKey>() == 8);

/// Length of the program name kept for an RPC (`nfs`, `lockd`, `mount`, ...).
pub const RPC_PROGNAME_LEN: usize = 16;
/// Length of the procedure name kept for an RPC (`GETATTR`, `LOCK`, `WRITE`, ...).
pub const RPC_PROCNAME_LEN: usize = 24;

/// An RPC task in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcCall {
    /// When the task began (`bpf_ktime_get_ns`); 0 when it began before tracing.
    pub started_ns: u64,
    /// When the first major timeout was seen ("server not responding"); 0 = none.
    pub first_timeout_ns: u64,
    /// The task that began it (a synchronous RPC runs in the caller; an
    /// asynchronous one begins there and runs in `rpciod`).
    pub task: TaskId,
    /// The transaction id of the last transmission (host order).
    pub xid: u32,
    /// The program's version (`rpc_request.version`, 0 = not seen).
    pub version: u32,
    /// Transmissions seen (more than one: retransmitted).
    pub transmits: u32,
    /// Major timeouts seen.
    pub timeouts: u32,
    /// The RPC program (`nfs`, `lockd`, ...), NUL-padded.
    pub progname: [u8; RPC_PROGNAME_LEN],
    /// The procedure (`GETATTR`, `LOCK`, ...), NUL-padded.
    pub procname: [u8; RPC_PROCNAME_LEN],
}
const _: () = assert!(core::mem::size_of::<RpcCall>() == 96);

impl RpcCall {
    /// A call first seen now, begun by `task`.
    pub const fn new(task: TaskId, started_ns: u64) -> RpcCall {
        RpcCall {
            started_ns,
            first_timeout_ns: 0,
            task,
            xid: 0,
            version: 0,
            transmits: 0,
            timeouts: 0,
            progname: [0; RPC_PROGNAME_LEN],
            procname: [0; RPC_PROCNAME_LEN],
        }
    }
}
