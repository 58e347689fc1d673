//! What each VM scenario must have brought back: assertions on dstrace's JSON
//! output (read as plain JSON values, the way a user's script would), run on the host
//! after the guest has powered off.
//!
//! Each check returns the facts worth printing (which program variant ran, what was
//! skipped, which tracepoint groups the kernel has), or an error naming what is
//! missing and what was there instead.

use std::{fs, path::Path};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

/// The integration tests the `tests` scenario runs in the guest: those that make
/// real D states and check what the engine, the attribution and the task iterator
/// report, and what dstrace says of tasks already in D when it starts (with their
/// fixture's own).
pub const GUEST_TESTS: &[&str] = &["engine", "d_states", "iterator", "fused", "after_hang"];

/// The `load` scenario: dstrace started, and reported completed D waits of `dd`
/// (synchronous writes) with the kernel function they blocked in.
pub fn load(results: &Path) -> Result<Vec<String>> {
    let records = json_lines(&results.join("run.json"))?;
    let start = started(&records, results)?;
    let waits: Vec<&Value> = records.iter().filter(|record| record["type"] == "wait").collect();
    let with_function: Vec<&Value> = waits
        .iter()
        .copied()
        .filter(|wait| wait["function"].as_str().is_some_and(|f| !f.is_empty() && f != "?"))
        .collect();
    let dd: Vec<&Value> = with_function.iter().copied().filter(|wait| wait["comm"] == "dd").collect();
    ensure!(
        !dd.is_empty(),
        "no completed D wait of `dd` with a kernel function was reported ({} waits, {} with a function; \
         commands: {})",
        waits.len(),
        with_function.len(),
        comms(&waits)
    );
    // The hook's own frames are never shown at the top of a stack (deeper, they are
    // real: an interrupt taken while a BPF program ran), and the blocking function
    // is a frame the scheduler was called from, not one above it.
    for wait in &waits {
        for stack in [&wait["stack"], &wait["waker"]["stack"]] {
            let frames: Vec<&str> =
                stack.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            ensure!(
                !frames
                    .iter()
                    .take(5)
                    .any(|f| ["bpf_prog_", "bpf_trace_run", "__bpf_trace_"].iter().any(|p| f.starts_with(p))),
                "a stack begins with the tracing machinery: {wait}"
            );
        }
    }
    for wait in &dd {
        let frames: Vec<&str> =
            wait["stack"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let function = wait["function"].as_str().unwrap_or_default();
        let scheduler = frames.iter().position(|f| *f == "__schedule");
        let blocked_in = frames.iter().position(|f| *f == function);
        ensure!(
            scheduler.is_some_and(|s| blocked_in.is_some_and(|b| b > s)),
            "dd's blocking function {function:?} is not a frame below __schedule in its stack: {wait}"
        );
    }
    let summary = records
        .iter()
        .find(|record| record["type"] == "summary")
        .context("no summary record: dstrace did not end cleanly")?;
    let mut facts = kernel_facts(results, start);
    let functions: Vec<&str> = dd.iter().filter_map(|wait| wait["function"].as_str()).collect();
    facts.push(format!(
        "{} completed waits ({} of dd, in {}); counters: {}",
        waits.len(),
        dd.len(),
        dedup(functions).join(", "),
        summary["counters"]
    ));
    Ok(facts)
}

/// The `tests` scenario: each integration test binary it carried ran in the guest
/// and passed every test it did not skip; the skipped ones (a kernel feature
/// missing) are listed with their reason.
pub fn tests(results: &Path) -> Result<Vec<String>> {
    let mut facts = Vec::new();
    for name in GUEST_TESTS {
        let path = results.join(format!("test-{name}.log"));
        let log = fs::read_to_string(&path).with_context(|| format!("the {name} tests did not run"))?;
        let verdict = log
            .lines()
            .find(|line| line.starts_with("test result:"))
            .with_context(|| format!("the {name} tests ended without a result:\n{}", last_lines(&log, 40)))?;
        let count = |what: &str| -> u64 {
            verdict
                .split(';')
                .find_map(|part| part.trim().trim_start_matches("test result: ok.").trim().strip_suffix(what))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        ensure!(
            verdict.starts_with("test result: ok.") && count("failed") == 0 && count("passed") > 0,
            "the {name} tests failed in the guest ({verdict}):\n{}",
            last_lines(&log, 60)
        );
        facts.push(format!(
            "{name}: {} passed, {} skipped by the scenario",
            count("passed"),
            count("filtered out")
        ));
        // A test that finds out for itself what this kernel lacks says so on a line
        // of its own ("skipped TEST: why") and passes: listed too.
        for line in log.lines().filter(|line| line.starts_with("skipped ")) {
            facts.push(format!("  {name}: {line}"));
        }
    }
    let skipped = fs::read_to_string(results.join("skipped.txt")).unwrap_or_default();
    facts.extend(skipped.lines().map(|line| format!("skipped {line}")));
    Ok(facts)
}

/// The last `n` lines of a text.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What the `nfs` scenario expects of one hung task.
struct Expected {
    /// Its command (the fd tasks are copies of perl named after their role).
    comm: &'static str,
    /// `nfs` (v3) or `nfs4`.
    fstype: &'static str,
    /// Its mount is named from a kernel object: the file it blocks on (opened
    /// before the server died) or the path walk it waits in (a `stat`). A task
    /// whose path walk is over when it waits (the `statfs` of `df`, waiting for
    /// FSSTAT) has no object left that names its mount: it is found by its stack.
    named: bool,
    /// A function of the NFS client its stack has, telling v3 from v4 where the
    /// snapshot names no mount.
    stack_has: &'static str,
    /// Where it blocks, if that is known for every kernel.
    blocked_in: Option<&'static str>,
    /// The procedures of the RPC `dstrace run` must name in its chain (one of
    /// them); empty: any RPC (flock on v3 waits for statd's MONITOR or lockd's LOCK).
    rpc: &'static [&'static str],
}

/// What dstrace's start record skips where the kernel side cannot read a wait's
/// syscall (before Linux 5.18): `dstrace::kernel::loader::NO_SYSCALLS` (xtask
/// does not link dstrace).
const NO_SYSCALLS: &str = "the syscall of each wait and the file of its fd argument";

const RPC_WAIT: Option<&str> = Some("rpc_wait_bit_killable");

/// The hung tasks of the `nfs` scenario (xtask/vm/scenarios/nfs.sh).
const NFS_TASKS: &[Expected] = &[
    Expected {
        comm: "flock-v3",
        fstype: "nfs",
        named: true,
        stack_has: "nlmclnt_",
        blocked_in: RPC_WAIT,
        rpc: &[],
    },
    Expected {
        comm: "fcntl-v4",
        fstype: "nfs4",
        named: true,
        stack_has: "nfs4_",
        blocked_in: RPC_WAIT,
        rpc: &["LOCK"],
    },
    Expected {
        comm: "fsync-v4",
        fstype: "nfs4",
        named: true,
        stack_has: "nfs",
        blocked_in: None,
        rpc: &["WRITE", "COMMIT"],
    },
    Expected {
        comm: "fstatfs-v3",
        fstype: "nfs",
        named: true,
        stack_has: "nfs3_",
        blocked_in: RPC_WAIT,
        rpc: &["FSSTAT"],
    },
    Expected {
        comm: "holder",
        fstype: "nfs4",
        named: true,
        stack_has: "nfs",
        blocked_in: None,
        rpc: &["WRITE", "COMMIT"],
    },
    Expected {
        comm: "df",
        fstype: "nfs",
        named: false,
        stack_has: "nfs3_",
        blocked_in: RPC_WAIT,
        rpc: &["GETATTR", "FSSTAT", "ACCESS"],
    },
    Expected {
        comm: "stat",
        fstype: "nfs",
        named: true,
        stack_has: "nfs3_",
        blocked_in: RPC_WAIT,
        rpc: &["GETATTR", "LOOKUP", "ACCESS"],
    },
    Expected {
        comm: "stat",
        fstype: "nfs4",
        named: true,
        stack_has: "nfs4_",
        blocked_in: RPC_WAIT,
        rpc: &["LOOKUP", "GETATTR", "ACCESS"],
    },
];

/// The NFS server's export, as the mounts' `source` must name it.
const NFS_SOURCE: &str = "127.0.0.1:/export";

/// The `nfs` scenario: `dstrace snapshot`, taken while the server is dead, lists
/// each hung task in D with where it blocks and, for those blocked on a file
/// descriptor, the mount (`127.0.0.1:/export`, nfs or nfs4); `dstrace run`, started
/// before the server died, reports every one still in D at the end, with its mount,
/// and advice naming NFS.
pub fn nfs(results: &Path) -> Result<Vec<String>> {
    let path = results.join("snapshot.json");
    let json = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let snapshot: Value =
        serde_json::from_str(&json).with_context(|| format!("{} is not JSON", path.display()))?;
    let tasks = snapshot["tasks"].as_array().context("the snapshot has no tasks array")?;
    let mut facts = Vec::new();
    // The snapshot is taken as root: the task iterator reads every task in D from
    // kernel memory, and names the mount of each one that a kernel object ties to
    // one (its file, or the path walk it waits in).
    for expected in NFS_TASKS {
        let by = if expected.named { By::Mount } else { By::Stack };
        let task = find_task(tasks, expected, by)
            .with_context(|| format!("dstrace snapshot, {}", listing(tasks)))?;
        ensure!(
            task["source"] == "iterator",
            "dstrace snapshot: task `{}` was not read by the task iterator (source {})",
            expected.comm,
            task["source"]
        );
        facts.push(format!("snapshot: {}", describe(task)));
    }

    let records = json_lines(&results.join("run.json"))?;
    let start = started(&records, results)?;
    let summary = records
        .iter()
        .find(|record| record["type"] == "summary")
        .context("no summary record: dstrace run did not end cleanly")?;
    let ongoing = summary["ongoing"].as_array().context("the summary has no ongoing array")?;
    // Before Linux 5.18 the kernel side cannot read syscall arguments, and says so;
    // then only the command is checked (a stack can be lost: the counters say so).
    let run_names_mounts = !skipped(start).iter().any(|why| why.starts_with(NO_SYSCALLS));
    for expected in NFS_TASKS {
        let by = match (run_names_mounts, expected.named) {
            (true, true) => By::Mount,
            (true, false) => By::Stack,
            (false, _) => By::Comm,
        };
        let task = find_task(ongoing, expected, by)
            .with_context(|| format!("dstrace run's summary, {}", listing(ongoing)))?;
        facts.push(format!("run, still in D at the end: {}", describe(task)));
        facts.push(format!("  its RPC: {}", rpc_link(task, expected)?));
    }
    // The server has been silent for 20 s and more with timeo=30,retrans=1: the
    // kernel's major timeouts must show in the chains and in the advice.
    let timed_out = ongoing
        .iter()
        .flat_map(|task| task["chain"].as_array().map(Vec::as_slice).unwrap_or_default())
        .filter(|link| link["link"] == "rpc" && link["timeouts"].as_u64().unwrap_or(0) > 0)
        .count();
    ensure!(timed_out > 0, "no RPC with a major timeout in any chain: {}", listing(ongoing));
    let advice = summary["advice"].as_array().map(Vec::as_slice).unwrap_or_default();
    ensure!(
        advice.iter().any(|line| line.as_str().is_some_and(|line| line.contains("NOT RESPONDING"))),
        "the summary's advice does not say the server is not responding: {advice:?}"
    );
    // The advice needs the mounts of the waits.
    ensure!(
        !run_names_mounts || advice.iter().any(|line| line.as_str().is_some_and(|line| line.contains("NFS"))),
        "the summary gives no NFS advice: {advice:?}"
    );
    facts.extend(advice.iter().map(|line| format!("advice: {}", text(line))));
    // Seed 000: the holder of the lock file's POSIX lock, and its queue: the
    // waiters /proc/locks lists (6.1 lists both; 5.10 only the first, the other
    // polling the server in S).
    let holder = fs::read_to_string(results.join("holder.pid")).context("no holder.pid")?;
    let inode = fs::read_to_string(results.join("registry-lock.inode")).context("no registry-lock.inode")?;
    let (holder, inode) = (holder.trim(), inode.trim());
    for (what, advice) in
        [("dstrace snapshot", &snapshot["advice"]), ("dstrace run's summary", &summary["advice"])]
    {
        let advice = advice.as_array().map(Vec::as_slice).unwrap_or_default();
        ensure!(
            advice.iter().filter_map(Value::as_str).any(|line| {
                line.contains(&format!("holder[{holder}] in D"))
                    && line.contains(&format!("holds the POSIX WRITE lock on inode {inode} "))
                    && line.contains(" for: queue-")
            }),
            "{what} does not name holder[{holder}], in D, as the holder of the POSIX lock on inode {inode} \
             that the queue tasks wait for: {advice:?}"
        );
    }
    facts.extend(after_the_hang(results, holder, inode)?);
    facts.extend(kernel_facts(results, start));
    let dmesg = fs::read_to_string(results.join("dmesg.txt")).unwrap_or_default();
    facts.push(match dmesg.lines().find(|line| line.contains("not responding")) {
        Some(line) => format!("kernel: {}", line.trim()),
        None => "kernel: no \"not responding\" line in dmesg".to_owned(),
    });
    Ok(facts)
}

/// The `dstrace run` started once everything hung: every hung task is listed at
/// once as already in D, read by the task iterator, with the mount a kernel object
/// names; the advice names the NFS mounts and seed 000's holder.
fn after_the_hang(results: &Path, holder: &str, inode: &str) -> Result<Vec<String>> {
    let records = json_lines(&results.join("run-after.json"))?;
    let start_at = records
        .iter()
        .position(|record| record["type"] == "start")
        .context("the run started after the hang never started")?;
    let first: Vec<Value> =
        records[..start_at].iter().filter(|record| record["type"] == "ongoing").cloned().collect();
    let summary = records
        .iter()
        .find(|record| record["type"] == "summary")
        .context("no summary record: the run started after the hang did not end cleanly")?;
    let mut facts = Vec::new();
    let mut from_memory = 0;
    for (what, tasks) in [
        ("first screen", first.as_slice()),
        ("summary", summary["ongoing"].as_array().map(Vec::as_slice).unwrap_or_default()),
    ] {
        for expected in NFS_TASKS {
            let by = if expected.named { By::Mount } else { By::Stack };
            let task = find_task(tasks, expected, by)
                .with_context(|| format!("dstrace run started after the hang, {what}, {}", listing(tasks)))?;
            // Read from kernel memory, or, where an NFS wait woke (a
            // retransmission, a major timeout) and slept again once the programs
            // were attached, traced: the first screen comes after loading, which
            // takes seconds in an emulated guest, and the retransmissions come
            // every few seconds.
            let sources = ["iterator", "traced"];
            ensure!(
                sources.iter().any(|source| task["source"] == *source),
                "dstrace run started after the hang, {what}: task `{}` has source {}, not {}",
                expected.comm,
                task["source"],
                sources.join(" or ")
            );
            if what == "first screen" {
                facts.push(format!("run after the hang: {} (source {})", describe(task), task["source"]));
                from_memory += usize::from(task["source"] == "iterator");
            }
        }
    }
    ensure!(
        from_memory > 0,
        "dstrace run started after the hang: no hung NFS task on its first screen was read from kernel memory"
    );
    let advice = summary["advice"].as_array().map(Vec::as_slice).unwrap_or_default();
    ensure!(
        advice.iter().filter_map(Value::as_str).any(|line| line.contains("on the NFS mount")),
        "the run started after the hang gives no NFS mount advice: {advice:?}"
    );
    ensure!(
        advice.iter().filter_map(Value::as_str).any(|line| {
            line.contains(&format!("holder[{holder}] in D"))
                && line.contains(&format!("holds the POSIX WRITE lock on inode {inode} "))
        }),
        "the run started after the hang does not name holder[{holder}] as the lock holder: {advice:?}"
    );
    facts.extend(advice.iter().map(|line| format!("advice after the hang: {}", text(line))));
    Ok(facts)
}

/// How a task record must match an [`Expected`] beyond its command.
#[derive(Clone, Copy, PartialEq, Eq)]
enum By {
    /// Its mount: fstype and source, and where it blocks.
    Mount,
    /// A function of its stack, and where it blocks.
    Stack,
    /// Nothing more.
    Comm,
}

/// The task in D that matches `expected`, or an error saying what differs.
fn find_task<'a>(tasks: &'a [Value], expected: &Expected, by: By) -> Result<&'a Value> {
    let same_comm: Vec<&Value> = tasks.iter().filter(|task| task["comm"] == expected.comm).collect();
    ensure!(!same_comm.is_empty(), "no task `{}` in D", expected.comm);
    let wanted = NFS_TASKS.iter().filter(|other| other.comm == expected.comm).count();
    ensure!(same_comm.len() >= wanted, "{} tasks `{}` in D, not {wanted}", same_comm.len(), expected.comm);
    let candidates: Vec<&Value> = if by == By::Comm {
        same_comm
    } else if by == By::Mount {
        let on_mount: Vec<&Value> =
            same_comm.iter().copied().filter(|task| task["mount"]["fstype"] == expected.fstype).collect();
        ensure!(
            !on_mount.is_empty(),
            "no task `{}` attributed to an {} mount",
            expected.comm,
            expected.fstype
        );
        for task in &on_mount {
            ensure!(
                task["mount"]["source"] == NFS_SOURCE,
                "task `{}` on {}: the mount's source is {}, not {NFS_SOURCE}",
                expected.comm,
                expected.fstype,
                task["mount"]["source"]
            );
        }
        on_mount
    } else {
        let marked: Vec<&Value> =
            same_comm.iter().copied().filter(|task| has_frame(task, expected.stack_has)).collect();
        ensure!(
            !marked.is_empty(),
            "no task `{}` with a {}* function in its stack",
            expected.comm,
            expected.stack_has
        );
        marked
    };
    for task in &candidates {
        ensure!(
            task["state"].as_str().is_some_and(|state| state.starts_with('D')),
            "task `{}` is in state {}, not D",
            expected.comm,
            task["state"]
        );
    }
    let Some(function) = expected.blocked_in.filter(|_| by != By::Comm) else {
        return Ok(candidates[0]);
    };
    match candidates.iter().find(|task| task["function"] == function) {
        Some(task) => Ok(task),
        None => bail!(
            "task `{}` ({}) does not block in {function} but in {}",
            expected.comm,
            expected.fstype,
            candidates[0]["function"]
        ),
    }
}

