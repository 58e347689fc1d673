//! dstrace: which tasks are stuck in uninterruptible sleep (`D`), for how long, and
//! in which kernel function.
//!
//! The modules follow the flow of data (../DESIGN.md):
//!
//! * [`preflight`]: what must hold before anything is loaded (privileges, BTF);
//! * [`kernel_btf`]: `task_struct` offsets and hook signatures of the running kernel;
//! * [`mounts`]: the mount table, from /proc/self/mountinfo;
//! * [`loader`]: loads the embedded eBPF object with its settings and attaches it;
//! * [`privileges`]: the capabilities dropped once it is attached;
//! * [`events`]: decodes what the kernel side streams;
//! * [`procfs`]: tasks in D now, read from /proc without hanging;
//! * [`symbols`]: kernel symbols and the choice of the blocking function;
//! * [`syscalls`] and [`attribution`]: which syscall, mount and file a wait concerns;
//! * [`file_locks`]: who holds the file lock a task waits for (/proc/locks);
//! * [`tracefs`] and [`rpc`]: classic tracepoints' records, and the NFS/sunrpc RPC
//!   a task waits for;
//! * [`chain`]: from a task in D to the lock, its holder, the mount and the server;
//! * [`record`]: one D wait as userspace shows it, ongoing or completed;
//! * [`aggregate`]: completed waits grouped from the in-kernel aggregation;
//! * [`board`]: waits grouped by mount, lock and blocking function, as shown;
//! * [`advice`]: what to do about a recognised pattern, one line each;
//! * [`output`]: the sinks (text lines, JSON lines);
//! * [`tui`]: the full-screen view of `dstrace run` on a terminal;
//! * [`recording`], [`recorder`]: the recording file, and writing it while tracing
//!   (`dstrace record`, `run --output`);
//! * [`report`] and [`pprof`]: recordings as folded stacks, flame graphs, pprof
//!   profiles and JSON (`dstrace report`);
//! * [`clock`]: kernel timestamps to wall-clock time;
//! * [`cli`], [`run`] and [`snapshot`]: the command line and the commands.

pub mod advice;
pub mod aggregate;
pub mod attribution;
pub mod board;
pub mod chain;
pub mod cli;
pub mod clock;
pub mod events;
pub mod file_locks;
pub mod kernel_btf;
pub mod loader;
pub mod mounts;
pub mod output;
pub mod pprof;
pub mod preflight;
pub mod privileges;
pub mod procfs;
pub mod record;
pub mod recorder;
pub mod recording;
pub mod report;
pub mod rpc;
pub mod run;
pub mod snapshot;
pub mod symbols;
pub mod syscalls;
pub mod tracefs;
pub mod tui;
