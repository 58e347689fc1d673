//! A D-state load generator: completed D waits of a chosen length at a chosen rate
//! (`dstrace-dload`, and the benchmarks' maximum-rate and collector phases).
//!
//! Each wait is a real lock wait of the kind an incident shows: a writer waits in D
//! for a file's inode lock (`i_rwsem`) while another writer of that file holds it,
//! waiting for a FUSE server (this process's, [`crate::fuse`]) that answers after
//! `length`. The load is spread over *lanes*, one file each with two threads:
//!
//! * the holder takes a token (the pacer hands them out at `rate`, round robin) and
//!   writes two bytes: the server gets the write and answers it `length` later, the
//!   holder keeping the inode lock meanwhile;
//! * as the write arrives, the server wakes the lane's waiter, which writes nothing
//!   (a zero-byte write takes the inode lock and returns without asking the
//!   server): it waits in D in `down_write` until the holder's answer, about
//!   `length`, then the wait is counted.
//!
//! There are enough lanes that a lane is busy at most two thirds of the time at the
//! chosen rate; a lane that falls behind keeps its tokens, so the rate achieved is
//! measured ([`Report`]), never assumed.

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::fuse::{lane_name, DelayedWrites, FuseMount, MAX_LANES};

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Completed D waits per second.
    pub rate: f64,
    /// How long each wait lasts.
    pub length: Duration,
}

impl Load {
    /// Lanes needed: each busy at most two thirds of the time.
    pub fn lanes(&self) -> u64 {
        ((self.rate * self.length.as_secs_f64() * 1.5).ceil() as u64 + 1).min(MAX_LANES)
    }
}

/// What a load did.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// D waits completed.
    pub waits: u64,
    /// Seconds from start to stop.
    pub seconds: f64,
}

impl Report {
    /// Completed waits per second.
    pub fn rate(&self) -> f64 {
        self.waits as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }
}

/// A load running until [`Running::stop`] (or drop).
pub struct Running {
    stop: Arc<AtomicBool>,
    waits: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
    // Dropped last: the lanes' files live on it.
    mount: Option<FuseMount>,
}

/// How often stopping threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// Mounts a FUSE filesystem (named after `name`) and starts the load on it.
pub fn start(name: &str, load: Load) -> io::Result<Running> {
    let lanes = load.lanes();
    let (wake, woken): (Vec<_>, Vec<_>) = (0..lanes).map(|_| mpsc::channel::<()>()).unzip();
    let on_held = Box::new(move |lane: u64| {
        if let Some(wake) = wake.get(lane as usize) {
            let _ = wake.send(());
        }
    });
    let mount = FuseMount::with_delayed_writes(name, DelayedWrites { delay: load.length, on_held })?;
    let stop = Arc::new(AtomicBool::new(false));
    let waits = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    let mut tokens = Vec::new();
    let mut running = Running {
        stop: stop.clone(),
        waits: waits.clone(),
        threads: Vec::new(),
        started: Instant::now(),
        mount: None,
    };
    for (lane, woken) in (0..lanes).zip(woken) {
        let path = mount.path().join(lane_name(lane));
        let holder_file = File::options().write(true).open(&path)?;
        let waiter_file = File::options().write(true).open(&path)?;
        let (token, tokens_in) = mpsc::channel::<()>();
        tokens.push(token);
        // The waiter says when it is through, so that the holder never queues
        // behind it for the lock (a second, unplanned wait).
        let (through, waiter_through) = mpsc::channel::<()>();
        let stop_holder = stop.clone();
        threads.push(std::thread::Builder::new().name(format!("dload-hold-{lane}")).spawn(move || {
            while !stop_holder.load(Ordering::Relaxed) {
                if tokens_in.recv_timeout(POLL).is_err() {
                    continue;
                }
                if holder_file.write_at(b"hd", 0).is_err() {
                    return;
                }
                while waiter_through.recv_timeout(POLL).is_err() {
                    if stop_holder.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        })?);
        let (stop_waiter, count) = (stop.clone(), waits.clone());
        threads.push(std::thread::Builder::new().name(format!("dload-wait-{lane}")).spawn(move || {
            while !stop_waiter.load(Ordering::Relaxed) {
                if woken.recv_timeout(POLL).is_ok() {
                    if waiter_file.write_at(b"", 0).is_err() {
                        return;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    let _ = through.send(());
                }
            }
        })?);
    }
    let stop_pacer = stop.clone();
    let rate = load.rate;
    threads.push(std::thread::Builder::new().name("dload-pacer".into()).spawn(move || {
        // SAFETY: prctl(PR_SET_TIMERSLACK) on this thread, no pointer involved.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };
        let started = Instant::now();
        let mut sent = 0u64;
        while !stop_pacer.load(Ordering::Relaxed) {
            let due = (started.elapsed().as_secs_f64() * rate) as u64;
            while sent < due {
                let _ = tokens[(sent % tokens.len() as u64) as usize].send(());
                sent += 1;
            }
            // Next token, or a look at the stop flag.
            let next = Duration::from_secs_f64((sent + 1) as f64 / rate.max(1e-3));
            std::thread::sleep(next.saturating_sub(started.elapsed()).min(POLL));
        }
    })?);
    running.threads = threads;
    running.started = Instant::now();
    running.mount = Some(mount);
    Ok(running)
}

impl Running {
    /// D waits completed so far.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Stops the load, waits for its threads, unmounts, and says what it did.
    pub fn stop(mut self) -> Report {
        self.halt()
    }

    fn halt(&mut self) -> Report {
        let seconds = self.started.elapsed().as_secs_f64();
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.mount = None;
        Report { waits: self.waits(), seconds }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Threads that sleep (in S) until dropped: a machine with many threads, for the
/// start-up benchmarks.
pub struct IdleThreads {
    wake: Arc<(Mutex<bool>, Condvar)>,
    threads: Vec<JoinHandle<()>>,
}

impl IdleThreads {
    /// Starts `n` sleeping threads (small stacks: 10,000 take 640 MiB of address
    /// space, a few MiB of memory).
    pub fn start(n: usize) -> io::Result<IdleThreads> {
        let wake = Arc::new((Mutex::new(false), Condvar::new()));
        let mut idle = IdleThreads { wake: wake.clone(), threads: Vec::with_capacity(n) };
        for _ in 0..n {
            let wake = wake.clone();
            idle.threads.push(std::thread::Builder::new().stack_size(64 << 10).spawn(move || {
                let (done, changed) = &*wake;
                let mut done = done.lock().unwrap_or_else(|poison| poison.into_inner());
                while !*done {
                    done = changed.wait(done).unwrap_or_else(|poison| poison.into_inner());
                }
            })?);
        }
        Ok(idle)
    }
}

impl Drop for IdleThreads {
    fn drop(&mut self) {
        let (done, changed) = &*self.wake;
        *done.lock().unwrap_or_else(|poison| poison.into_inner()) = true;
        changed.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
