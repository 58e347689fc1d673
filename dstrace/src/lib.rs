//! dstrace: which tasks are stuck in uninterruptible sleep (`D`), for how long, and
//! in which kernel function.
//!
//! One folder per stage of the flow of data (docs/DESIGN.md), each importing only
//! from the folders after it in this list, so a reader finds each box of the
//! design's diagram in one place and no stage reaches back into a later one:
//!
//! * [`commands`]: one file per subcommand, and the one tracing session `run`,
//!   `record` and `daemon` share (start-up, attach, ring buffer, draining, the
//!   tasks in D now, ticks, signals);
//! * [`cli`]: every flag and value parser, and the daemon's settings (flags and
//!   TOML keys defined once);
//! * [`sinks`]: where waits go: text, JSON, the full-screen view, recordings,
//!   reports, pprof, Prometheus metrics, Pyroscope;
//! * [`model`]: what dstrace knows of a wait: the wait, its chain, aggregation,
//!   the board of groups, advice;
//! * [`resolve`]: names for what the kernel gave: `/proc` read without hanging,
//!   symbols, mounts, file locks, which mount and file a wait concerns;
//! * [`kernel`]: the kernel side: what must hold first, BTF and tracefs layouts,
//!   loading and attaching, privileges, decoding what it sends;
//! * [`clock`] (used by all): kernel timestamps to wall-clock time, durations for
//!   people and for JSON;
//! * [`escape`] (used by all): names made safe for a terminal, and words quoted
//!   for a shell.

pub mod cli;
pub mod clock;
pub mod commands;
pub mod escape;
pub mod kernel;
pub mod model;
pub mod resolve;
pub mod sinks;
