//! `dstrace record`: trace to a recording file instead of the terminal, for hours
//! or days, until Ctrl-C, SIGTERM or `--duration`. Each interval holds the waits
//! completed in it and the tasks in D at its end, from a look taken then.

use anyhow::{Context as _, Result};

use crate::{
    cli::args::RecordArgs,
    clock::{duration_ns, human_duration},
    commands::session::{self, Session, Signals, Wake},
    kernel::{loader::Options, preflight, privileges::Needs},
    resolve::Names,
    sinks::{
        recording::recorder::{written_line, Recorder},
        tree::drops_text,
    },
};

/// Runs `dstrace record` to completion.
pub fn record(args: &RecordArgs) -> Result<()> {
    preflight::check()?;
    if args.interval.is_zero() {
        anyhow::bail!("--interval 0: give a recording interval such as 10s");
    }
    let options = Options {
        min_duration: args.min_duration,
        include_idle: args.include_idle,
        no_waker: args.waker.no_waker,
        sample: args.sample,
        ..Options::default()
    };
    session::runtime()?.block_on(record_loop(args, options))
}

async fn record_loop(args: &RecordArgs, options: Options) -> Result<()> {
    let signals = Signals::catch_with_hangup()?;
    // The file first: a bad path fails before anything is loaded.
    let mut recorder =
        Recorder::create(args.caps.file(args.output.clone()), args.interval, args.min_duration)?;
    let mut session = Session::start(options, Names::new(), signals, args.duration)?;
    session.keep_ended_processes();
    for note in session.settle(Needs { write_files: true }).into_iter().chain(session.skipped_notes(true)) {
        eprintln!("dstrace: {note}");
    }
    let what = if args.sample {
        "sampling the tasks in D at each: no hook, no completed wait".to_owned()
    } else {
        format!("waits of at least {} one by one", human_duration(duration_ns(args.min_duration)))
    };
    eprintln!(
        "dstrace: recording to {} every {} ({what}); Ctrl-C stops",
        args.output.display(),
        human_duration(duration_ns(args.interval)),
    );

    let min_duration_ns = duration_ns(args.min_duration);
    let mut ticks = recorder.ticks();
    loop {
        match session.next(ticks.tick()).await? {
            Wake::Stop => break,
            Wake::Waits => session.drain(|wait| recorder.wait(wait).context("cannot record"))?,
            Wake::Input(_) => {
                let in_d = look(&mut session, min_duration_ns);
                let names = &mut session.names;
                recorder.interval(&session.tracer, &mut names.stacks, &mut names.mounts, &in_d)?;
            }
        }
    }
    session.drain(|wait| recorder.wait(wait).context("cannot record"))?;
    let in_d = look(&mut session, min_duration_ns);
    let names = &mut session.names;
    let recorder = recorder.finish(&session.tracer, &mut names.stacks, &mut names.mounts, &in_d)?;
    let drops = drops_text(&session.tracer.counters().unwrap_or_default(), session.bad_records);
    eprintln!("dstrace: {}{drops}", written_line(&recorder));
    Ok(())
}

/// The tasks in D now, for the interval ending: the incident is the waits that
/// have not ended. What the session has to say about the look is said at once.
fn look(session: &mut Session, min_duration_ns: u64) -> Vec<crate::model::wait::Wait> {
    let in_d = session.in_d_now(min_duration_ns);
    for note in session.notes() {
        eprintln!("dstrace: {note}");
    }
    in_d
}
