//! The command line, defined once: `--help`, errors and (later) the man page and
//! completions all come from these definitions.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::loader::{Capacity, Filters};

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
    /// Trace D waits live: what is stuck, on what, since when, and what to do.
    ///
    /// At once, the tasks already in D (from /proc); then, live, every task in D
    /// and every D wait of at least --min-duration, grouped by mount, kernel lock
    /// and the kernel function they block in (the first frame below the scheduler
    /// and the lock and wait primitives), with the wait chain of each group
    /// (waiter -> lock -> holder -> what the holder waits on -> daemon or server)
    /// and advice for the patterns it knows. Idle kernel threads (TASK_IDLE) are
    /// left out unless --include-idle is given. At the end (q, Ctrl-C, SIGTERM or
    /// --duration): the groups, blocked time by process and function (every wait,
    /// short ones included), the tasks still in D, the advice and the counters,
    /// drops included.
    ///
    /// On a terminal this is a full-screen view: arrows or j/k move, Enter expands
    /// a group to its tasks and stacks, s changes the order, / filters, q quits.
    /// Otherwise (piped, or --plain): a line per completed wait and, every
    /// --interval, the groups as a table. With --json: one JSON object per line
    /// (the schema is in the README).
    ///
    /// Examples:
    ///   sudo dstrace run
    ///   sudo dstrace run --plain --min-duration 100ms --stacks
    ///   sudo dstrace run --duration 30s --json > waits.ndjson
    ///   sudo dstrace run --comm nova-compute --pid 4242,4243
    #[command(verbatim_doc_comment)]
    Run(RunArgs),

    /// One look at the tasks in D now, from /proc alone: no BPF, no root needed.
    ///
    /// For each task: how long it has been in D at least, where in the kernel,
    /// the syscall and, for one on a file descriptor, the file and mount, and the
    /// chain to the FUSE daemon or NFS server. It never touches the mounts it
    /// looks at. What only live tracing knows (lock holders, looked-up paths) is
    /// listed as not seen: use `dstrace run` for it.
    ///
    /// Examples:
    ///   dstrace snapshot
    ///   sudo dstrace snapshot --json | jq '.tasks[] | {pid, comm, blocked_in}'
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
    Record(crate::recorder::RecordArgs),

    /// Report on recordings: folded stacks, an SVG flame graph, pprof, or JSON.
    ///
    /// Stacks are weighted by blocked time in microseconds (or by number of
    /// waits); --group-by puts the mount, lock or command at the root of the
    /// graph. The pprof profile has sample types blocked (nanoseconds) and count,
    /// and labels comm, pid, mount, lock. Damaged parts of a recording are
    /// reported on standard error and skipped.
    ///
    /// Examples:
    ///   dstrace report dstrace.rec > blocked.folded
    ///   dstrace report dstrace.rec.1 dstrace.rec --format svg --group-by mount -o blocked.svg
    ///   dstrace report dstrace.rec --format pprof -o blocked.pb.gz && go tool pprof -top blocked.pb.gz
    ///   dstrace report dstrace.rec --format json --since 30m --mount /mnt/nfs
    #[command(verbatim_doc_comment)]
    Report(crate::report::ReportArgs),

    /// Trace always, at the lowest overhead: Prometheus metrics and a recording.
    ///
    /// For every host, under systemd (dist/dstrace.service): serves /metrics in
    /// the Prometheus text format on 127.0.0.1:9977 (tasks in D now by mount and
    /// lock kind, the oldest wait by mount, a histogram of completed waits by
    /// mount, lock kind and blocking function, waits started, drops, its own CPU
    /// and memory), keeps a bounded recording for `dstrace report` (rotated by
    /// size), and can push profiles of blocked time to Pyroscope. Only waits of
    /// at least --min-duration are streamed; every wait is counted in the kernel.
    /// Settings come from the flags, then the --config file, then the defaults.
    /// SIGHUP reads the file again and reopens the recording; SIGTERM writes the
    /// last interval and exits.
    ///
    /// Examples:
    ///   sudo dstrace daemon
    ///   sudo dstrace daemon --config /etc/dstrace/daemon.toml
    ///   sudo dstrace daemon --listen 127.0.0.1:9100 --recording /var/tmp/d.rec --max-size 16MiB
    ///   curl -s localhost:9977/metrics | grep dstrace_tasks_in_d
    #[command(verbatim_doc_comment)]
    Daemon(crate::config::DaemonArgs),
}

/// What to show and how: the options `run` and `snapshot` share.
#[derive(Debug, Args)]
pub struct ViewArgs {
    /// Also show TASK_IDLE waits (idle kernel threads, not counted in the load).
    #[arg(long)]
    pub include_idle: bool,

    /// Print the kernel stacks under each wait.
    #[arg(long)]
    pub stacks: bool,

    /// Print JSON instead of text (`run`: one object per line; `snapshot`: one
    /// document).
    #[arg(long)]
    pub json: bool,
}

