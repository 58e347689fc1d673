//! What dstrace knows of the waits, independent of how it is shown: one record per
//! D wait, its chain to what it waits for, the completed waits aggregated, the
//! board that groups them by mount, lock and function, and the advice.
//!
//! * [`wait`]: one D wait, ongoing or completed, and the lock it waits for;
//! * [`link`]: one link of a wait chain;
//! * [`chain`]: from a task in D to the lock, its holder, the mount and the
//!   daemon or server at the end;
//! * [`rpc`]: the NFS/sunrpc RPC a task waits for;
//! * [`seen`]: one look of the task iterator: waits that began before dstrace
//!   did, and the hops of a chain past the first holder;
//! * [`aggregate`]: the in-kernel aggregation read as differences, grouped;
//! * [`board`]: waits grouped by mount, lock and blocking function;
//! * [`advice`]: what to do about a recognised pattern, one line each.

pub mod advice;
pub mod aggregate;
pub mod board;
pub mod chain;
pub mod link;
pub mod rpc;
pub mod seen;
pub mod wait;
