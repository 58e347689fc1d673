//! The subcommands, one file each, and the tracing session `run`, `record` and
//! `daemon` share ([`session`]): they differ in what they do with the waits, not
//! in how they trace.

pub mod daemon;
pub mod docs;
pub mod record;
pub mod report;
pub mod run;
pub mod session;
pub mod snapshot;
