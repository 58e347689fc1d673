//! `dstrace report`: reads recordings (the rotated files of one in any order),
//! selects what `--since`, `--until`, `--mount`, `--comm` and `--pid` let through,
//! and writes one format ([`crate::sinks::report`]) to standard output or a
//! private file; or, with `--at`, the tasks in D at one moment. A selection that
//! matches nothing is an error (status 1), so that a script or a person never
//! takes an empty flame graph for a quiet night.

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
    escape::{escape, shell_word},
    sinks::{
        self,
        json::json_wait,
        recording::{
            self,
            file::{read_file, refuse_output_over_input},
        },
        report::{
            folded, in_d_at, json, leading_frames, profile, select, speedscope, svg, Filter, ReportFormat,
            Selection,
        },
        tree::in_d_text,
        Format,
    },
};

/// Runs `dstrace report`.
pub fn report(args: &ReportArgs) -> Result<()> {
    if let Some(output) = &args.output {
        refuse_output_over_input(output, &args.files)?;
    }
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
    let selected = filter.since.is_some()
        || filter.until.is_some()
        || !filter.mounts.is_empty()
        || !filter.comms.is_empty()
        || !filter.pids.is_empty();
    if let Some(at) = time(&args.at, "--at")? {
        return write(args, &in_d_report(args, &recordings, &filter, at)?);
    }
    let leading = leading_frames(&args.group_by, !args.no_comm)?;
    let selection = select(&recordings, &filter);
    if selected && selection.rows.is_empty() && selection.waits.is_empty() && selection.in_d.is_empty() {
        let files: Vec<String> = args.files.iter().map(|file| shell_word(file.as_os_str())).collect();
        bail!(
            "nothing recorded matches {}: see what is there with `dstrace report {} --format json`",
            selection_text(args),
            files.join(" ")
        );
    }
    // After the empty-selection check: a selection that matches nothing is one line
    // of error, not a warning about totals no one will see.
    if !selection.drops.is_empty() {
        let lost: Vec<String> = selection.drops.iter().map(|(name, n)| format!("{name}={n}")).collect();
        eprintln!(
            "dstrace: warning: the kernel side lost data while this was recorded ({}): the totals are short of \
             what happened",
            lost.join(" ")
        );
    }
    let bytes = match args.format {
        ReportFormat::Folded => {
            let mut text = folded(&selection.rows, args.weight, &leading).join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            text.into_bytes()
        }
        ReportFormat::Svg => {
            let lines = folded(&selection.rows, args.weight, &leading);
            svg(&lines, args.weight, &subtitle(&selection))?
        }
        ReportFormat::Speedscope => {
            let name = format!("Off-CPU (D state), {}", subtitle(&selection));
            let mut text = serde_json::to_string(&speedscope(&selection.rows, args.weight, &leading, &name))?;
            text.push('\n');
            text.into_bytes()
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
    write(args, &bytes)
}

/// Writes the report to `-o FILE` or standard output.
fn write(args: &ReportArgs, bytes: &[u8]) -> Result<()> {
    match &args.output {
        Some(path) => write_private(path, bytes),
        None => io::stdout().lock().write_all(bytes).context("cannot write to standard output"),
    }
}

/// The selection given, for a message: its flags, each value quoted for the
/// shell as it could be typed again (control characters escaped).
fn selection_text(args: &ReportArgs) -> String {
    let mut flags = Vec::new();
    let mut flag = |name: &str, value: String| {
        flags.push(format!("{name} {}", shell_word(std::ffi::OsStr::new(&value))))
    };
    for (name, value) in [("--since", &args.since), ("--until", &args.until), ("--at", &args.at)] {
        if let Some(value) = value {
            flag(name, value.clone());
        }
    }
    for mount in &args.mount {
        flag("--mount", mount.clone());
    }
    for comm in &args.comm {
        flag("--comm", comm.clone());
    }
    for pid in &args.pid {
        flag("--pid", pid.to_string());
    }
    flags.join(" ")
}

/// `report --at`: the tasks in D at the recorded moment nearest `at`, as text
/// (the list `dstrace run` prints of the tasks in D, with their chains) or JSON.
fn in_d_report(
    args: &ReportArgs,
    recordings: &[recording::Recording],
    filter: &Filter,
    at: SystemTime,
) -> Result<Vec<u8>> {
    let Some((moment, waits)) = in_d_at(recordings, filter, at) else {
        bail!("no recorded interval matches {}", selection_text(args));
    };
    if waits.is_empty() && (!filter.mounts.is_empty() || !filter.comms.is_empty() || !filter.pids.is_empty())
    {
        bail!("no task in D at {} matches {}", rfc3339_utc(moment), selection_text(args));
    }
    let mut out = Vec::new();
    if args.format == ReportFormat::Json {
        let document = serde_json::json!({
            "type": "in_d",
            "at": rfc3339_utc(moment),
            "asked": rfc3339_utc(at),
            "in_d": waits.iter().map(json_wait).collect::<Vec<_>>(),
        });
        out = serde_json::to_vec_pretty(&document)?;
        out.push(b'\n');
        return Ok(out);
    }
    let seconds = |time: SystemTime| humantime::format_rfc3339_seconds(time).to_string();
    let title =
        format!("Recorded at {}, the nearest to {}:\n{}", seconds(moment), seconds(at), in_d_text(&waits));
    if waits.is_empty() {
        out.extend(format!("{title}\n").into_bytes());
    } else {
        sinks::lines(&mut out, Format::Text { stacks: false }).ongoing(&title, &waits)?;
    }
    Ok(out)
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
