//! `dstrace report`: reads recordings (the rotated files of one in any order),
//! selects what `--since`, `--until`, `--mount`, `--comm` and `--pid` let through,
//! and writes one format ([`crate::sinks::report`]) to standard output or a
//! private file.

use std::{
    fs::File,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cli::{args::ReportArgs, parse::parse_time},
    clock::rfc3339_utc,
    sinks::{
        escape::escape,
        recording::{self, file::read_file},
        report::{folded, json, profile, select, svg, Filter, ReportFormat, Selection},
    },
};

/// Runs `dstrace report`.
pub fn report(args: &ReportArgs) -> Result<()> {
    let mut recordings = Vec::new();
    let mut damage = Vec::new();
    for path in &args.files {
        let bytes = read_file(path)?;
        let recording =
            recording::read(&bytes).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
        for hurt in &recording.damage {
            let line = format!("{}: {hurt}", path.display());
            eprintln!("dstrace: warning: {}", escape(&line));
            damage.push(line);
        }
        recordings.push(recording);
    }
    let end = recordings.iter().flat_map(|r| &r.intervals).map(|i| i.end).max().unwrap_or(SystemTime::now());
    let time = |text: &Option<String>, flag: &str| -> Result<Option<SystemTime>> {
        text.as_deref()
            .map(|text| parse_time(text, end).map_err(|err| anyhow::anyhow!("{flag}: {err}")))
            .transpose()
    };
    let filter = Filter {
        since: time(&args.since, "--since")?,
        until: time(&args.until, "--until")?,
        mounts: args.mount.clone(),
        comms: args.comm.clone(),
        pids: args.pid.clone(),
    };
    let selection = select(&recordings, &filter);
    let bytes = match args.format {
        ReportFormat::Folded => {
            let mut text = folded(&selection.rows, args.weight, &args.group_by).join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            text.into_bytes()
        }
        ReportFormat::Svg => {
            let lines = folded(&selection.rows, args.weight, &args.group_by);
            svg(&lines, args.weight, &subtitle(&selection))?
        }
        ReportFormat::Pprof => {
            if args.output.is_none() && is_terminal() {
                bail!("a pprof profile is binary: write it to a file with -o FILE (e.g. -o blocked.pb.gz)");
            }
            profile(&selection.rows, selection.span, args.weight)?
        }
        ReportFormat::Json => {
            let sessions: Vec<recording::Session> =
                recordings.iter().flat_map(|r| r.sessions.iter().cloned()).collect();
            let mut text = serde_json::to_string_pretty(&json(&selection, &sessions, &args.files, &damage))?;
            text.push('\n');
            text.into_bytes()
        }
    };
    match &args.output {
        Some(path) => write_private(path, &bytes),
        None => io::stdout().lock().write_all(&bytes).context("cannot write to standard output"),
    }
}

/// The time span of a selection, for people.
fn subtitle(selection: &Selection) -> String {
    match selection.span {
        Some((start, end)) => {
            let seconds = end.duration_since(start).unwrap_or(Duration::ZERO).as_secs();
            format!("dstrace: {} to {} ({seconds} s)", rfc3339_utc(start), rfc3339_utc(end))
        }
        None => "dstrace".to_owned(),
    }
}

fn is_terminal() -> bool {
    // SAFETY: isatty has no preconditions.
    unsafe { libc::isatty(libc::STDOUT_FILENO) == 1 }
}

/// Writes a report file: mode 0600 (it names processes and paths), never through
/// a symbolic link.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| {
            if err.raw_os_error() == Some(libc::ELOOP) {
                anyhow::anyhow!(
                    "{} is a symbolic link: reports are never written through one",
                    path.display()
                )
            } else {
                anyhow::anyhow!("cannot create {}: {err}", path.display())
            }
        })?;
    file.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))
}
