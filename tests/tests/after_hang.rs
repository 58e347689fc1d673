//! dstrace started *after* the hang (issue 17): tasks already piled up in D behind
//! a FUSE daemon that stopped answering, explained from the kernel's own objects
//! by `run` (its first records) and `snapshot`, as well as a wait it saw begin.
//!
//! Every test here makes its pile-up first ([`DaemonPileup`], behind a
//! `dstrace-test-fused` process: `kill -STOP`, the real incident), then starts
//! dstrace. Only this test's tasks, mounts and daemons are looked at: other
//! pile-ups may stand on the machine meanwhile. Each test gathers every way the
//! output falls short of the contract and fails once, listing them all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use dstrace_tests::{
    dstrace_bin,
    fused::{cgroup_of, namespace_of, DaemonPileup, FuseDaemon, Piles, Stall},
    json_lines, output_of, require_root, skipped, Dstrace, TestCgroup,
};
use serde_json::{json, Value};

/// How long `run` traces: it must end by itself, with a summary.
const RUN: &str = "3s";
/// A bound on any dstrace command here (not a timing).
const DEADLINE: Duration = Duration::from_secs(60);
/// How long a pile-up stands before dstrace starts: advice is given for waits
/// going on for over a second.
const SETTLE: Duration = Duration::from_secs(2);

/// What `start.skipped` (and `snapshot`'s `cannot_see`) begins with where the
/// kernel cannot look at tasks already in D (no BPF task iterator, Linux < 5.8):
/// then `run` and `snapshot` keep their `/proc` view, which other tests check.
const NO_ITERATOR: &str = "tasks already in D";
/// ... where the kernel cannot say which FUSE requests are in flight.
const NO_FUSE_REQUESTS: &str = "FUSE requests in flight";
/// ... where the iterator cannot read a task's syscall and the file of its file
/// descriptor (before 5.15): the file is then `/proc`'s, and the lock on that file
/// is not proven.
const NO_FD_FILES: &str = "the syscall of a task already in D and the file of its fd argument";
/// ... where the iterator cannot read which connection a `/dev/fuse` file serves
/// (the FUSE module without BTF, 5.10): no daemon is proven.
const NO_CONNECTIONS: &str = "the FUSE connections of /dev/fuse files";

/// What the kernel lets dstrace see, as its start record (or a snapshot's
/// `cannot_see`) says: what it cannot see is checked absent, never taken as
/// missing by mistake.
#[derive(Clone, Copy)]
struct Sees {
    fuse_requests: bool,
    fd_files: bool,
    connections: bool,
}

impl Sees {
    /// From a skip list (`start.skipped` or `cannot_see`), `skips(what)` being
    /// whether a sentence of it begins with `what`.
    fn from(skips: impl Fn(&str) -> bool) -> Sees {
        let connections = !skips(NO_CONNECTIONS);
        Sees {
            // A look reads them from the connections' queues (a snapshot's only
            // source; the live path's tracepoints need FUSE built in, whose BTF
            // gives the connections too).
            fuse_requests: !skips(NO_FUSE_REQUESTS) && connections,
            fd_files: !skips(NO_FD_FILES),
            connections,
        }
    }
}

/// Two lookups and two writers behind one daemon's first of each.
const LOOKUPS_AND_WRITERS: Piles = Piles { lookups: 2, writers: 2, openers: 0 };

/// The system calls a `stat` looks a name up in.
const STAT_SYSCALLS: [&str; 4] = ["statx", "newfstatat", "lstat", "stat"];
/// Where a lookup behind another lookup of the same name waits.
const LOOKUP_WAITS: [&str; 4] = ["d_alloc_parallel", "d_wait_lookup", "__lookup_slow", "lookup_slow"];

/// Whether `function` is where a task waiting for a FUSE daemon's answer sleeps:
/// `request_wait_answer` where the kernel has it as a function (`/proc/kallsyms`);
/// where it is inlined, a FUSE function (`__fuse_request_send`, ...).
fn waits_for_answer(function: &str) -> bool {
    static INLINED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let inlined = *INLINED.get_or_init(|| {
        let symbols = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        !symbols.lines().any(|line| line.split_whitespace().nth(2) == Some("request_wait_answer"))
    });
    function == "request_wait_answer" || (inlined && function.contains("fuse"))
}

/// The function a task link of a chain's text names after `comm[tid] S in `.
fn text_function<'a>(chain: &'a str, task: &str) -> Option<&'a str> {
    let at = chain.find(task)? + task.len();
    chain[at..].split_whitespace().next()
}

/// Every way an output falls short, gathered so that one run of a test lists them all.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.0.push(problem());
        }
    }

    fn eq(&mut self, what: &str, actual: &Value, expected: impl Into<Value>) {
        let expected = expected.into();
        self.check(*actual == expected, || format!("{what} is {actual}, not {expected}"));
    }

    /// Fails the test with every problem found, and the output they were found in.
    fn assert_none(self, output: &str) {
        if self.0.is_empty() {
            return;
        }
        // The same problem in many records (a kernel thread's every wait) once,
        // with its count.
        let mut counted: Vec<(String, usize)> = Vec::new();
        for problem in self.0 {
            match counted.iter_mut().find(|(seen, _)| *seen == problem) {
                Some((_, n)) => *n += 1,
                None => counted.push((problem, 1)),
            }
        }
        let total: usize = counted.iter().map(|(_, n)| n).sum();
        let problems: Vec<String> = counted
            .into_iter()
            .map(|(problem, n)| if n == 1 { problem } else { format!("{problem} (x{n})") })
            .collect();
        let mut output = output.to_owned();
        if output.len() > 20_000 {
            let mut cut = 20_000;
            while !output.is_char_boundary(cut) {
                cut -= 1;
            }
            output.truncate(cut);
            output.push_str("\n... (cut)");
        }
        panic!("{total} problems:\n- {}\n\nin the output:\n{output}", problems.join("\n- "));
    }
}