/// Options of `dstrace snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub view: ViewArgs,
}

/// Options of `dstrace run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Show waits that lasted at least this long (e.g. 500us, 10ms, 2s).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_MIN_DURATION, value_parser = parse_duration)]
    pub min_duration: Duration,

    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Without the full-screen view: every this long, print the tasks in D and
    /// the groups, and the blocked time of the interval by process and function
    /// (0: only at the end).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Print lines of text even on a terminal, instead of the full-screen view.
    #[arg(long, conflicts_with = "json")]
    pub plain: bool,

    #[command(flatten)]
    pub view: ViewArgs,

    /// Only these processes (thread group ids); repeat or separate with commas.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub pid: Vec<u32>,

    /// Only these threads; repeat or separate with commas.
    #[arg(long, value_name = "TID", value_delimiter = ',')]
    pub tid: Vec<u32>,

    /// Only tasks with this command name (as in `ps -o comm`, at most 15
    /// characters are compared); repeat for several.
    #[arg(long, value_name = "COMM")]
    pub comm: Vec<String>,

    /// Only tasks in this cgroup (v2): a path such as system.slice/nfs.service or
    /// /sys/fs/cgroup/..., or a cgroup id; repeat for several.
    #[arg(long, value_name = "CGROUP")]
    pub cgroup: Vec<String>,

    /// Also record user stacks (shown as addresses: symbolizing them would read
    /// /proc/PID/maps of a task in D, which can hang).
    #[arg(long)]
    pub user_stacks: bool,

    /// Tasks the kernel side tracks in D at once; more are counted as drops.
    #[arg(long, value_name = "N", default_value_t = dstrace_common::limits::INFLIGHT_ENTRIES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tasks: u32,

    /// Size of the ring buffer of completed waits, in KiB (a power of two, at least
    /// the page size); waits that do not fit are counted as drops.
    #[arg(long, value_name = "KIB", default_value_t = dstrace_common::limits::EVENTS_BYTES / 1024,
          value_parser = parse_ring_kib)]
    pub ring_buffer_kib: u32,

    #[command(flatten)]
    pub recording: crate::recorder::RunOutputArgs,
}

/// Parses `--ring-buffer-kib`: a power of two, at least one page, at most 1 GiB.
fn parse_ring_kib(text: &str) -> Result<u32, String> {
    let kib: u32 = text.parse().map_err(|_| format!("{text:?} is not a number of KiB"))?;
    // SAFETY: sysconf has no preconditions.
    let page_kib = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) / 1024) as u32;
    if !kib.is_power_of_two() || kib < page_kib || kib > 1 << 20 {
        return Err(format!(
            "{kib} KiB: the ring buffer takes a power of two from {page_kib} to 1048576 KiB"
        ));
    }
    Ok(kib)
}

impl RunArgs {
    /// The map sizes asked for.
    pub fn capacity(&self) -> Capacity {
        Capacity { tasks: self.max_tasks, ring_buffer_bytes: self.ring_buffer_kib * 1024 }
    }

    /// The task filters, cgroup paths resolved to ids.
    pub fn filters(&self) -> anyhow::Result<Filters> {
        let cgroups = self.cgroup.iter().map(|cgroup| cgroup_id(cgroup)).collect::<anyhow::Result<_>>()?;
        Ok(Filters { tgids: self.pid.clone(), tids: self.tid.clone(), cgroups, comms: self.comm.clone() })
    }
}

/// A cgroup v2 id: a number as is, or the inode number of a cgroup directory given
/// by its path, absolute or relative to where cgroup v2 is mounted (cgroupfs is
/// never a filesystem under diagnosis, so it may be looked at).
pub fn cgroup_id(cgroup: &str) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(id) = cgroup.parse() {
        return Ok(id);
    }
    let mounts = crate::mounts::read()?;
    let Some(root) = crate::mounts::cgroup2_root(&mounts) else {
        anyhow::bail!("--cgroup {cgroup}: cgroup v2 is not mounted; give a cgroup id instead");
    };
    let path = if cgroup.starts_with('/') { std::path::PathBuf::from(cgroup) } else { root.join(cgroup) };
    if !path.starts_with(root) {
        anyhow::bail!("--cgroup {cgroup}: not under {}, where cgroup v2 is mounted", root.display());
    }
    let meta = std::fs::metadata(&path)
        .map_err(|err| anyhow::anyhow!("--cgroup {cgroup}: {}: {err}", path.display()))?;
    Ok(meta.ino())
}

/// The default `--min-duration` of `dstrace run`.
pub const DEFAULT_MIN_DURATION: &str = "1ms";

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

    #[test]
    fn ring_buffer_sizes() {
        assert_eq!(parse_ring_kib("2048"), Ok(2048));
        assert_eq!(parse_ring_kib("4"), Ok(4));
        assert!(parse_ring_kib("3").unwrap_err().contains("power of two"));
        assert!(parse_ring_kib("1").is_err());
        assert!(parse_ring_kib("lots").is_err());
    }
}
