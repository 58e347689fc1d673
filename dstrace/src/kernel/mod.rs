//! The kernel side, as userspace sees it: what must hold before anything is
//! loaded, the running kernel's layouts (BTF, tracefs), loading and attaching the
//! embedded eBPF object, the capabilities dropped after that, and decoding what
//! the programs send. Nothing here knows what a wait means to a person; that is
//! [`crate::model`]'s.
//!
//! * [`preflight`]: privileges and BTF, each missing one a one-line error;
//! * [`btf`]: `task_struct` offsets and hook signatures of the running kernel;
//! * [`tracefs`] and [`sunrpc`]: classic tracepoints' record layouts;
//! * [`syscalls`]: the syscalls whose arguments name a file, by architecture;
//! * [`object`]: the embedded object and what every load of it shares;
//! * [`loader`]: the [`loader::Tracer`]: the object loaded, configured, attached;
//! * [`iter`]: the task iterator's passes: every task in D now, whenever its wait
//!   began, and the `/dev/fuse` files ([`iter::Looker`] loads them alone);
//! * [`privileges`]: what is dropped once attached;
//! * [`decode`]: ring buffer records, kernel strings and device numbers.

pub mod btf;
pub mod decode;
pub mod iter;
pub mod loader;
pub mod object;
pub mod preflight;
pub mod privileges;
pub mod sunrpc;
pub mod syscalls;
pub mod tracefs;