/// What kind of task a test piled up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `stat` of a missing name, behind another one's lookup.
    Lookup,
    /// `sh` writing to the mount's file, behind the writer holding its inode lock.
    Writer,
    /// `sh` opening a new name (`O_CREAT`), behind the opener holding the
    /// directory's inode lock.
    Opener,
}

impl Kind {
    /// The kind of the tasks of a pile, by its name in [`DaemonPileup::piles`].
    fn of(pile: &str) -> Kind {
        match pile {
            "lookups" => Kind::Lookup,
            "writers" => Kind::Writer,
            "openers" => Kind::Opener,
            other => panic!("no pile {other}"),
        }
    }

    /// The inode whose `i_rwsem` its tasks wait for: the file (`2`) for a writer,
    /// the directory (the root, `1`) for an opener; none for a lookup.
    fn locked_inode(self) -> Option<u64> {
        match self {
            Kind::Lookup => None,
            Kind::Writer => Some(2),
            Kind::Opener => Some(1),
        }
    }
}

/// One of the daemons a test made, as the test knows it.
#[derive(Clone, Debug)]
struct Daemon {
    pid: u32,
    comm: String,
    stall: Stall,
    /// The mount point, as its tasks' mount namespace names it.
    path: PathBuf,
    fstype: String,
    source: String,
    /// `major:minor`.
    dev: String,
    mount_id: u32,
    /// The tasks waiting for its answer, in S: what its FUSE requests came from.
    owners: Vec<u32>,
}

impl Daemon {
    fn of(pileup: &DaemonPileup<'_>, stall: Stall) -> Daemon {
        let daemon = pileup.daemon();
        let mount = daemon.mount();
        Daemon {
            pid: daemon.pid(),
            comm: daemon.comm(),
            stall,
            path: daemon.path().to_path_buf(),
            fstype: mount.fstype.clone(),
            source: mount.source.clone(),
            dev: format!("{}:{}", mount.dev.0, mount.dev.1),
            mount_id: mount.id,
            owners: pileup.owners(),
        }
    }

    /// Its state letter as the chain must show it.
    fn state(&self) -> &'static str {
        match self.stall {
            Stall::Stop => "T",
            Stall::Hold => "S",
        }
    }
}

/// What a test knows of one task it piled up in D, read from `/proc` before
/// dstrace starts.
#[derive(Clone, Debug)]
struct Stuck {
    tid: u32,
    kind: Kind,
    /// The path it looks up or writes.
    target: PathBuf,
    /// The task it waits behind (for a writer, the holder of the inode lock).
    owner: u32,
    daemon: Daemon,
    /// `readlink /proc/TID/ns/mnt`.
    namespace: u64,
    /// The `0::` line of `/proc/TID/cgroup`.
    cgroup: Option<String>,
}

/// Every task of a pile-up in D, with what `/proc` says of it now.
fn stuck_of(pileup: &DaemonPileup<'_>, stall: Stall) -> Vec<Stuck> {
    let daemon = Daemon::of(pileup, stall);
    pileup
        .piles()
        .into_iter()
        .flat_map(|(kind, pile)| {
            let kind = Kind::of(kind);
            let daemon = daemon.clone();
            pile.stuck.iter().map(move |&tid| Stuck {
                tid,
                kind,
                target: pile.target.clone(),
                owner: pile.owner,
                daemon: daemon.clone(),
                namespace: namespace_of(tid),
                cgroup: cgroup_of(tid),
            })
        })
        .collect()
}

/// `dstrace run --json` to its end.
struct RunOutput {
    pid: u32,
    lines: Vec<String>,
    records: Vec<Value>,
}

impl RunOutput {
    fn start(&self) -> &Value {
        self.records.iter().find(|r| r["type"] == "start").expect("a start record")
    }

    /// The `ongoing` records printed before `start`: the tasks already in D.
    fn arrival(&self) -> Vec<&Value> {
        self.records.iter().take_while(|r| r["type"] != "start").filter(|r| r["type"] == "ongoing").collect()
    }

    fn summary(&self) -> &Value {
        let last = self.records.last().expect("records");
        assert_eq!(last["type"], "summary", "the last record is the summary");
        last
    }

    fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// Runs `dstrace run --json --duration 3s --min-duration 0 EXTRA...` to its end.
fn run_json(extra: &[&str]) -> RunOutput {
    let mut args = vec!["run", "--json", "--duration", RUN, "--min-duration", "0"];
    args.extend_from_slice(extra);
    let dstrace = Dstrace::spawn(&args);
    let pid = dstrace.pid();
    let (status, lines) = dstrace.finish();
    assert!(status.success(), "dstrace {args:?} exited with {status}:\n{}", lines.join("\n"));
    let records = json_lines(&lines);
    RunOutput { pid, lines, records }
}

/// Runs `dstrace ARGS...` to its end; returns its pid and standard output.
fn dstrace(args: &[&str]) -> (u32, String) {
    let child = Command::new(dstrace_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dstrace starts");
    let pid = child.id();
    let out = output_of(child, DEADLINE, &format!("dstrace {}", args.join(" ")));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dstrace {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    (pid, stdout)
}

/// `dstrace snapshot --json EXTRA...`: its pid and its document.
fn snapshot_json(extra: &[&str]) -> (u32, Value) {
    let mut args = vec!["snapshot", "--json"];
    args.extend_from_slice(extra);
    let (pid, out) = dstrace(&args);
    let document =
        serde_json::from_str(&out).unwrap_or_else(|err| panic!("not one JSON document ({err}):\n{out}"));
    (pid, document)
}

/// Whether a snapshot says it cannot see `what` (a sentence of `cannot_see`
/// beginning so, as `skipped` reads the start record).
fn cannot_see(snapshot: &Value, what: &str) -> bool {
    snapshot["cannot_see"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|s| s.starts_with(what))
}

/// The records among `records` of thread `tid`.
fn of_tid<'a>(records: &[&'a Value], tid: u32) -> Vec<&'a Value> {
    records.iter().copied().filter(|r| r["tid"] == tid).collect()
}