/// The `rpc` link of a task's chain, checked against what it must name:
/// `NFSv3 FSSTAT, 5 major timeouts, not responding for 29632 ms`.
fn rpc_link(task: &Value, expected: &Expected) -> Result<String> {
    let chain = task["chain"].as_array().map(Vec::as_slice).unwrap_or_default();
    let rpc = chain.iter().find(|link| link["link"] == "rpc").with_context(|| {
        format!("task `{}` ({}): no RPC in its chain: {chain:?}", expected.comm, expected.fstype)
    })?;
    let procedure = rpc["procedure"].as_str().unwrap_or_default();
    ensure!(
        expected.rpc.is_empty() || expected.rpc.contains(&procedure),
        "task `{}` ({}): its RPC is {procedure:?}, not one of {:?}: {rpc}",
        expected.comm,
        expected.fstype,
        expected.rpc
    );
    ensure!(!text(&rpc["program"]).is_empty(), "task `{}`: an RPC without its program: {rpc}", expected.comm);
    Ok(format!(
        "{} v{} {procedure}, {} major timeouts, not responding for {} ms, sent {} times",
        text(&rpc["program"]),
        rpc["version"],
        rpc["timeouts"],
        text(&rpc["not_responding_ms"]),
        rpc["transmits"]
    ))
}

