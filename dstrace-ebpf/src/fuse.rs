//! FUSE requests not answered yet (`fuse:fuse_request_send`/`_end`).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use dstrace_common::{Counter, FuseKey, FuseRequest, CONFIG_FUSE_REQUESTS};

use crate::maps::{count, counted, CONFIG, FUSE_INFLIGHT};
use crate::read::{config_u32, current_task, now_ns, read_ptr, read_u32, read_u64};

/// `fuse_request_send(const struct fuse_req *req)`, Linux 6.13+: the event is in
/// fs/fuse/fuse_trace.h, fired in fs/fuse/dev.c once the request has its unique id,
/// as it is queued for the daemon. It is in flight until `fuse_request_end`; how long
/// the oldest has waited says how long the daemon has been silent.
#[btf_tracepoint(function = "fuse_request_send")]
pub fn fuse_request_send(ctx: BtfTracePointContext) -> u32 {
    match try_fuse_request_send(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

#[inline(always)]
fn try_fuse_request_send(ctx: &BtfTracePointContext) -> Result<(), Counter> {
    if config_u32(&CONFIG.flags) & CONFIG_FUSE_REQUESTS == 0 {
        return Ok(());
    }
    let req: *const u8 = ctx.arg(0);
    let Some(key) = fuse_key(req)? else { return Ok(()) };
    let fuse = &CONFIG.fuse;
    // Counted here, each: the request is tracked without them.
    let request = FuseRequest {
        sent_ns: now_ns(),
        nodeid: counted(read_u64(req, config_u32(&fuse.req_nodeid))).unwrap_or(0),
        opcode: counted(read_u32(req, config_u32(&fuse.req_opcode))).unwrap_or(0),
        _pad: 0,
        task: current_task(),
    };
    FUSE_INFLIGHT.insert(key, request, 0).map_err(|_| Counter::DropFuseMapFull)
}

/// `fuse_request_end(const struct fuse_req *req)`, Linux 6.13+: `trace_fuse_request_end()`
/// in `fuse_request_end()`, fs/fuse/dev.c: the request is over (answered, or the
/// connection ended).
#[btf_tracepoint(function = "fuse_request_end")]
pub fn fuse_request_end(ctx: BtfTracePointContext) -> u32 {
    match try_fuse_request_end(&ctx) {
        Ok(()) => 0,
        Err(counter) => {
            count(counter);
            0
        }
    }
}

#[inline(always)]
fn try_fuse_request_end(ctx: &BtfTracePointContext) -> Result<(), Counter> {
    if config_u32(&CONFIG.flags) & CONFIG_FUSE_REQUESTS == 0 {
        return Ok(());
    }
    let req: *const u8 = ctx.arg(0);
    if let Some(key) = fuse_key(req)? {
        // Not there: sent before tracing began, or counted lost.
        let _ = FUSE_INFLIGHT.remove(key);
    }
    Ok(())
}

/// The connection and unique id of a request: `req->fm->fc->dev`, `req->in.h.unique`;
/// `None` for a request without a mount or connection.
#[inline(always)]
fn fuse_key(req: *const u8) -> Result<Option<FuseKey>, Counter> {
    let fuse = &CONFIG.fuse;
    let unique = read_u64(req, config_u32(&fuse.req_unique))?;
    let Some(fm) = read_ptr(req, config_u32(&fuse.req_fm))? else { return Ok(None) };
    let Some(fc) = read_ptr(fm, config_u32(&fuse.fm_fc))? else { return Ok(None) };
    let dev = read_u32(fc, config_u32(&fuse.fc_dev))?;
    Ok(Some(FuseKey { dev, _pad: 0, unique }))
}
