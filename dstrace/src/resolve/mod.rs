//! Names for what the kernel side gives: symbols for stack addresses, mounts for
//! device numbers and mount IDs, files for descriptors, holders for file locks,
//! and the tasks in D that `/proc` lists. Everything is read from `/proc` and
//! `/sys` (files the kernel answers itself), never from under a mount dstrace may
//! be diagnosing, and every read that could wait is bounded.
//!
//! * [`procfs`]: tasks in D now, from `/proc`, without hanging;
//! * [`symbols`]: `/proc/kallsyms`, and the choice of the blocking function;
//! * [`mounts`]: the mount table (`mountinfo`);
//! * [`attribution`]: which syscall, mount and file a wait concerns;
//! * [`file_locks`]: `/proc/locks`: who holds the file lock a task waits for.

pub mod attribution;
pub mod file_locks;
pub mod mounts;
pub mod procfs;
pub mod symbols;