fn has_frame(task: &Value, prefix: &str) -> bool {
    task["stack"]
        .as_array()
        .is_some_and(|stack| stack.iter().any(|frame| frame.as_str().is_some_and(|f| f.starts_with(prefix))))
}

/// One line for a task record: `df [12] D+killable in rpc_wait_bit_killable on nfs
/// /mnt/v3 (127.0.0.1:/export), statfs`.
fn describe(task: &Value) -> String {
    format!(
        "{} [{}] {} in {} on {} {} ({}), {}",
        text(&task["comm"]),
        task["tgid"],
        text(&task["state"]),
        text(&task["function"]),
        text(&task["mount"]["fstype"]),
        text(&task["mount"]["mountpoint"]),
        text(&task["mount"]["source"]),
        text(&task["syscall"]),
    )
}

fn listing(tasks: &[Value]) -> String {
    let lines: Vec<String> = tasks.iter().map(describe).collect();
    format!("tasks in D:\n  {}", lines.join("\n  "))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// The `start` record, or an error with dstrace's standard error.
fn started<'a>(records: &'a [Value], results: &Path) -> Result<&'a Value> {
    records.iter().find(|record| record["type"] == "start").with_context(|| {
        format!(
            "dstrace run never started; its standard error:\n{}",
            fs::read_to_string(results.join("run.stderr")).unwrap_or_default()
        )
    })
}

