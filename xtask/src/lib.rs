//! Building dstrace, shared by `cargo xtask` and `dstrace/build.rs`.
//!
//! The eBPF object needs a toolchain that a plain `cargo build` does not have
//! ([`toolchain`]); [`ebpf`] builds it with that toolchain. The userspace build
//! script calls the same code, so `cargo build` anywhere in the workspace builds the
//! object too, or stops with a message that says what to install; it never embeds
//! an empty object.

pub mod ebpf;
pub mod toolchain;
