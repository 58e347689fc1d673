//! The command line, defined once: `--help`, errors and (later) the man page and
//! completions all come from these definitions.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Finds tasks stuck in uninterruptible sleep (the `D` of `ps`): for how long, and in
/// which kernel function.
///
/// dstrace loads a small eBPF program into the running kernel that watches every
/// context switch; it never touches the filesystems it diagnoses, so it cannot hang
/// on a dead NFS or FUSE mount. It needs root (or CAP_BPF and CAP_PERFMON) and a
/// kernel with BTF (CONFIG_DEBUG_INFO_BTF=y, Linux 5.8 or later).
#[derive(Debug, Parser)]
#[command(name = "dstrace", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace D waits live: print each wait as it ends, until Ctrl-C.
    ///
    /// Each line is one completed wait of at least --min-duration: when it ended,
    /// pid/tid, command, how long the task was in D, and the kernel function it
    /// blocked in (the first frame below the scheduler and the lock and wait
    /// primitives). Idle kernel threads (TASK_IDLE) are left out unless
    /// --include-idle is given. A summary with the counters, drops included, is
    /// printed at the end.
    ///
    /// Examples:
    ///   sudo dstrace run
    ///   sudo dstrace run --min-duration 100ms --stacks
    ///   sudo dstrace run --duration 30s --json > waits.ndjson
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
}

/// Options of `dstrace run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Show waits that lasted at least this long (e.g. 500us, 10ms, 2s).
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = parse_duration)]
    pub min_duration: Duration,

    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Also trace TASK_IDLE waits (idle kernel threads, not counted in the load).
    #[arg(long)]
    pub include_idle: bool,

    /// Print the whole kernel stack under each wait.
    #[arg(long)]
    pub stacks: bool,

    /// Print one JSON object per line (NDJSON) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Parses durations such as `1ms`, `250us`, `2s`, `1m30s`, or a bare `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|err| format!("{err} (examples: 500us, 10ms, 2s, 1m)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("fast").is_err());
    }
}
