//! FUSE requests not answered yet (`fuse:fuse_request_send`/`_end`).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use dstrace_common::{Counter, FuseKey, FuseRequest, CONFIG_FUSE_REQUESTS};

use crate::maps::{count, CONFIG, FUSE_INFLIGHT};
use crate::read::{config_u32, current_task, now_ns, read_ptr, read_u32, read_u64};

/// `fuse_request_send(const struct fuse_req *req)` (fs/fuse/fuse_trace.h, 6.13+):
/// a request goes to the FUSE daemon; it is in flight until `fuse_request_end`.
/// How long the oldest has waited says how long the daemon has been silent.
#[btf_tracepoint(function = "fuse_request_send")]
pub fn fuse_request_send(ctx: BtfTracePointContext) -> u32 {
    if config_u32(&CONFIG.flags) & CONFIG_FUSE_REQUESTS == 0 {
        return 0;
    }
    let req: *const u8 = ctx.arg(0);
    let Some(key) = fuse_key(req) else { return 0 };
    let fuse = &CONFIG.fuse;
    let request = FuseRequest {
        sent_ns: now_ns(),
        nodeid: read_u64(req, config_u32(&fuse.req_nodeid)).unwrap_or(0),
        opcode: read_u32(req, config_u32(&fuse.req_opcode)).unwrap_or(0),
        _pad: 0,
        task: current_task(),
    };
    if FUSE_INFLIGHT.insert(key, request, 0).is_err() {
        count(Counter::DropFuseMapFull);
    }
    0
}

/// `fuse_request_end(const struct fuse_req *req)`: the request is over.
#[btf_tracepoint(function = "fuse_request_end")]
pub fn fuse_request_end(ctx: BtfTracePointContext) -> u32 {
    if config_u32(&CONFIG.flags) & CONFIG_FUSE_REQUESTS == 0 {
        return 0;
    }
    let req: *const u8 = ctx.arg(0);
    if let Some(key) = fuse_key(req) {
        let _ = FUSE_INFLIGHT.remove(key);
    }
    0
}

/// The connection and unique id of a request: `req->fm->fc->dev`, `req->in.h.unique`.
#[inline(always)]
pub(crate) fn fuse_key(req: *const u8) -> Option<FuseKey> {
    let fuse = &CONFIG.fuse;
    let unique = read_u64(req, config_u32(&fuse.req_unique))?;
    let fm = read_ptr(req, config_u32(&fuse.req_fm))?;
    let fc = read_ptr(fm, config_u32(&fuse.fm_fc))?;
    let dev = read_u32(fc, config_u32(&fuse.fc_dev))?;
    Some(FuseKey { dev, _pad: 0, unique })
}
