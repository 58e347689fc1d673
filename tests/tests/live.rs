//! The incident view of `dstrace run` against real D states: the full-screen view
//! in a real terminal (tmux), the plain tables and the JSON lines, each showing the
//! tasks piled up behind a FUSE daemon that stopped answering, grouped by mount and
//! function, with ages that grow while the wait lasts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{thread::sleep, time::Duration};

use dstrace_tests::{dstrace_bin, fuse::FuseMount, json_lines, require_root, tmux::Tmux, Dstrace, Pileup};
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The full-screen view, driven in a tmux pane: it shows the group of the stuck
/// tasks with its chain, answers the keys, and `q` ends it with the summary on the
/// normal screen and the terminal as it was.
#[test]
fn full_screen_view_shows_the_groups_and_quits_cleanly() {
    if !require_root("full_screen_view_shows_the_groups_and_quits_cleanly") {
        return;
    }
    let mount = FuseMount::new("tui").expect("mount the test filesystem");
    let dir = std::env::temp_dir().join(format!("dstrace-tui-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stty = dir.join("stty");
    let command = format!(
        "stty -a > '{}.before'; '{}' run --comm stat --min-duration 0; echo \"exit=$?\"; stty -a > '{}'",
        stty.display(),
        dstrace_bin().display(),
        stty.display()
    );
    // Wide enough for a whole chain: behind the lookup's owner, to the daemon.
    let tmux = Tmux::start("tui", &command, 360, 50);
    let mountpoint = mount.path().to_str().unwrap().to_owned();
    tmux.wait_for(START_TIMEOUT, "tracing", |s| s.contains("tracing for"));
    // The tasks pile up once tracing is on, so their paths (and the mount) are seen.
    let pileup = Pileup::start(&mount, 2);

    // Other tests may pile tasks up at the same time: this mount's row says 2.
    let ours = |screen: &str| {
        screen.lines().any(|l| l.contains(&mountpoint) && l.split_whitespace().next() == Some("2"))
    };
    let screen = tmux
        .wait_for(START_TIMEOUT, "group of the stuck tasks", |s| ours(s) && s.contains("d_alloc_parallel"));
    assert!(screen.contains("chain: stat["), "the chain of the group: {screen}");
    assert!(screen.contains("FUSE request unanswered"), "the chain reaches the daemon: {screen}");
    assert!(screen.contains("q quit"), "the keys are listed: {screen}");

    // A filter keeps this mount's group only; Enter expands it to its tasks and stacks.
    let name = mount.path().file_name().unwrap().to_str().unwrap().to_owned();
    tmux.keys(&["/"]);
    tmux.keys(&["-l", &name]);
    tmux.keys(&["Enter"]);
    tmux.wait_for(Duration::from_secs(5), "filtered view", |s| {
        s.contains(&format!("[filter: {name}")) && ours(s)
    });
    tmux.keys(&["Enter"]);
    tmux.wait_for(Duration::from_secs(5), "expanded group", |s| s.contains("stack of 2 task(s):"));
    // `s` changes the order.
    tmux.keys(&["s"]);
    tmux.wait_for(Duration::from_secs(5), "new order", |s| s.contains("sort (oldest wait)"));
    // A filter that matches nothing, then Escape clears it.
    tmux.keys(&["Escape", "/", "n", "o", "m", "a", "t", "c", "h", "Enter"]);
    tmux.wait_for(Duration::from_secs(5), "empty filter result", |s| {
        s.contains("No group matches the filter")
    });
    tmux.keys(&["Escape"]);
    tmux.wait_for(Duration::from_secs(5), "group again", ours);

    tmux.keys(&["q"]);
    let screen = tmux.wait_for(Duration::from_secs(10), "exit", |s| s.contains("exit="));
    drop(pileup);
    assert!(screen.contains("exit=0"), "{screen}");
    // The summary may be longer than the pane (other tests' pile-ups are in it
    // too): its start is in the pane's history.
    let history = tmux.history();
    assert!(
        history.contains("== Summary") && history.contains("Still in D:"),
        "the summary stays: {history}"
    );
    // The terminal settings are those from before the run (raw mode undone).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !stty.exists() && std::time::Instant::now() < deadline {
        sleep(Duration::from_millis(50));
    }
    let before = std::fs::read_to_string(stty.with_extension("before")).unwrap();
    let after = std::fs::read_to_string(&stty).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(before, after, "stty -a differs after the run");
    assert!(after.contains(" icanon") && after.contains(" echo "), "{after}");
}

/// `--json`: each interval lists the tasks in D with ages that grow, and a groups
/// record with the mount; when the daemon answers, the waits end as `wait` records.
#[test]
fn json_lines_show_growing_ages_then_completed_waits() {
    if !require_root("json_lines_show_growing_ages_then_completed_waits") {
        return;
    }
    let mount = FuseMount::new("jsonlive").expect("mount the test filesystem");
    let mut dstrace =
        Dstrace::spawn(&["run", "--json", "--comm", "stat", "--interval", "1s", "--duration", "60s"]);
    dstrace.wait_for_line(START_TIMEOUT, |line| line.contains(r#""type":"start""#));
    let pileup = Pileup::start(&mount, 2);
    let stuck = pileup.stuck.clone();
    // Three interval records with both tasks in D.
    let intervals_with_both = |lines: &[String]| {
        json_lines(lines)
            .iter()
            .filter(|r| r["type"] == "interval" && r["tasks_in_d"].as_u64().is_some_and(|n| n >= 2))
            .count()
    };
    dstrace.wait_until(Duration::from_secs(15), |lines| intervals_with_both(lines) >= 3);
    drop(pileup); // the daemon answers
    dstrace.wait_until(Duration::from_secs(10), |lines| {
        let records = json_lines(lines);
        stuck.iter().all(|pid| records.iter().any(|r| r["type"] == "wait" && r["tgid"] == *pid))
    });
    let (status, lines) = dstrace.interrupt();
    assert!(status.success());
    let records = json_lines(&lines);

    for pid in &stuck {
        let ages: Vec<f64> = records
            .iter()
            .filter(|r| r["type"] == "ongoing" && r["tgid"] == *pid && r["source"] == "traced")
            .map(|r| r["blocked_ms"].as_f64().unwrap())
            .collect();
        assert!(ages.len() >= 2, "pid {pid} listed as ongoing fewer than twice: {ages:?}");
        assert!(ages.windows(2).all(|w| w[1] > w[0]), "the ages of pid {pid} do not grow: {ages:?}");
        // Its wait behind the lookup (its exec may have waited for a page first).
        let done = records
            .iter()
            .find(|r| r["type"] == "wait" && r["tgid"] == *pid && r["function"] == "d_alloc_parallel")
            .unwrap_or_else(|| panic!("no wait of {pid} in d_alloc_parallel"));
        assert!(
            done["blocked_ms"].as_f64().unwrap() >= ages[ages.len() - 1],
            "the completed wait is shorter than its last age: {done}"
        );
    }
    let mountpoint = mount.path().to_str().unwrap();
    let group = records
        .iter()
        .filter(|r| r["type"] == "interval")
        .flat_map(|r| r["groups"].as_array().unwrap())
        .find(|g| g["mount"]["mountpoint"] == mountpoint && g["tasks_in_d"] == 2)
        .unwrap_or_else(|| panic!("no interval group for {mountpoint}"));
    assert_eq!(group["function"], "d_alloc_parallel", "{group}");
    assert_eq!(group["mount"]["fstype"], "fuse.dstrace-test", "{group}");
    let summary = records.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["version"], 1);
    let done = summary["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["mount"]["mountpoint"] == mountpoint && g["function"] == "d_alloc_parallel")
        .unwrap_or_else(|| panic!("no summary group: {summary}"));
    assert!(done["completed"]["count"].as_u64().unwrap() >= 2, "{done}");
}

/// Piped (or `--plain`): the same groups as periodic tables, with the chain.
#[test]
fn plain_tables_show_the_same_groups() {
    if !require_root("plain_tables_show_the_same_groups") {
        return;
    }
    let mount = FuseMount::new("plain").expect("mount the test filesystem");
    let mut dstrace =
        Dstrace::spawn(&["run", "--plain", "--comm", "stat", "--interval", "1s", "--duration", "60s"]);
    dstrace.wait_for_line(START_TIMEOUT, |line| line.starts_with("TIME "));
    let pileup = Pileup::start(&mount, 2);
    let mountpoint = mount.path().to_str().unwrap().to_owned();
    // Other tests may pile tasks up at the same time: this mount's row says 2.
    let ours = |line: &str| line.contains(&mountpoint) && line.split_whitespace().next() == Some("2");
    dstrace.wait_until(START_TIMEOUT, |lines| lines.iter().filter(|l| ours(l)).count() >= 2);
    drop(pileup);
    let (status, lines) = dstrace.interrupt();
    assert!(status.success());
    let text = lines.join("\n");
    let table = text.split("\n-- ").find(|t| t.lines().any(ours)).unwrap();
    let rows: Vec<&str> = table.lines().collect();
    let mount_row = rows.iter().position(|r| r.contains(&mountpoint)).unwrap_or_else(|| panic!("{table}"));
    let function_row = rows[mount_row..].iter().find(|r| r.contains("d_alloc_parallel")).unwrap();
    let in_d: Vec<&str> = function_row.split_whitespace().collect();
    assert_eq!(in_d[0], "2", "two tasks in D in the group: {function_row}");
    assert!(table.contains("chain: stat["), "{table}");
    assert!(text.contains("== Summary"), "{text}");
}

/// The JSON schema's fields, as the README documents them, in a snapshot task.
#[test]
fn snapshot_json_has_the_documented_fields() {
    if !require_root("snapshot_json_has_the_documented_fields") {
        return;
    }
    let mount = FuseMount::new("schema").expect("mount the test filesystem");
    let pileup = Pileup::writers(&mount, 1);
    sleep(Duration::from_millis(300));
    let out = std::process::Command::new(dstrace_bin()).args(["snapshot", "--json"]).output().unwrap();
    let snapshot: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snapshot["version"], 1);
    let task = snapshot["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tgid"] == pileup.stuck[0])
        .unwrap_or_else(|| panic!("{snapshot:#}"));
    for field in
        ["tid", "tgid", "comm", "state", "blocked_ms", "function", "stack", "mount", "file", "lock", "chain"]
    {
        assert!(task.get(field).is_some(), "no {field:?} in {task:#}");
    }
    for field in ["mountpoint", "fstype", "source", "dev"] {
        assert!(task["mount"][field].is_string(), "no mount.{field} in {task:#}");
    }
    for field in ["path", "inode"] {
        assert!(!task["file"][field].is_null(), "no file.{field} in {task:#}");
    }
    assert!(task["stack"].as_array().is_some_and(|s| !s.is_empty()), "{task}");
    drop(pileup);
}

/// A pile-up on a terminal of `width` x `height` among finished waits of other
/// tasks: a program copied under the names `{name}stat` (the pile-up) and
/// `{name}dd` (the noise: a loop of short synchronous writes to a disk file, each
/// a short D wait, and `{name}sync` of the file), so that other tests' pile-ups
/// stay out (`--comm`).
struct Scene<'m> {
    tmux: Tmux,
    pileup: Pileup<'m>,
    mountpoint: String,
    /// The name of the pile-up's program.
    stat: String,
    _noise: dstrace_tests::Children,
    _scratch: dstrace_tests::Scratch,
}