/// What the `start` record says this kernel cannot record.
fn skipped(start: &Value) -> Vec<&str> {
    start["skipped"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// The program variant, what dstrace skipped, and the kernel's tracepoint groups.
fn kernel_facts(results: &Path, start: &Value) -> Vec<String> {
    let mut facts = vec![format!("program: {}", text(&start["program"]))];
    facts.extend(skipped(start).into_iter().map(|why| format!("skipped: {why}")));
    let groups = fs::read_to_string(results.join("tracepoints.txt")).unwrap_or_default();
    facts.push(format!("tracepoint groups: {}", groups.lines().collect::<Vec<_>>().join(", ")));
    let btf = fs::read_to_string(results.join("btf.txt")).unwrap_or_default();
    let modules: Vec<&str> = btf
        .lines()
        .filter(|name| ["sunrpc", "nfs", "nfsv3", "nfsv4", "lockd", "nfsd"].contains(name))
        .collect();
    facts.push(format!(
        "module BTF of NFS and sunrpc: {}",
        if modules.is_empty() { "none".to_owned() } else { modules.join(", ") }
    ));
    facts
}

fn json_lines(path: &Path) -> Result<Vec<Value>> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).with_context(|| format!("{}: not JSON: {line}", path.display()))
        })
        .collect()
}

fn comms(records: &[&Value]) -> String {
    dedup(records.iter().filter_map(|record| record["comm"].as_str()).collect()).join(", ")
}

fn dedup(mut items: Vec<&str>) -> Vec<&str> {
    items.sort_unstable();
    items.dedup();
    items
}
