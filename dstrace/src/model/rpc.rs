//! NFS and sunrpc: the RPC a task in D waits for, and whether its server answers.
//!
//! A task stuck on NFS sleeps in `rpc_wait_bit_killable` (or on a page whose write
//! is an RPC) and its stack says nothing of which call, to which server, since when.
//! The sunrpc tracepoints do: the kernel side (`dstrace-ebpf`, `rpc_*` programs)
//! keeps each RPC task in flight under the task that began it, with its program and
//! procedure (`rpc_request`), transmissions and xid (`xprt_transmit`) and major
//! timeouts (`rpc_timeout_status`: after one the kernel logs "server ... not
//! responding"), until `rpc_task_end`. Here a wait is matched with the RPCs its task
//! began, for the chain (`chain::Link::Rpc`) and the advice.
//!
//! The record layouts of those tracepoints are read in [`crate::kernel::sunrpc`].

use dstrace_common::{RpcCall, RpcKey};

use crate::{kernel::decode::comm_string, model::link::Link};

/// The chain link of the RPCs task `tid` began that are still in flight, at
/// `now_ns` (CLOCK_MONOTONIC): the one with the most major timeouts (then the
/// oldest) is described, the others counted.
pub fn link(tid: u32, calls: &[(RpcKey, RpcCall)], now_ns: u64) -> Option<Link> {
    let mine: Vec<&RpcCall> =
        calls.iter().map(|(_, call)| call).filter(|call| call.task.tid == tid).collect();
    let call = mine.iter().copied().max_by_key(|call| {
        // Most timeouts first; among equals, the oldest (unknown starts last).
        (call.timeouts, std::cmp::Reverse(if call.started_ns == 0 { u64::MAX } else { call.started_ns }))
    })?;
    let since = |at_ns: u64| (at_ns != 0).then(|| now_ns.saturating_sub(at_ns));
    Some(Link::Rpc {
        program: comm_string(&call.progname),
        version: call.version,
        procedure: comm_string(&call.procname),
        xid: (call.transmits > 0).then_some(call.xid),
        age_ns: since(call.started_ns),
        transmits: call.transmits,
        timeouts: call.timeouts,
        not_responding_ns: since(call.first_timeout_ns),
        others: mine.len() as u32 - 1,
    })
}

/// A call as people name it: `NFSv4 LOCK`, `NFSv3 FSSTAT`, `lockd v4 LOCK` (NLM).
pub fn call_name(program: &str, version: u32, procedure: &str) -> String {
    let procedure = if procedure.is_empty() { "(procedure unknown)" } else { procedure };
    match (program, version) {
        ("", _) => format!("RPC {procedure}"),
        ("nfs", 0) => format!("NFS {procedure}"),
        ("nfs", version) => format!("NFSv{version} {procedure}"),
        (program, 0) => format!("{program} {procedure}"),
        (program, version) => format!("{program} v{version} {procedure}"),
    }
}

/// The NFS version of a mount, from its options (`vers=4.2`).
pub fn nfs_version(super_options: &str) -> Option<String> {
    super_options.split(',').find_map(|option| option.strip_prefix("vers=")).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use dstrace_common::{TaskId, COMM_LEN};

    use super::*;

    fn call(tid: u32, started_ns: u64, timeouts: u32, procname: &str) -> (RpcKey, RpcCall) {
        let mut call = RpcCall::new(TaskId { tid, tgid: tid, comm: [0; COMM_LEN] }, started_ns);
        call.timeouts = timeouts;
        call.first_timeout_ns = if timeouts > 0 { started_ns + 3_000_000_000 } else { 0 };
        call.progname[..3].copy_from_slice(b"nfs");
        call.procname[..procname.len()].copy_from_slice(procname.as_bytes());
        call.version = 4;
        call.transmits = 2;
        call.xid = 0x1234;
        (RpcKey { client_id: 1, task_id: started_ns as u32 }, call)
    }

    #[test]
    fn a_task_is_linked_to_its_most_timed_out_rpc() {
        let calls =
            [call(7, 1_000_000_000, 0, "WRITE"), call(7, 2_000_000_000, 2, "COMMIT"), call(8, 5, 9, "LOCK")];
        let link = link(7, &calls, 10_000_000_000).unwrap();
        assert_eq!(
            link,
            Link::Rpc {
                program: "nfs".into(),
                version: 4,
                procedure: "COMMIT".into(),
                xid: Some(0x1234),
                age_ns: Some(8_000_000_000),
                transmits: 2,
                timeouts: 2,
                not_responding_ns: Some(5_000_000_000),
                others: 1,
            }
        );
        assert_eq!(super::link(9, &calls, 10_000_000_000), None);
    }

    #[test]
    fn a_call_begun_before_tracing_has_no_age() {
        let calls = [call(7, 0, 1, "GETATTR")];
        let Some(Link::Rpc { age_ns, not_responding_ns, .. }) = link(7, &calls, 10_000_000_000) else {
            panic!("no link")
        };
        assert_eq!((age_ns, not_responding_ns), (None, Some(7_000_000_000)));
    }

    #[test]
    fn calls_are_named_as_people_name_them() {
        assert_eq!(call_name("nfs", 4, "LOCK"), "NFSv4 LOCK");
        assert_eq!(call_name("lockd", 4, "LOCK"), "lockd v4 LOCK");
        assert_eq!(call_name("nfs", 0, ""), "NFS (procedure unknown)");
        assert_eq!(call_name("", 0, "GETATTR"), "RPC GETATTR");
        assert_eq!(nfs_version("rw,vers=4.2,addr=10.0.0.5"), Some("4.2".into()));
        assert_eq!(nfs_version("rw"), None);
    }
}
