//! sunrpc tasks in flight (classic tracepoints of the `sunrpc` group): the RPC an NFS
//! wait is behind, its server's silence (transmissions, major timeouts).
//!
//! Attached only where the `sunrpc` events exist (the module is loaded); every
//! kernel this object loads on (5.8+) has all five.

use aya_ebpf::{bindings::BPF_NOEXIST, macros::tracepoint, programs::TracePointContext};
use dstrace_common::{rpc_event, Counter, RpcCall, RpcKey, CONFIG_RPC};

use crate::maps::{count, counted, CONFIG, RPC_INFLIGHT};
use crate::read::{config_u32, current_task, now_ns, read_data_loc, read_field};

/// `sunrpc:rpc_task_begin` (`rpc_set_active`, net/sunrpc/sched.c; the record has
/// had `task_id` and `client_id` since 4.18): an RPC task starts. It fires in the
/// task that starts the RPC, synchronous or not, so the call is noted under it; the
/// other sunrpc events may run in `rpciod`.
#[tracepoint(category = "sunrpc", name = "rpc_task_begin")]
pub fn rpc_task_begin(ctx: TracePointContext) -> u32 {
    match try_rpc_task_begin(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

#[inline(always)]
fn try_rpc_task_begin(ctx: &TracePointContext) -> Result<(), Counter> {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return Ok(());
    }
    let Some(key) = rpc_key(ctx, rpc_event::BEGIN)? else { return Ok(()) };
    let call = RpcCall::new(current_task(), now_ns());
    // BPF_NOEXIST: an entry made by a later event of a task begun before tracing
    // started is kept as it is.
    if RPC_INFLIGHT.insert(key, call, u64::from(BPF_NOEXIST)).is_err()
        && RPC_INFLIGHT.get_ptr_mut(key).is_none()
    {
        return Err(Counter::DropRpcMapFull);
    }
    Ok(())
}

/// `sunrpc:rpc_request` (`call_start`, net/sunrpc/clnt.c; 5.2+): the call's RPC
/// program, version and procedure.
#[tracepoint(category = "sunrpc", name = "rpc_request")]
pub fn rpc_request(ctx: TracePointContext) -> u32 {
    match try_rpc_request(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

#[inline(always)]
fn try_rpc_request(ctx: &TracePointContext) -> Result<(), Counter> {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return Ok(());
    }
    let Some(call) = rpc_call(ctx, rpc_event::REQUEST)? else { return Ok(()) };
    let offsets = &CONFIG.rpc;
    // Counted here, each: one field lost does not lose the others.
    // SAFETY: `call` points to a value of `RPC_INFLIGHT`, valid for this program's
    // run; the record is read through the probe helpers only.
    unsafe {
        if let Some(Some(version)) = counted(read_field::<u32>(ctx, config_u32(&offsets.request_version))) {
            (*call).version = version;
        }
        counted(read_data_loc(ctx, config_u32(&offsets.request_progname), &mut (*call).progname));
        counted(read_data_loc(ctx, config_u32(&offsets.request_procname), &mut (*call).procname));
    }
    Ok(())
}

/// `sunrpc:xprt_transmit` (`xprt_transmit`, net/sunrpc/xprt.c; 5.2+): the request goes
/// on the wire, once more each time it is retransmitted.
#[tracepoint(category = "sunrpc", name = "xprt_transmit")]
pub fn xprt_transmit(ctx: TracePointContext) -> u32 {
    match try_xprt_transmit(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

#[inline(always)]
fn try_xprt_transmit(ctx: &TracePointContext) -> Result<(), Counter> {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return Ok(());
    }
    let Some(call) = rpc_call(ctx, rpc_event::TRANSMIT)? else { return Ok(()) };
    // Counted here: the transmission counts without its xid.
    let xid = counted(read_field::<u32>(ctx, config_u32(&CONFIG.rpc.transmit_xid))).flatten();
    // SAFETY: as in `try_rpc_request`.
    unsafe {
        (*call).transmits += 1;
        if let Some(xid) = xid {
            (*call).xid = xid;
        }
    }
    Ok(())
}

/// `sunrpc:rpc_timeout_status` (`rpc_check_timeout`, net/sunrpc/clnt.c; 5.2+): a major
/// timeout, after which the kernel logs "server ... not responding, still trying"
/// (hard mounts) or fails the call (soft ones).
#[tracepoint(category = "sunrpc", name = "rpc_timeout_status")]
pub fn rpc_timeout_status(ctx: TracePointContext) -> u32 {
    match try_rpc_timeout_status(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

#[inline(always)]
fn try_rpc_timeout_status(ctx: &TracePointContext) -> Result<(), Counter> {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return Ok(());
    }
    let Some(call) = rpc_call(ctx, rpc_event::TIMEOUT)? else { return Ok(()) };
    // SAFETY: as in `try_rpc_request`.
    unsafe {
        if (*call).first_timeout_ns == 0 {
            (*call).first_timeout_ns = now_ns();
        }
        (*call).timeouts += 1;
    }
    Ok(())
}

/// `sunrpc:rpc_task_end` (`rpc_exit_task`, net/sunrpc/sched.c; 5.5+, commit
/// a264abad51d8): the RPC task is over.
#[tracepoint(category = "sunrpc", name = "rpc_task_end")]
pub fn rpc_task_end(ctx: TracePointContext) -> u32 {
    match try_rpc_task_end(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

#[inline(always)]
fn try_rpc_task_end(ctx: &TracePointContext) -> Result<(), Counter> {
    if config_u32(&CONFIG.flags) & CONFIG_RPC == 0 {
        return Ok(());
    }
    if let Some(key) = rpc_key(ctx, rpc_event::END)? {
        // Not there: counted lost when it was to be made.
        let _ = RPC_INFLIGHT.remove(key);
    }
    Ok(())
}

/// The RPC task a sunrpc record is about; `None` if the event lacks its ids.
#[inline(always)]
fn rpc_key(ctx: &TracePointContext, event: usize) -> Result<Option<RpcKey>, Counter> {
    let offsets = &CONFIG.rpc;
    let (Some(task_id), Some(client_id)) = (offsets.task_id.get(event), offsets.client_id.get(event)) else {
        return Ok(None);
    };
    let Some(task_id) = read_field::<u32>(ctx, config_u32(task_id))? else { return Ok(None) };
    let Some(client_id) = read_field::<u32>(ctx, config_u32(client_id))? else { return Ok(None) };
    Ok(Some(RpcKey { client_id, task_id }))
}

/// The entry of the RPC task a sunrpc record is about, made if the task began
/// before tracing did (its begin time and starter unknown: the current task is
/// noted, which for a synchronous RPC is the caller).
#[inline(always)]
fn rpc_call(ctx: &TracePointContext, event: usize) -> Result<Option<*mut RpcCall>, Counter> {
    let Some(key) = rpc_key(ctx, event)? else { return Ok(None) };
    if let Some(call) = RPC_INFLIGHT.get_ptr_mut(key) {
        return Ok(Some(call));
    }
    // BPF_NOEXIST: another CPU may have made it meanwhile; either way the lookup
    // below finds the one entry, unless the map is full.
    let _ = RPC_INFLIGHT.insert(key, RpcCall::new(current_task(), 0), u64::from(BPF_NOEXIST));
    RPC_INFLIGHT.get_ptr_mut(key).map(Some).ok_or(Counter::DropRpcMapFull)
}
