//! sunrpc tasks in flight (classic tracepoints of the `sunrpc` group): the RPC an NFS
//! wait is behind, its server's silence (transmissions, major timeouts).

use aya_ebpf::{bindings::BPF_NOEXIST, macros::tracepoint, programs::TracePointContext};
use dstrace_common::{rpc_event, Counter, RpcCall, RpcKey, CONFIG_RPC};

use crate::maps::{count, CONFIG, RPC_INFLIGHT};
use crate::read::{config_u32, current_task, now_ns, read_data_loc, read_field};

/// `sunrpc:rpc_task_begin` (`rpc_set_active`, net/sunrpc/sched.c; the record has
/// had `task_id` and `client_id` since 4.18): an RPC task starts. It fires in the
/// task that starts the RPC, synchronous or not, so the call is noted under it; the
/// other sunrpc events may run in `rpciod`.
#[tracepoint(category = "sunrpc", name = "rpc_task_begin")]
pub fn rpc_task_begin(ctx: TracePointContext) -> u32 {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return 0;
    }
    let Some(key) = rpc_key(&ctx, rpc_event::BEGIN) else { return 0 };
    let call = RpcCall::new(current_task(), now_ns());
    // BPF_NOEXIST: an entry made by a later event of a task begun before tracing
    // started is kept as it is.
    if RPC_INFLIGHT.insert(key, call, u64::from(BPF_NOEXIST)).is_err()
        && RPC_INFLIGHT.get_ptr_mut(key).is_none()
    {
        count(Counter::DropRpcMapFull);
    }
    0
}

/// `sunrpc:rpc_request` (`call_start`, net/sunrpc/clnt.c; 5.2+): the call's RPC
/// program, version and procedure.
#[tracepoint(category = "sunrpc", name = "rpc_request")]
pub fn rpc_request(ctx: TracePointContext) -> u32 {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return 0;
    }
    let Some(call) = rpc_call(&ctx, rpc_event::REQUEST) else { return 0 };
    let offsets = &CONFIG.rpc;
    // SAFETY: `call` points to a value of `RPC_INFLIGHT`, valid for this program's
    // run; the record is read through the probe helpers only.
    unsafe {
        if let Some(version) = read_field::<u32>(&ctx, config_u32(&offsets.request_version)) {
            (*call).version = version;
        }
        read_data_loc(&ctx, config_u32(&offsets.request_progname), &mut (*call).progname);
        read_data_loc(&ctx, config_u32(&offsets.request_procname), &mut (*call).procname);
    }
    0
}

/// `sunrpc:xprt_transmit` (`xprt_transmit`, net/sunrpc/xprt.c; 5.2+): the request goes
/// on the wire, once more each time it is retransmitted.
#[tracepoint(category = "sunrpc", name = "xprt_transmit")]
pub fn xprt_transmit(ctx: TracePointContext) -> u32 {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return 0;
    }
    let Some(call) = rpc_call(&ctx, rpc_event::TRANSMIT) else { return 0 };
    let xid = read_field::<u32>(&ctx, config_u32(&CONFIG.rpc.transmit_xid));
    // SAFETY: as in `rpc_request`.
    unsafe {
        (*call).transmits += 1;
        if let Some(xid) = xid {
            (*call).xid = xid;
        }
    }
    0
}

/// `sunrpc:rpc_timeout_status` (`rpc_check_timeout`, net/sunrpc/clnt.c; 5.2+): a major
/// timeout, after which the kernel logs "server ... not responding, still trying"
/// (hard mounts) or fails the call (soft ones).
#[tracepoint(category = "sunrpc", name = "rpc_timeout_status")]
pub fn rpc_timeout_status(ctx: TracePointContext) -> u32 {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return 0;
    }
    let Some(call) = rpc_call(&ctx, rpc_event::TIMEOUT) else { return 0 };
    // SAFETY: as in `rpc_request`.
    unsafe {
        if (*call).first_timeout_ns == 0 {
            (*call).first_timeout_ns = now_ns();
        }
        (*call).timeouts += 1;
    }
    0
}

/// `sunrpc:rpc_task_end` (`rpc_release_task`... `rpc_final_put_task`, net/sunrpc/sched.c):
/// the RPC task is over.
#[tracepoint(category = "sunrpc", name = "rpc_task_end")]
pub fn rpc_task_end(ctx: TracePointContext) -> u32 {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return 0;
    }
    if let Some(key) = rpc_key(&ctx, rpc_event::END) {
        let _ = RPC_INFLIGHT.remove(key);
    }
    0
}

/// The RPC task a sunrpc record is about.
#[inline(always)]
pub(crate) fn rpc_key(ctx: &TracePointContext, event: usize) -> Option<RpcKey> {
    let offsets = &CONFIG.rpc;
    let task_id = read_field::<u32>(ctx, config_u32(offsets.task_id.get(event)?))?;
    let client_id = read_field::<u32>(ctx, config_u32(offsets.client_id.get(event)?))?;
    Some(RpcKey { client_id, task_id })
}

/// The entry of the RPC task a sunrpc record is about, made if the task began
/// before tracing did (its begin time and starter unknown: the current task is
/// noted, which for a synchronous RPC is the caller).
#[inline(always)]
pub(crate) fn rpc_call(ctx: &TracePointContext, event: usize) -> Option<*mut RpcCall> {
    let key = rpc_key(ctx, event)?;
    if let Some(call) = RPC_INFLIGHT.get_ptr_mut(key) {
        return Some(call);
    }
    if RPC_INFLIGHT.insert(key, RpcCall::new(current_task(), 0), u64::from(BPF_NOEXIST)).is_err() {
        count(Counter::DropRpcMapFull);
    }
    RPC_INFLIGHT.get_ptr_mut(key)
}