impl<'m> Scene<'m> {
    fn start(mount: &'m FuseMount, name: &str, width: u16, height: u16) -> Scene<'m> {
        // On the disk (not a tmpfs): a synchronous write there waits in D.
        let scratch = dstrace_tests::Scratch::new(&format!("screen-{name}"));
        let stat = scratch.path(format!("{name}stat"));
        let dd = scratch.path(format!("{name}dd"));
        let sync = scratch.path(format!("{name}sync"));
        std::fs::copy(which("stat"), &stat).unwrap();
        std::fs::copy(which("dd"), &dd).unwrap();
        std::fs::copy(which("sync"), &sync).unwrap();
        let command = format!(
            "'{}' run --comm {name}stat --comm {name}dd --comm {name}sync --min-duration 0; echo \"exit=$?\"; \
             sleep 600",
            dstrace_bin().display(),
        );
        let tmux = Tmux::start(name, &command, width, height);
        tmux.wait_for(START_TIMEOUT, "tracing", |s| {
            status(s).contains("drops:") && !status(s).contains("loading")
        });
        let mut noise = dstrace_tests::Children::default();
        noise.spawn(std::process::Command::new("sh").arg("-c").arg(format!(
            "while :; do '{dd}' if=/dev/zero of='{file}' bs=4k count=8 oflag=dsync 2>/dev/null; '{sync}' '{file}'; \
             sleep 0.1; done",
            dd = dd.display(),
            sync = sync.display(),
            file = scratch.path("noise").display()
        )));
        let pileup = Pileup::of(mount, &stat, &mount.path().join("missing"), 2);
        let mountpoint = mount.path().to_str().unwrap().to_owned();
        Scene { tmux, pileup, mountpoint, stat: format!("{name}stat"), _noise: noise, _scratch: scratch }
    }

    /// Waits for a screen that shows the pile-up whole: its mount with the 2
    /// tasks in D, the lock's holder (the lookup's owner), the chain to the lookup's owner and the daemon, the advice with
    /// its remedy, the folded finished waits and the command line's filter.
    fn whole(&self) -> String {
        let owner = format!("[{}]", self.pileup.owner);
        let holder = format!("held by {}{owner}", self.stat);
        self.tmux.wait_for(START_TIMEOUT, "the whole pile-up on the first screen", |s| {
            let chain = paragraph(s, "chain:");
            let advice = paragraph(s, "* ");
            s.lines().any(|l| l.contains(&self.mountpoint) && l.split_whitespace().next() == Some("2"))
                && s.split_whitespace().collect::<Vec<_>>().join(" ").contains(&holder)
                && chain.contains(&owner)
                && chain.contains(" unanswered")
                && chain.contains("FUSE request")
                && chain
                    .rsplit(" -> ")
                    .next()
                    .is_some_and(|last| last.starts_with("FUSE daemon ") && last.contains(']'))
                && advice.contains(&format!("on the FUSE mount {}", self.mountpoint))
                && advice.ends_with("fails every pending request")
                && s.contains(" of finished waits, nothing in D now")
                && status(s).contains("only --comm")
                && status(s).contains("drops:")
        })
    }
}

/// The status line (one or more lines above the column header).
fn status(screen: &str) -> String {
    screen.lines().take_while(|l| !l.trim_start().starts_with("IN D")).take(3).collect::<Vec<_>>().join(" ")
}

/// Where a program is.
fn which(program: &str) -> std::path::PathBuf {
    let out =
        std::process::Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().unwrap();
    std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The line of `screen` that starts (after its indentation) with `start`, with
/// the lines after it that are indented more (its continuation), as one line.
fn paragraph(screen: &str, start: &str) -> String {
    let lines: Vec<&str> = screen.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let Some(first) = lines.iter().position(|l| l.trim_start().starts_with(start)) else {
        return String::new();
    };
    let mut text = lines[first].trim().to_owned();
    for line in &lines[first + 1..] {
        if line.trim().is_empty() || indent(line) <= indent(lines[first]) {
            break;
        }
        text.push(' ');
        text.push_str(line.trim());
    }
    text
}

fn first_screen_shows_the_pileup_whole(name: &str, width: u16, height: u16) {
    if !require_root(name) {
        return;
    }
    let mount = FuseMount::new(name).expect("mount the test filesystem");
    let scene = Scene::start(&mount, name, width, height);
    let screen = scene.whole();
    assert!(
        screen.lines().all(|l| l.chars().count() <= usize::from(width)),
        "nothing wider than the pane: {screen}"
    );
    // The chain, the line that says why, in normal weight (not dim: SGR 2).
    let styled = scene.tmux.styled_screen();
    let chain = styled.lines().find(|l| l.contains("chain:")).unwrap_or_else(|| panic!("{styled}"));
    assert!(!chain.contains("\x1b[2m") && !chain.contains(";2m"), "the chain is dim: {chain:?}");
    scene.tmux.keys(&["q"]);
    let screen = scene.tmux.wait_for(Duration::from_secs(10), "exit", |s| s.contains("exit="));
    assert!(screen.contains("exit=0"), "{screen}");
}

/// At 80x24, the first screen of a pile-up among finished waits shows the stuck
/// mount, the whole chain (to the lookup's owner and the daemon) and the whole
/// advice: the stuck group first, the finished ones folded, every line wrapped.
#[test]
fn first_screen_shows_the_pileup_whole_at_80x24() {
    first_screen_shows_the_pileup_whole("s80", 80, 24);
}

/// The same at 120x40.
#[test]
fn first_screen_shows_the_pileup_whole_at_120x40() {
    first_screen_shows_the_pileup_whole("s120", 120, 40);
}

/// The keys of the 3 a.m. screen: the column header stays when the groups
/// scroll after expanding them all; `/fuse` finds the FUSE group by its type; `?`
/// shows the help; Escape clears the filter and never quits.
#[test]
fn header_stays_filter_finds_the_type_help_and_escape_does_not_quit() {
    if !require_root("header_stays_filter_finds_the_type_help_and_escape_does_not_quit") {
        return;
    }
    let mount = FuseMount::new("sk").expect("mount the test filesystem");
    let scene = Scene::start(&mount, "sk", 80, 24);
    let tmux = &scene.tmux;
    scene.whole();
    // Under the status line (which may take two lines).
    let header = |s: &str| s.lines().take(3).any(|l| l.trim_start().starts_with("IN D"));
    // The finished waits shown, the last group selected, everything expanded:
    // far more lines than the pane.
    tmux.keys(&["f"]);
    tmux.wait_for(Duration::from_secs(5), "the finished waits", |s| s.contains("f hides them"));
    tmux.keys(&["G", "e"]);
    // The last group (finished waits, nothing to list) expanded: `-`.
    let screen = tmux.wait_for(Duration::from_secs(5), "expanded groups", |s| s.contains(" -  done by"));
    let mount_row = |s: &str| {
        s.lines().any(|l| l.contains(&scene.mountpoint) && l.split_whitespace().next() == Some("2"))
    };
    assert!(!mount_row(&screen), "scrolled down to the last group: {screen}");
    assert!(header(&screen), "the column header stays: {screen}");
    tmux.keys(&["e", "g"]);

    // The filter matches the mount's type.
    tmux.keys(&["/", "f", "u", "s", "e", "Enter"]);
    let screen = tmux.wait_for(Duration::from_secs(5), "filtered view", |s| s.contains("[filter: fuse"));
    let screen = if mount_row(&screen) {
        screen
    } else {
        tmux.wait_for(Duration::from_secs(5), "the FUSE group", mount_row)
    };
    assert!(!screen.contains("No group matches"), "{screen}");

    // Escape clears the filter; another one does not quit: `?` still answers.
    tmux.keys(&["Escape"]);
    tmux.wait_for(Duration::from_secs(5), "filter cleared", |s| !s.contains("[filter:"));
    tmux.keys(&["Escape"]);
    tmux.keys(&["?"]);
    let screen = tmux.wait_for(Duration::from_secs(5), "help", |s| s.contains("this help"));
    assert!(!screen.contains("exit="), "Escape quit: {screen}");
    for key in ["PgUp/PgDn", "g/G", "p ", "q, Ctrl-C", "Esc "] {
        assert!(screen.contains(key), "the help names {key:?}: {screen}");
    }
    tmux.keys(&["Escape"]);
    tmux.wait_for(Duration::from_secs(5), "help closed", |s| !s.contains("this help"));
    // `p` pauses, and says so.
    tmux.keys(&["p"]);
    tmux.wait_for(Duration::from_secs(5), "paused", |s| status(s).contains("PAUSED"));
    tmux.keys(&["q"]);
    let screen = tmux.wait_for(Duration::from_secs(10), "exit", |s| s.contains("exit="));
    assert!(screen.contains("exit=0"), "{screen}");
}
