//! `aya::Pod` for the types userspace reads from and writes to the maps (the `user`
//! feature: the eBPF side has no aya).

use crate::{
    AggKey, AggValue, Config, FuseFileRecord, FuseKey, FuseRequest, InFlight, RpcCall, RpcKey, TaskRecord,
    WaitEvent,
};

// SAFETY: plain `#[repr(C)]` data with explicit padding and no pointers; every bit
// pattern is a valid value.
unsafe impl aya::Pod for Config {}
// SAFETY: as above.
unsafe impl aya::Pod for InFlight {}
// SAFETY: as above.
unsafe impl aya::Pod for WaitEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for AggKey {}
// SAFETY: as above.
unsafe impl aya::Pod for AggValue {}
// SAFETY: as above.
unsafe impl aya::Pod for FuseKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FuseRequest {}
// SAFETY: as above.
unsafe impl aya::Pod for RpcKey {}
// SAFETY: as above.
unsafe impl aya::Pod for RpcCall {}
// SAFETY: as above.
unsafe impl aya::Pod for TaskRecord {}
// SAFETY: as above.
unsafe impl aya::Pod for FuseFileRecord {}
