//! The command line, defined once: `--help`, errors, the man page (`dstrace man`)
//! and the shell completions (`dstrace completions SHELL`) all come from these
//! definitions, so none of them can say a flag that is not there.
//!
//! * this file: [`Cli`] and its [`Command`]s, with the help that teaches them;
//! * [`args`]: every subcommand's flags;
//! * [`parse`]: the value parsers (durations, sizes, cgroups, times);
//! * [`daemon`]: the daemon's settings, each a flag and a TOML key at once.

pub mod args;
pub mod daemon;
pub mod parse;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cli::args::{RecordArgs, ReportArgs, RunArgs, SnapshotArgs};

/// The words dstrace prints, explained (the end of `dstrace --help` and
/// `dstrace run --help`, and the README's glossary).
pub const GLOSSARY: &str = "\
Words in the output:
  D               TASK_UNINTERRUPTIBLE: asleep, deaf to signals, kill -9 included.
  D+killable      TASK_KILLABLE: as D, but kill -9 ends the wait (NFS, FUSE, most locks).
  D+idle          TASK_IDLE: an idle kernel thread; left out unless --include-idle.
  IN D            Tasks of the group in D now.
  OLDEST          The longest wait of the group still in D; a trailing + says it is
                  still growing. >= before an age: a lower bound (the wait began
                  before dstrace started, and the kernel kept no exact start).
  BLOCKED         Time in D so far: the waits that ended plus the ones still going.
  DONE            Waits of the group that have ended since dstrace started.
  DONE TIME/MAX   Summary tables: the total and longest of the waits that ended.
  BLOCKED IN      The kernel function the task sleeps in, below the scheduler and the
                  lock and wait primitives.
  WOKEN BY        The task that woke the waiter (comm[tid]); irq(comm[tid]) when the
                  wake-up came from an interrupt, whose task is whichever it came in on.
  done by pid N   A group whose waits all ended: the processes that had them.
  held by X[N]    The task holding the lock the group waits for; (gone) when it has
                  exited, S/D/R its state now, in FUNCTION where it sleeps.
  chain           Waiter -> lock -> holder -> what the holder waits on -> the FUSE
                  daemon or NFS server at the end.
  P99<=           99 of 100 waits took at most this long (the upper edge of the
                  kernel histogram's power-of-two bucket).
  drops           Data the kernel side could not keep (full maps or ring buffer);
                  none means nothing was lost.";

/// `0.1.0 (commit 0123456789ab)`: the version and the git commit it was built from
/// (`unknown commit` for a build outside a git checkout).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DSTRACE_COMMIT"), ")");

/// Finds tasks stuck in uninterruptible sleep (the `D` of `ps`): for how long, and in
/// which kernel function.
///
/// dstrace loads a small eBPF program into the running kernel that watches every
/// context switch; it never touches the filesystems it diagnoses, so it cannot hang
/// on a dead NFS or FUSE mount. It needs root (or CAP_BPF and CAP_PERFMON) and a
/// kernel with BTF (CONFIG_DEBUG_INFO_BTF=y, Linux 5.8 or later).
#[derive(Debug, Parser)]
#[command(
    name = "dstrace",
    version = VERSION,
    propagate_version = true,
    max_term_width = 100,
    after_long_help = GLOSSARY
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace D waits live: what is stuck, on what, since when, and what to do.
    ///
    /// First the tasks already in D, however long they have waited, read from
    /// kernel memory (a BPF task iterator: the path each walks, the file it waits
    /// on, the lock and who holds it, the FUSE daemon of its mount); then, live,
    /// every task in D and every D wait of at least --min-duration, each mount
    /// named as the task's own mount namespace sees it, grouped by mount, kernel lock
    /// and the kernel function they block in (the first frame below the scheduler
    /// and the lock and wait primitives), with the wait chain of each group
    /// (waiter -> lock -> holder -> what the holder waits on -> daemon or server)
    /// and advice for the patterns it knows. Idle kernel threads (TASK_IDLE) are
    /// left out unless --include-idle is given. At the end (q, Ctrl-C, SIGTERM,
    /// SIGHUP or --duration): the groups, blocked time by process and function
    /// (every wait, short ones included), the tasks still in D, the advice and the
    /// counters, drops included.
    ///
    /// On a terminal this is a full-screen view, the groups with tasks in D first:
    /// arrows or j/k move, Enter expands a group to its tasks and stacks, s changes
    /// the order, / filters, f shows finished waits, p pauses, ? lists every key,
    /// q quits.
    /// Otherwise (piped, or --plain): a line per completed wait and, every
    /// --interval, the groups as a table. With --json: one JSON object per line
    /// (the schema is in the README).
    ///
    /// Examples:
    ///   sudo dstrace run
    ///   sudo dstrace run --plain --min-duration 100ms --stacks
    ///   sudo dstrace run --duration 30s --json > waits.ndjson
    ///   sudo dstrace run --comm nova-compute --pid 4242,4243
    #[command(verbatim_doc_comment, after_long_help = GLOSSARY)]
    Run(RunArgs),

    /// One look at the tasks in D now, no live tracing.
    ///
    /// For each task: how long it has been in D at least, where in the kernel, the
    /// syscall, the file and mount, the lock and its holder, and the chain to the
    /// FUSE daemon or NFS server. As root (or with CAP_BPF and CAP_PERFMON) it
    /// reads them from kernel memory with a BPF task iterator; without, it reads
    /// /proc alone (no BPF, no root needed: the file and mount of a file
    /// descriptor) and lists what it could not see. It never touches the mounts
    /// it looks at. What only live tracing knows (NFS RPCs in flight, who wakes a
    /// task) is listed as not seen: use `dstrace run` for it.
    ///
    /// Examples:
    ///   dstrace snapshot
    ///   sudo dstrace snapshot --json | jq '.tasks[] | {tid, comm, function, blocked_ms}'
    #[command(verbatim_doc_comment)]
    Snapshot(SnapshotArgs),

    /// Trace D waits to a recording file, for `dstrace report` later.
    ///
    /// Every --interval: blocked time by process, command, kernel stack and cause
    /// (every wait, from the in-kernel aggregation; with symbols, mount and lock),
    /// and each wait of at least --min-duration one by one. The file is private
    /// (0600), never a symbolic link, appended to if it is a recording already;
    /// past --max-size it is rotated to FILE.1 ... FILE.N (--rotate). A crash loses
    /// at most the last interval.
    ///
    /// Examples:
    ///   sudo dstrace record -o /var/tmp/dstrace.rec
    ///   sudo dstrace record -o /var/tmp/dstrace.rec --interval 1m --max-size 1GiB --rotate 8
    ///   sudo dstrace record -o incident.rec --duration 10m --min-duration 100ms
    #[command(verbatim_doc_comment)]
    Record(RecordArgs),

    /// Report on recordings: folded stacks, an SVG flame graph, speedscope, pprof,
    /// or JSON.
    ///
    /// Stacks are weighted by blocked time in microseconds (or by number of
    /// waits). Each goes from the command (the root) to the function that
    /// blocked (the leaf: the scheduler and wait primitives below it are left
    /// out); --group-by puts the mount or lock before the command. The pprof
    /// profile has sample types blocked (nanoseconds) and count, and labels comm,
    /// pid, mount, lock. Damaged parts of a recording are reported on standard
    /// error and skipped.
    ///
    /// Examples:
    ///   dstrace report dstrace.rec > blocked.folded
    ///   dstrace report dstrace.rec.1 dstrace.rec --format svg --group-by mount -o blocked.svg
    ///   dstrace report dstrace.rec --format speedscope -o blocked.speedscope.json
    ///   dstrace report dstrace.rec --format pprof -o blocked.pb.gz && go tool pprof -top blocked.pb.gz
    ///   dstrace report dstrace.rec --format json --since 30m --mount /mnt/nfs
    #[command(verbatim_doc_comment)]
    Report(ReportArgs),

    /// Trace always, at the lowest overhead: Prometheus metrics and a recording.
    ///
    /// For every host, under systemd (dist/dstrace.service): serves /metrics in
    /// the Prometheus text format on 127.0.0.1:9977 (tasks in D now by mount and
    /// lock kind, the oldest wait by mount, a histogram of completed waits by
    /// mount, lock kind and blocking function, waits started, drops, its own CPU
    /// and memory), keeps a bounded recording for `dstrace report` (rotated by
    /// size), and can push profiles of blocked time to Pyroscope. A mount whose
    /// oldest task in D passes --stuck-after gets a line on standard error (the
    /// journal), again every --stuck-repeat, and one when it clears. Only waits of
    /// at least --min-duration are streamed; every wait is counted in the kernel.
    /// Settings come from the flags, then the --config file, then the defaults.
    /// SIGHUP reads the file again and reopens the recording; SIGTERM writes the
    /// last interval and exits.
    ///
    /// Examples:
    ///   sudo dstrace daemon
    ///   sudo dstrace daemon --config /etc/dstrace/daemon.toml
    ///   sudo dstrace daemon --listen 127.0.0.1:9100 --recording /var/tmp/d.rec --max-size 16MiB
    ///   curl -s localhost:9977/metrics | grep dstrace_uninterruptible_tasks
    #[command(verbatim_doc_comment)]
    Daemon(daemon::DaemonArgs),

    /// Print the shell completion script for SHELL.
    ///
    /// Examples:
    ///   dstrace completions bash | sudo tee /etc/bash_completion.d/dstrace
    ///   dstrace completions zsh > ~/.zfunc/_dstrace
    ///   dstrace completions fish > ~/.config/fish/completions/dstrace.fish
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Print the man page (roff), or write one page per command to a directory.
    ///
    /// Examples:
    ///   dstrace man | man -l -
    ///   sudo dstrace man --dir /usr/local/share/man/man1
    #[command(verbatim_doc_comment)]
    Man {
        /// Write dstrace.1 and dstrace-COMMAND.1 into DIR instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }
}
