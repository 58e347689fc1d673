//! The sunrpc tracepoints' records: where the fields the kernel side reads lie.
//!
//! The events are classic tracepoints whose records tracefs describes, so the
//! offsets are read from their `format` files (the sunrpc module of Debian's 5.10
//! has no BTF). The events and fields used exist since Linux 5.2 (`xprt_transmit`
//! with `xid`, `rpc_request` with names); each is checked, and what lacks is said.
//! What the RPCs mean for a wait is [`crate::model::rpc`]'s.

use dstrace_common::{names, rpc_event, RpcOffsets};

use crate::kernel::tracefs;

/// The events, in the order of [`RpcOffsets::task_id`] (`rpc_event`); the kernel
/// side's program for each is named after it.
pub const EVENTS: [&str; 5] = [
    names::PROG_RPC_BEGIN,
    names::PROG_RPC_REQUEST,
    names::PROG_RPC_TRANSMIT,
    names::PROG_RPC_TIMEOUT,
    names::PROG_RPC_END,
];

/// The offsets of the fields the kernel side reads, from this kernel's tracefs; an
/// error says what is missing.
pub fn offsets() -> Result<RpcOffsets, String> {
    let mut offsets = RpcOffsets::UNSET;
    for (index, event) in EVENTS.iter().enumerate() {
        let fields = tracefs::format("sunrpc", event)?;
        offsets.task_id[index] = tracefs::offset_of(&fields, event, "task_id", 4)?;
        offsets.client_id[index] = tracefs::offset_of(&fields, event, "client_id", 4)?;
        match index {
            rpc_event::REQUEST => {
                offsets.request_version = tracefs::offset_of(&fields, event, "version", 4)?;
                offsets.request_progname = tracefs::offset_of(&fields, event, "progname", 4)?;
                offsets.request_procname = tracefs::offset_of(&fields, event, "procname", 4)?;
            }
            rpc_event::TRANSMIT => offsets.transmit_xid = tracefs::offset_of(&fields, event, "xid", 4)?,
            _ => {}
        }
    }
    Ok(offsets)
}