/// Checks one record of a task already in D against what the test knows of it.
fn check_task(p: &mut Problems, what: &str, record: &Value, stuck: &Stuck, sees: Sees) {
    let tid = stuck.tid;
    let daemon = &stuck.daemon;
    let at = |field: &str| format!("{what}: tid {tid}: {field}");
    p.eq(&at("source"), &record["source"], "iterator");
    p.eq(&at("tgid"), &record["tgid"], tid);
    p.eq(&at("state"), &record["state"], "D");
    let function = record["function"].as_str().unwrap_or_default();
    let stack: Vec<&str> =
        record["stack"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    p.check(!stack.is_empty(), || format!("{}: no kernel stack: {}", at("stack"), record["stack"]));
    p.check(!function.is_empty() && stack.contains(&function), || {
        format!("{}: {:?} is not a frame of its stack {stack:?}", at("function"), record["function"])
    });
    p.eq(&at("cgroup"), &record["cgroup"], stuck.cgroup.clone());

    let syscall = record["syscall"].as_str().unwrap_or_default();
    // 5.10 and 6.1: the writers' write goes through and they wait for the inode
    // lock in close(2) (fuse_flush), their descriptor gone: no file to name there.
    let in_close = stuck.kind == Kind::Writer && syscall == "close" && function == "fuse_flush";
    match stuck.kind {
        Kind::Lookup => {
            p.check(LOOKUP_WAITS.contains(&function), || format!("{}: {function:?}", at("function")));
            p.check(STAT_SYSCALLS.contains(&syscall), || format!("{}: {}", at("syscall"), record["syscall"]));
        }
        Kind::Writer => {
            p.check(syscall == "write" || in_close, || format!("{}: {}", at("syscall"), record["syscall"]));
        }
        Kind::Opener => {
            p.check(["openat", "open", "openat2"].contains(&syscall), || {
                format!("{}: {}", at("syscall"), record["syscall"])
            });
        }
    }
    if !in_close {
        let mount = &record["mount"];
        p.eq(&at("mount.mountpoint"), &mount["mountpoint"], daemon.path.to_str().unwrap());
        p.eq(&at("mount.fstype"), &mount["fstype"], daemon.fstype.as_str());
        p.eq(&at("mount.source"), &mount["source"], daemon.source.as_str());
        p.eq(&at("mount.dev"), &mount["dev"], daemon.dev.as_str());
        p.eq(&at("mount.id"), &mount["id"], daemon.mount_id);
        p.eq(&at("mount.namespace"), &mount["namespace"], stuck.namespace);
        p.eq(&at("file.path"), &record["file"]["path"], stuck.target.to_str().unwrap());
        // The inode of a file `/proc` named (fdinfo) only where it says (5.14+).
        if stuck.kind == Kind::Writer && (sees.fd_files || !record["file"]["inode"].is_null()) {
            p.eq(&at("file.inode"), &record["file"]["inode"], 2);
        }
    }

    // The lock of a writer's file is proven from the file the kernel names for its
    // descriptor; without it, none is claimed.
    let lock_proven = stuck.kind != Kind::Writer || sees.fd_files;
    if !lock_proven {
        p.check(record["lock"].is_null(), || {
            format!("{}: claimed without proof: {}", at("lock"), record["lock"])
        });
    }
    if let Some(ino) = stuck.kind.locked_inode().filter(|_| lock_proven) {
        let lock = &record["lock"];
        p.eq(&at("lock.kind"), &lock["kind"], "rwsem-write");
        p.check(lock["addr"].as_str().is_some_and(|a| a.starts_with("0x")), || {
            format!("{}: {lock}", at("lock.addr"))
        });
        p.check(lock["name"].as_str().is_some_and(|n| !n.is_empty()), || {
            format!("{}: {lock}", at("lock.name"))
        });
        p.eq(&at("lock.inode.dev"), &lock["inode"]["dev"], daemon.dev.as_str());
        p.eq(&at("lock.inode.ino"), &lock["inode"]["ino"], ino);
        let holder = &lock["holder"];
        p.eq(&at("lock.holder.tid"), &holder["tid"], stuck.owner);
        p.eq(&at("lock.holder.tgid"), &holder["tgid"], stuck.owner);
        p.eq(&at("lock.holder.comm"), &holder["comm"], "sh");
        p.eq(&at("lock.holder.state"), &holder["state"], "S");
        p.check(holder["function"].as_str().is_some_and(waits_for_answer), || {
            format!("{} is {}, not request_wait_answer", at("lock.holder.function"), holder["function"])
        });
    }

    check_chain(p, &at("chain"), record, stuck, sees, lock_proven);
}

/// The chain: the task, (for a writer or an opener) the lock and its holder, the mount, the
/// requests the daemon has not answered, and exactly this mount's daemon.
fn check_chain(p: &mut Problems, what: &str, record: &Value, stuck: &Stuck, sees: Sees, lock_proven: bool) {
    let daemon = &stuck.daemon;
    let Some(chain) = record["chain"].as_array() else {
        p.0.push(format!("{what}: no chain"));
        return;
    };
    let kinds: Vec<&str> = chain.iter().map(|link| link["link"].as_str().unwrap_or_default()).collect();
    let show = || format!("{kinds:?}: {}", Value::Array(chain.clone()));
    p.check(chain.first().is_some_and(|first| first["link"] == "task" && first["tid"] == stuck.tid), || {
        format!("{what}: does not begin at the task: {}", show())
    });
    if stuck.kind.locked_inode().is_some() && lock_proven {
        p.check(kinds.len() >= 4 && kinds[..4] == ["task", "lock", "task", "mount"], || {
            format!("{what}: not task, lock, holder, mount: {}", show())
        });
        match chain.get(2) {
            Some(holder) if holder["link"] == "task" && holder["tid"] == stuck.owner => {
                p.eq(&format!("{what}: the holder's state"), &holder["state"], "S");
                p.check(holder["function"].as_str().is_some_and(waits_for_answer), || {
                    format!(
                        "{what}: the holder's function is {}, not request_wait_answer",
                        holder["function"]
                    )
                });
            }
            _ => p.0.push(format!("{what}: the third link is not the holder {}: {}", stuck.owner, show())),
        }
    }
    // Never "(gone)": every task of this test is alive.
    for link in chain.iter().filter(|link| link["link"] == "task") {
        p.check(!link["state"].is_null(), || format!("{what}: a task alive shown gone ({link}): {}", show()));
    }
    let mounts: Vec<&Value> = chain.iter().filter(|link| link["link"] == "mount").collect();
    p.check(
        mounts.len() == 1
            && mounts[0]["mountpoint"] == daemon.path.to_str().unwrap()
            && mounts[0]["fstype"] == daemon.fstype.as_str(),
        || format!("{what}: not one mount link to {} {}: {}", daemon.fstype, daemon.path.display(), show()),
    );
    if sees.fuse_requests {
        let requests = chain.iter().find(|link| link["link"] == "fuse_requests");
        p.check(
            requests.is_some_and(|r| {
                r["in_flight"].as_u64().is_some_and(|n| n >= 1)
                    && daemon.owners.iter().any(|owner| r["oldest_tid"] == *owner)
            }),
            || format!("{what}: no fuse_requests link from one of {:?}: {}", daemon.owners, show()),
        );
        // Where the look counted them (`null`: the live path's requests): a
        // stopped daemon has read none, a holding one has read those it holds.
        if let Some(read) = requests.and_then(|r| r["read_by_daemon"].as_u64()) {
            let ok = match daemon.stall {
                Stall::Stop => read == 0,
                Stall::Hold => read >= 1,
            };
            p.check(ok, || {
                format!(
                    "{what}: {read} FUSE requests read by a daemon that is {:?}: {}",
                    daemon.stall,
                    show()
                )
            });
        }
    }
    let daemons: Vec<&Value> = chain.iter().filter(|link| link["link"] == "fuse_daemon").collect();
    let pids: BTreeSet<u64> = daemons.iter().filter_map(|link| link["tgid"].as_u64()).collect();
    let ours = BTreeSet::from([u64::from(daemon.pid)]);
    // Without the connections the daemon is named only where /proc proves it (the
    // only connection, the only process with /dev/fuse open), never another's.
    p.check(pids == ours || (!sees.connections && pids.is_subset(&ours)), || {
        format!(
            "{what}: the FUSE daemon is not exactly pid {} (its mount's only server): {}",
            daemon.pid,
            show()
        )
    });
    for link in daemons.iter().filter(|link| link["tgid"] == daemon.pid) {
        p.eq(&format!("{what}: the daemon's state"), &link["state"], daemon.state());
        p.eq(&format!("{what}: the daemon's comm"), &link["comm"], daemon.comm.as_str());
    }
}

/// The advice about each daemon's mount: one line, counting the tasks in D on it,
/// `kill -CONT` for a stopped daemon only and only its own pid.
fn check_advice(p: &mut Problems, what: &str, advice: &Value, daemons: &[(&Daemon, usize)], sees: Sees) {
    let lines: Vec<&str> = advice.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let stopped: Vec<u32> =
        daemons.iter().filter(|(d, _)| d.stall == Stall::Stop).map(|(d, _)| d.pid).collect();
    // Where the kernel does not say which process serves a connection, the advice
    // may name no daemon (and then no `kill -CONT`).
    let unproven = |line: &str| !sees.connections && line.contains("its daemon does not answer");
    for (daemon, in_d) in daemons {
        let mount = format!("on the FUSE mount {} (", daemon.path.display());
        let about: Vec<&str> = lines.iter().copied().filter(|line| line.contains(&mount)).collect();
        p.check(about.len() == 1, || {
            format!("{what}: not one advice line about {}: {lines:#?}", daemon.path.display())
        });
        let Some(line) = about.first() else { continue };
        let count = format!("{in_d} tasks wait {mount}");
        p.check(line.starts_with(&count), || format!("{what}: does not begin {count:?}: {line}"));
        match daemon.stall {
            Stall::Stop => {
                let says = format!(
                    "its daemon {}[{}] is stopped, `kill -CONT {}` resumes it",
                    daemon.comm, daemon.pid, daemon.pid
                );
                p.check(line.contains(&says) || unproven(line), || {
                    format!("{what}: does not say {says:?}: {line}")
                });
            }
            Stall::Hold => {
                let says = format!("its daemon {}[{}] does not answer", daemon.comm, daemon.pid);
                p.check(line.contains(&says) || unproven(line), || {
                    format!("{what}: does not say {says:?}: {line}")
                });
            }
        }
    }
    // Any `kill -CONT` in a line about these mounts or daemons names a stopped one.
    let ours = |line: &str| {
        daemons
            .iter()
            .any(|(d, _)| line.contains(d.path.to_str().unwrap()) || line.contains(&format!("[{}]", d.pid)))
    };
    for line in lines.iter().copied().filter(|line| ours(line)) {
        for pid in kill_cont_pids(line) {
            p.check(stopped.contains(&pid), || {
                format!("{what}: `kill -CONT {pid}` is no stopped daemon of ours ({stopped:?}): {line}")
            });
        }
    }
}

/// The pids of every `kill -CONT PID` in a line.
fn kill_cont_pids(line: &str) -> Vec<u32> {
    line.match_indices("kill -CONT ")
        .filter_map(|(at, prefix)| {
            let digits: String = line[at + prefix.len()..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// `run --json`: each task already in D is listed once before `start` and again in
/// One listing of the tasks in D (`run`'s records before `start`, its summary's
/// `ongoing`, a snapshot's `tasks`): each stuck task once, checked; no owner (they
/// sleep in S).
fn check_listing(
    p: &mut Problems,
    what: &str,
    records: &[&Value],
    stuck: &[Stuck],
    owners: &[u32],
    sees: Sees,
) {
    for task in stuck {
        let listed = of_tid(records, task.tid);
        p.check(listed.len() == 1, || {
            format!("{what}: tid {} is listed {} times, not once", task.tid, listed.len())
        });
        if let Some(record) = listed.first() {
            check_task(p, what, record, task, sees);
        }
    }
    for owner in owners {
        p.check(of_tid(records, *owner).is_empty(), || {
            format!("{what}: owner {owner} sleeps in S, yet is listed in D")
        });
    }
}

/// `run --json`: each task already in D is listed once before `start` and again in
/// the summary's `ongoing`, as the contract says; the owners (in S) are not.
fn check_run(
    p: &mut Problems,
    run: &RunOutput,
    stuck: &[Stuck],
    owners: &[u32],
    daemons: &[(&Daemon, usize)],
) {
    let sees = Sees::from(|what| skipped(run.start(), what));
    let summary = run.summary();
    let ongoing: Vec<&Value> = summary["ongoing"].as_array().into_iter().flatten().collect();
    check_listing(p, "run (before start)", &run.arrival(), stuck, owners, sees);
    check_listing(p, "run (summary)", &ongoing, stuck, owners, sees);
    let counted = named_on_their_mounts(daemons, stuck, &ongoing);
    check_advice(p, "run (summary advice)", &summary["advice"], &counted, sees);
}

/// Each daemon with how many of its stuck tasks `records` name on its mount: the
/// advice counts those (a writer waiting in close(2), its descriptor gone, names
/// none: 5.10 to 6.12).
fn named_on_their_mounts<'a>(
    daemons: &[(&'a Daemon, usize)],
    stuck: &[Stuck],
    records: &[&Value],
) -> Vec<(&'a Daemon, usize)> {
    let on = |daemon: &Daemon| {
        stuck
            .iter()
            .filter(|task| task.daemon.pid == daemon.pid)
            .filter(|task| {
                of_tid(records, task.tid)
                    .first()
                    .is_some_and(|record| record["mount"]["mountpoint"] == daemon.path.to_str().unwrap())
            })
            .count()
    };
    daemons.iter().map(|(daemon, _)| (*daemon, on(daemon))).collect()
}

/// `snapshot --json`: each task in `tasks` once, checked; the owners not.
fn check_snapshot(
    p: &mut Problems,
    snapshot: &Value,
    stuck: &[Stuck],
    owners: &[u32],
    daemons: &[(&Daemon, usize)],
) {
    p.eq("snapshot: type", &snapshot["type"], "snapshot");
    let sees = Sees::from(|what| cannot_see(snapshot, what));
    let tasks: Vec<&Value> = snapshot["tasks"].as_array().into_iter().flatten().collect();
    check_listing(p, "snapshot", &tasks, stuck, owners, sees);
    let counted = named_on_their_mounts(daemons, stuck, &tasks);
    check_advice(p, "snapshot (advice)", &snapshot["advice"], &counted, sees);
}

/// Whether this kernel lets dstrace look at tasks already in D (the start record
/// says when not); if not, says so: the test has nothing to check.
fn iterator_missing(test: &str, start: &Value) -> bool {
    let missing = skipped(start, NO_ITERATOR);
    if missing {
        eprintln!(
            "skipped {test}: this kernel cannot show tasks already in D (the start record says so): {start}"
        );
    }
    missing
}

/// Each daemon of `pileups` with how many of its tasks are in D.
fn daemons_of(pileups: &[(&DaemonPileup<'_>, Stall)]) -> Vec<(Daemon, usize)> {
    pileups.iter().map(|(pileup, stall)| (Daemon::of(pileup, *stall), pileup.stuck().len())).collect()
}

/// The pile-ups' owners (in S).
fn owners_of(pileups: &[(&DaemonPileup<'_>, Stall)]) -> Vec<u32> {
    pileups.iter().flat_map(|(pileup, _)| pileup.owners()).collect()
}

/// Runs `run --json` and `snapshot --json` beside the pile-ups (made before), and
/// checks both against what the test knows of every task, and with `more`.
fn check_both(
    test: &str,
    pileups: &[(&DaemonPileup<'_>, Stall)],
    more: impl FnOnce(&mut Problems, &RunOutput, &Value, &[Stuck]),
) {
    let stuck: Vec<Stuck> = pileups.iter().flat_map(|(pileup, stall)| stuck_of(pileup, *stall)).collect();
    let owners = owners_of(pileups);
    let daemons = daemons_of(pileups);
    let daemons: Vec<(&Daemon, usize)> = daemons.iter().map(|(d, n)| (d, *n)).collect();
    sleep(SETTLE);
    let run = run_json(&[]);
    let (_, snapshot) = snapshot_json(&[]);
    if iterator_missing(test, run.start()) {
        return;
    }
    let mut p = Problems::default();
    more(&mut p, &run, &snapshot, &stuck);
    check_run(&mut p, &run, &stuck, &owners, &daemons);
    check_snapshot(&mut p, &snapshot, &stuck, &owners, &daemons);
    p.assert_none(&format!("{}\n\nsnapshot:\n{snapshot:#}", run.text()));
}

/// Nothing more to check.
fn nothing_more(_: &mut Problems, _: &RunOutput, _: &Value, _: &[Stuck]) {}

/// The incident as a user meets it: a FUSE daemon stopped (`kill -STOP`), lookups
/// and writers piled up behind it, and only then dstrace. Both `run` and
/// `snapshot` name every stuck task's mount, path, lock, holder and the exact
/// daemon, from the kernel (`source: iterator`), and advise `kill -CONT`.
#[test]
fn a_pileup_behind_a_stopped_daemon_is_explained_when_dstrace_arrives_after_it() {
    let test = "a_pileup_behind_a_stopped_daemon_is_explained_when_dstrace_arrives_after_it";
    if !require_root(test) {
        return;
    }
    let daemon = FuseDaemon::start("after-hang");
    let pileup = DaemonPileup::start(&daemon, Stall::Stop, Piles { lookups: 3, writers: 3, openers: 0 });
    check_both(test, &[(&pileup, Stall::Stop)], nothing_more);
}

/// The incident issue 17 measured: a writer creating a file holds the directory's
/// `i_rwsem` while it waits for the stopped daemon's answer, and the next ones
/// wait for that lock in D in `openat(2)` (`path_openat`), beside writers of an
/// open file waiting for its inode's. Each names the lock of its own inode and its
/// holder.
#[test]
fn openers_behind_a_stopped_daemon_name_the_directory_lock_and_its_holder() {
    let test = "openers_behind_a_stopped_daemon_name_the_directory_lock_and_its_holder";
    if !require_root(test) {
        return;
    }
    let daemon = FuseDaemon::start("after-hang-open");
    let pileup = DaemonPileup::start(&daemon, Stall::Stop, Piles { lookups: 0, writers: 2, openers: 3 });
    check_both(test, &[(&pileup, Stall::Stop)], nothing_more);
}

/// Two FUSE filesystems, each with its own daemon process: one stopped, the other
/// running but not answering. Each mount's tasks name their own daemon only, and
/// only the stopped one gets a `kill -CONT`.
#[test]
fn two_fuse_mounts_each_name_their_own_daemon() {
    let test = "two_fuse_mounts_each_name_their_own_daemon";
    if !require_root(test) {
        return;
    }
    let stopped = FuseDaemon::start("after-hang-stopped");
    let silent = FuseDaemon::start("after-hang-silent");
    let behind_stopped = DaemonPileup::start(&stopped, Stall::Stop, LOOKUPS_AND_WRITERS);
    let behind_silent = DaemonPileup::start(&silent, Stall::Hold, LOOKUPS_AND_WRITERS);
    check_both(test, &[(&behind_stopped, Stall::Stop), (&behind_silent, Stall::Hold)], nothing_more);
}

/// A pile-up in a private mount namespace and a cgroup of its own (a container's),
/// on a FUSE mount at a path the host does not have: named as the tasks' own
/// namespace sees it, with their cgroup.
#[test]
fn a_pileup_in_a_private_mount_namespace_is_named_as_its_tasks_see_it() {
    let test = "a_pileup_in_a_private_mount_namespace_is_named_as_its_tasks_see_it";
    if !require_root(test) {
        return;
    }
    let daemon = FuseDaemon::start_in_private_namespace("after-hang-ns");
    let ours = namespace_of(std::process::id());
    // The premise: the mount is the namespace's only.
    assert_ne!(daemon.mount().namespace, ours, "the daemon has a mount namespace of its own");
    assert!(!daemon.path().exists(), "the host has {}", daemon.path().display());
    // A container has a cgroup of its own too: its tasks' `cgroup` is that.
    let cgroup = TestCgroup::new("after-hang-ns");
    let pileup = DaemonPileup::start(&daemon, Stall::Stop, LOOKUPS_AND_WRITERS);
    for pid in pileup.pids() {
        cgroup.add(pid);
    }
    for pid in pileup.stuck() {
        assert_eq!(cgroup_of(pid), Some(cgroup.name()), "pid {pid} is in the test's cgroup");
    }
    let path = daemon.path().to_str().unwrap().to_owned();
    // Spelled out: not the host's `/` (or its temporary directory's mount), and in
    // a namespace that is not dstrace's.
    check_both(test, &[(&pileup, Stall::Stop)], |p, run, snapshot, stuck| {
        let arrival = run.arrival();
        let tasks: Vec<&Value> = snapshot["tasks"].as_array().into_iter().flatten().collect();
        for (what, records) in [("run", &arrival), ("snapshot", &tasks)] {
            for task in stuck {
                for record in of_tid(records, task.tid) {
                    let mount = &record["mount"];
                    p.check(mount["mountpoint"] == path.as_str(), || {
                        format!(
                            "{what}: tid {} on {} {} (the host's view?), not {path}",
                            task.tid, mount["fstype"], mount["mountpoint"]
                        )
                    });
                    p.check(mount["namespace"].as_u64().is_some_and(|ns| ns != ours), || {
                        format!(
                            "{what}: tid {}: mount.namespace {} is not the task's own ({})",
                            task.tid, mount["namespace"], task.namespace
                        )
                    });
                }
            }
        }
    });
}

/// The text views (`snapshot`, `run --plain`) show, for each task found in D on
/// arrival, its mount point and path, and under it the chain to the stopped daemon.
#[test]
fn the_text_views_show_the_mount_and_chain_of_tasks_found_in_d() {
    let test = "the_text_views_show_the_mount_and_chain_of_tasks_found_in_d";
    if !require_root(test) {
        return;
    }
    let daemon = FuseDaemon::start("after-hang-text");
    let pileup = DaemonPileup::start(&daemon, Stall::Stop, LOOKUPS_AND_WRITERS);
    let stuck = stuck_of(&pileup, Stall::Stop);
    sleep(SETTLE);
    let (_, snapshot) = dstrace(&["snapshot"]);
    let (_, plain) = dstrace(&["run", "--plain", "--duration", RUN, "--min-duration", "0"]);
    let (_, json) = snapshot_json(&[]);
    let sees = Sees::from(|what| cannot_see(&json, what));
    let mut p = Problems::default();
    for (what, text) in [("snapshot", &snapshot), ("run --plain", &plain)] {
        check_text(&mut p, what, text, &stuck, sees);
    }
    p.assert_none(&format!("snapshot:\n{snapshot}\n\nrun --plain:\n{plain}"));
}

/// The first line of each task's in a text view names its mount and path; the
/// next is its chain, to the holder (writers) and the stopped daemon (where the
/// kernel proves them); no task of ours is `(gone)`.
fn check_text(p: &mut Problems, what: &str, text: &str, stuck: &[Stuck], sees: Sees) {
    let lines: Vec<&str> = text.lines().collect();
    for task in stuck {
        let daemon = &task.daemon;
        let column = format!(" {}/{} ", task.tid, task.tid);
        let Some(at) = lines.iter().position(|line| line.contains(&column)) else {
            p.0.push(format!("{what}: no line for tid {}", task.tid));
            continue;
        };
        let line = lines[at];
        let on = format!("{} {}", daemon.fstype, daemon.path.display());
        p.check(line.contains(&on), || {
            format!("{what}: tid {}: the line does not name {on:?}: {line}", task.tid)
        });
        p.check(line.contains(task.target.to_str().unwrap()), || {
            format!("{what}: tid {}: the line does not name {}: {line}", task.tid, task.target.display())
        });
        let chain = lines.get(at + 1).copied().unwrap_or_default();
        if !chain.trim_start().starts_with("chain: ") {
            p.0.push(format!("{what}: tid {}: no chain line under {line}", task.tid));
            continue;
        }
        let to_daemon = format!("FUSE daemon {}[{}] STOPPED", daemon.comm, daemon.pid);
        p.check(chain.contains(&to_daemon) || !sees.connections, || {
            format!("{what}: tid {}: the chain does not reach {to_daemon:?}: {chain}", task.tid)
        });
        if task.kind.locked_inode().is_some() && (task.kind != Kind::Writer || sees.fd_files) {
            let holder = format!("sh[{}] S in ", task.owner);
            p.check(text_function(chain, &holder).is_some_and(waits_for_answer), || {
                format!(
                    "{what}: tid {}: the chain does not name \"{holder}request_wait_answer\": {chain}",
                    task.tid
                )
            });
        }
        p.check(!chain.contains("(gone)"), || {
            format!("{what}: tid {}: a live task shown gone: {chain}", task.tid)
        });
    }
    let stopped = format!("`kill -CONT {}`", stuck[0].daemon.pid);
    p.check(text.contains(&stopped) || !sees.connections, || format!("{what}: no advice with {stopped}"));
}

/// Whether a thread is a kernel thread (`PF_KTHREAD`); `None` once it is gone.
fn is_kernel_thread(tid: u64) -> Option<bool> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    dstrace::resolve::procfs::parse_stat(&stat).map(|stat| stat.flags & PF_KTHREAD != 0)
}

/// A kernel thread has no system call: every record of one says `syscall: null`
/// (idle kernel threads, in D+idle all day, are there with `--include-idle`), from
/// the iterator on arrival and from tracing after.
#[test]
fn kernel_threads_have_no_syscall() {
    let test = "kernel_threads_have_no_syscall";
    if !require_root(test) {
        return;
    }
    let run = run_json(&["--include-idle"]);
    let (_, snapshot) = snapshot_json(&["--include-idle"]);
    let mut p = Problems::default();
    let no_iterator = skipped(run.start(), NO_ITERATOR);
    let summary = run.summary();
    let records = run
        .records
        .iter()
        .filter(|r| r["type"] == "wait" || r["type"] == "ongoing")
        .map(|r| ("run", r))
        .chain(summary["ongoing"].as_array().into_iter().flatten().map(|r| ("run (summary)", r)))
        .chain(snapshot["tasks"].as_array().into_iter().flatten().map(|r| ("snapshot", r)));
    let mut kernel_threads = 0;
    for (what, record) in records {
        let Some(tid) = record["tid"].as_u64() else { continue };
        if is_kernel_thread(tid) != Some(true) {
            continue;
        }
        kernel_threads += 1;
        p.check(record["syscall"].is_null(), || {
            format!(
                "{what}: kernel thread {} [{tid}] ({}, {}) has syscall {}",
                record["comm"], record["type"], record["source"], record["syscall"]
            )
        });
    }
    p.check(kernel_threads > 0, || "no record of a kernel thread with --include-idle".into());
    // On arrival, the idle kernel threads come from kernel memory too: read by the
    // iterator, or traced if their wait began between the attach and the look
    // (idle kernel threads go in and out of D all the time); never `/proc` alone.
    let arrival: Vec<&Value> = run
        .arrival()
        .into_iter()
        .filter(|r| r["tid"].as_u64().and_then(is_kernel_thread) == Some(true))
        .collect();
    p.check(!arrival.is_empty(), || {
        "no kernel thread in D+idle listed before start with --include-idle".into()
    });
    if !no_iterator {
        for record in arrival {
            p.check(record["source"] == "iterator" || record["source"] == "traced", || {
                format!("run: kernel thread {} on arrival: source {}", record["comm"], record["source"])
            });
        }
    }
    p.assert_none(&format!("{}\n\nsnapshot:\n{snapshot:#}", run.text()));
}

/// Every place in a JSON value that reports a wait of process `pid` (a `tgid`, or a
/// member of a `tgids` list), as paths. What other tasks' waits say of it is left
/// out: that dstrace woke a task (`waker`, or was the task an interrupt came in
/// on), or holds a lock another waits for (`lock`, `chain`, `file_locks`), is so,
/// and no wait of its own.
fn mentions(value: &Value, pid: u32, path: &str, found: &mut Vec<String>) {
    const OF_OTHERS: [&str; 4] = ["waker", "lock", "chain", "file_locks"];
    match value {
        Value::Object(fields) => {
            for (key, field) in fields.iter().filter(|(key, _)| !OF_OTHERS.contains(&key.as_str())) {
                let here = format!("{path}.{key}");
                if key == "tgid" && *field == pid {
                    found.push(here.clone());
                }
                if key == "tgids" && field.as_array().is_some_and(|pids| pids.contains(&json!(pid))) {
                    found.push(here.clone());
                }
                mentions(field, pid, &here, found);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                mentions(item, pid, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

/// dstrace's own waits are not the machine's: no output of `run` (JSON or text)
/// or `snapshot` names its own process, while it looks at a pile-up found on
/// arrival and traces what follows.
#[test]
fn dstrace_never_reports_itself() {
    let test = "dstrace_never_reports_itself";
    if !require_root(test) {
        return;
    }
    let daemon = FuseDaemon::start("after-hang-self");
    let _pileup = DaemonPileup::start(&daemon, Stall::Stop, LOOKUPS_AND_WRITERS);
    let run = run_json(&[]);
    let (snapshot_pid, snapshot) = snapshot_json(&[]);
    let (plain_pid, plain) = dstrace(&["run", "--plain", "--duration", RUN, "--min-duration", "0"]);
    let mut p = Problems::default();
    for (i, record) in run.records.iter().enumerate() {
        let mut found = Vec::new();
        mentions(record, run.pid, &format!("record {i} ({})", record["type"]), &mut found);
        p.check(found.is_empty(), || {
            format!("run --json names its own pid {}: {found:?}: {record}", run.pid)
        });
    }
    let mut found = Vec::new();
    mentions(&snapshot, snapshot_pid, "snapshot", &mut found);
    p.check(found.is_empty(), || format!("snapshot names its own pid {snapshot_pid}: {found:?}"));
    // In text: a wait's `PID/TID` column, a `PID` column of the tables by process.
    for line in plain.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let named = first == plain_pid.to_string()
            || std::iter::once(first).chain(words).any(|word| word.starts_with(&format!("{plain_pid}/")));
        p.check(!named, || format!("run --plain names its own pid {plain_pid}: {line}"));
    }
    p.assert_none(&format!("{}\n\nsnapshot:\n{snapshot:#}\n\nrun --plain:\n{plain}", run.text()));
}

/// A holder that still exists is never `gone`: the writers' holder waits for its
/// stopped daemon (the daemon was stopped, not the holder), and every view shows
/// it with its state (`S`) and function, in the lock and in the chain.
#[test]
fn a_holder_alive_is_never_shown_gone() {
    let test = "a_holder_alive_is_never_shown_gone";
    if !require_root(test) {
        return;
    }
    let daemon = FuseDaemon::start("after-hang-holder");
    let pileup = DaemonPileup::start(&daemon, Stall::Stop, Piles { writers: 3, ..Piles::default() });
    let writers = pileup.writers.clone().unwrap();
    let holder = writers.owner;
    let run = run_json(&[]);
    let (_, snapshot) = snapshot_json(&[]);
    let (_, text) = dstrace(&["snapshot"]);
    assert_eq!(dstrace_tests::task_state(holder), Some('S'), "the holder is alive, in S, after it all");
    if iterator_missing(test, run.start()) {
        return;
    }
    if !Sees::from(|what| skipped(run.start(), what)).fd_files {
        eprintln!(
            "skipped {test}: this kernel does not name the file of a descriptor, so no lock on it is proven"
        );
        return;
    }
    let mut p = Problems::default();
    let arrival = run.arrival();
    let tasks: Vec<&Value> = snapshot["tasks"].as_array().into_iter().flatten().collect();
    for (what, records) in [("run", &arrival), ("snapshot", &tasks)] {
        for &tid in &writers.stuck {
            let Some(record) = of_tid(records, tid).into_iter().next() else {
                p.0.push(format!("{what}: tid {tid} not listed"));
                continue;
            };
            let lock_holder = &record["lock"]["holder"];
            p.eq(&format!("{what}: tid {tid}: lock.holder.tid"), &lock_holder["tid"], holder);
            p.eq(&format!("{what}: tid {tid}: lock.holder.state"), &lock_holder["state"], "S");
            p.check(!lock_holder["function"].is_null(), || {
                format!("{what}: tid {tid}: lock.holder.function null: {lock_holder}")
            });
            let chain = record["chain"].as_array().cloned().unwrap_or_default();
            let shown = chain.iter().find(|link| link["link"] == "task" && link["tid"] == holder);
            p.check(shown.is_some_and(|link| link["state"] == "S"), || {
                format!(
                    "{what}: tid {tid}: the chain does not show holder {holder} in S: {}",
                    Value::Array(chain.clone())
                )
            });
        }
    }
    let named = format!("[{holder}]");
    for line in text.lines().filter(|line| line.contains(&named)) {
        p.check(!line.contains(&format!("{named} (gone)")), || {
            format!("snapshot text: holder {holder} shown gone: {line}")
        });
    }
    p.check(text_function(&text, &format!("sh[{holder}] S in ")).is_some_and(waits_for_answer), || {
        format!("snapshot text: holder {holder} not shown as \"sh[{holder}] S in request_wait_answer\"")
    });
    p.assert_none(&format!("{}\n\nsnapshot:\n{snapshot:#}\n\nsnapshot text:\n{text}", run.text()));
}
