//! `dstrace-dload`: makes D waits of a chosen length at a chosen rate, until the
//! duration is over or Ctrl-C, then says how many it made (see
//! `dstrace_tests::dload` for how). Needs root (it mounts a FUSE filesystem under
//! the temporary directory, undone at the end).
//!
//! Example: `sudo target/release/dstrace-dload --rate 10000 --length 2ms --duration 30s`

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use dstrace::cli::parse::parse_duration;
use dstrace_tests::dload::{self, IdleThreads, Load};

#[derive(Parser)]
#[command(about = "Make D waits (writers waiting for a FUSE file's inode lock) at a chosen rate and length")]
struct Args {
    /// Completed D waits per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long each wait lasts (e.g. 500us, 2ms).
    #[arg(long, default_value = "2ms", value_parser = parse_duration)]
    length: Duration,
    /// Stop after this long (default: 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Also keep this many idle threads (sleeping in S) meanwhile.
    #[arg(long, default_value_t = 0)]
    idle_threads: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.rate > 0.0 && args.rate.is_finite()) || args.length.is_zero() {
        eprintln!("dstrace-dload: --rate and --length must be positive");
        return ExitCode::from(2);
    }
    let load = Load { rate: args.rate, length: args.length };
    let idle = match IdleThreads::start(args.idle_threads) {
        Ok(idle) => idle,
        Err(err) => {
            eprintln!("dstrace-dload: cannot start {} idle threads: {err}", args.idle_threads);
            return ExitCode::FAILURE;
        }
    };
    let running = match dload::start("dload", load) {
        Ok(running) => running,
        Err(err) => {
            eprintln!("dstrace-dload: cannot start the load (needs root and /dev/fuse): {err}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "dstrace-dload: {} waits/s of {:?} on {} lanes for {:?}",
        args.rate,
        args.length,
        load.lanes(),
        args.duration
    );
    std::thread::sleep(args.duration);
    let report = running.stop();
    drop(idle);
    println!("{} D waits in {:.1} s: {:.0} per second", report.waits, report.seconds, report.rate());
    ExitCode::SUCCESS
}
