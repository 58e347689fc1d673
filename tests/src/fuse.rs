//! A minimal FUSE server that can stop answering: real D states on demand.
//!
//! It speaks just enough of the FUSE protocol (include/uapi/linux/fuse.h) over
//! `/dev/fuse` to be mounted: it answers `INIT` and `GETATTR` of the root, and holds
//! every `LOOKUP` while its gate is closed, then answers `ENOENT`. A task that looks
//! a name up while the gate is closed waits for the answer in `request_wait_answer`;
//! every other task looking up the same name waits for the first one in
//! `d_alloc_parallel`, in `TASK_UNINTERRUPTIBLE`: the pile-up of a dead NFS or FUSE
//! server (docs/TOOLCHAIN.md).
//!
//! One regular file, [`FILE_NAME`], is looked up, opened and flushed at once, but
//! its `WRITE`s are held too: the first writer waits for the server holding the
//! inode's lock, and every other writer waits for that lock in D, in `write(2)` on
//! a file descriptor (which `/proc` alone attributes to the mount).
//!
//! For the load generator ([`crate::dload`]) a mount can also serve *lane* files
//! ([`lane_name`]) whose writes of two bytes or more are answered after a fixed
//! delay ([`FuseMount::with_delayed_writes`]): their writer holds the inode's lock
//! that long, and a second writer of the same lane waits for it in D.
//!
//! The mount lives under the system's temporary directory, never in the
//! repository, and [`FuseMount`]'s `Drop` always undoes it: it opens the gate and
//! detaches the mount (`umount -l`), which ends the connection and fails whatever
//! is still pending. If the test process dies, the kernel closes `/dev/fuse`,
//! which aborts the connection too.

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read, Write},
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_WRITE: u32 = 16;
const FUSE_RELEASE: u32 = 18;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_BATCH_FORGET: u32 = 42;
const FUSE_ROOT_ID: u64 = 1;
const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// The node id of [`FILE_NAME`].
const FILE_ID: u64 = 2;
/// The one regular file of the filesystem (empty; writes are held like lookups).
pub const FILE_NAME: &str = "file";
/// Node id of lane 0 ([`lane_name`]); lane `n` is `LANE_BASE_ID + n`.
const LANE_BASE_ID: u64 = 1 << 20;
/// The most lanes a mount serves.
pub const MAX_LANES: u64 = 1 << 16;
const IN_HEADER_LEN: usize = 40;

/// Whether `LOOKUP` requests are answered.
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn set(&self, open: bool) {
        *self.open.lock().unwrap_or_else(|poison| poison.into_inner()) = open;
        self.changed.notify_all();
    }

    fn wait_open(&self) {
        let mut open = self.open.lock().unwrap_or_else(|poison| poison.into_inner());
        while !*open {
            open = self.changed.wait(open).unwrap_or_else(|poison| poison.into_inner());
        }
    }
}

/// The name of lane file `n` (`n` below [`MAX_LANES`]).
pub fn lane_name(n: u64) -> String {
    format!("lane-{n}")
}

/// The lane of a file name, if it is one.
fn lane_of(name: &[u8]) -> Option<u64> {
    let n: u64 = std::str::from_utf8(name.strip_prefix(b"lane-")?).ok()?.parse().ok()?;
    (n < MAX_LANES).then_some(n)
}

/// Writes to lane files answered after a delay.
pub struct DelayedWrites {
    /// How long a write of two bytes or more waits for its answer (shorter writes
    /// are answered at once).
    pub delay: Duration,
    /// Called on the server's thread with the lane as such a write arrives: its
    /// writer holds the lane's inode lock from now until the answer.
    pub on_held: Box<dyn Fn(u64) + Send>,
}

/// A mounted test filesystem served by a thread of this process.
pub struct FuseMount {
    dir: PathBuf,
    gate: Arc<Gate>,
    server: Option<JoinHandle<()>>,
}

impl FuseMount {
    /// Mounts a new filesystem on a fresh directory under the temporary directory,
    /// with its gate open.
    pub fn new(name: &str) -> io::Result<FuseMount> {
        FuseMount::mount(name, None)
    }

    /// As [`FuseMount::new`], and writes to the lane files ([`lane_name`]) are
    /// answered as `delayed` says.
    pub fn with_delayed_writes(name: &str, delayed: DelayedWrites) -> io::Result<FuseMount> {
        FuseMount::mount(name, Some(delayed))
    }

    /// Mounts a new filesystem on `dir` (created if missing), with its gate open,
    /// under the type `fuse.NAME` and the source `NAME` (`/proc/PID/mountinfo`):
    /// for a server in a process of its own (`dstrace-test-fused`), which may
    /// mount it in a mount namespace of its own. `name` must be a valid FUSE
    /// subtype (no spaces or commas).
    pub fn at(dir: PathBuf, name: &str) -> io::Result<FuseMount> {
        FuseMount::mount_on(dir, name, None)
    }

    fn mount(name: &str, delayed: Option<DelayedWrites>) -> io::Result<FuseMount> {
        let dir = std::env::temp_dir().join(format!("dstrace-test-{name}-{}", std::process::id()));
        FuseMount::mount_on(dir, "dstrace-test", delayed)
    }

    fn mount_on(dir: PathBuf, fs_name: &str, delayed: Option<DelayedWrites>) -> io::Result<FuseMount> {
        std::fs::create_dir_all(&dir)?;
        let dev = File::options().read(true).write(true).open("/dev/fuse")?;
        let options = format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd());
        mount(&dir, fs_name, &options)?;
        let gate = Arc::new(Gate { open: Mutex::new(true), changed: Condvar::new() });
        let server_gate = gate.clone();
        let server = std::thread::Builder::new().name("fuse-server".into()).spawn(move || {
            // The server ends when the connection does (unmount or abort).
            let _ = serve(dev, &server_gate, delayed);
        })?;
        Ok(FuseMount { dir, gate, server: Some(server) })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Stops answering lookups (the server "goes away").
    pub fn hold(&self) {
        self.gate.set(false);
    }

    /// Answers held and future lookups again.
    pub fn release(&self) {
        self.gate.set(true);
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.release();
        if let Ok(path) = CString::new(self.dir.as_os_str().as_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Mounts the FUSE connection `options` names on `dir`, as type `fuse.NAME` from
/// the source `NAME`.
fn mount(dir: &Path, name: &str, options: &str) -> io::Result<()> {
    let fstype = format!("fuse.{name}");
    crate::mounts::mount(Some(name), dir, Some(&fstype), libc::MS_NOSUID | libc::MS_NODEV, Some(options))
}

/// Reads requests until the connection ends; each lookup runs on a thread of its
/// own so that a held one does not stop the others.
fn serve(dev: File, gate: &Arc<Gate>, delayed: Option<DelayedWrites>) -> io::Result<()> {
    let dev = Arc::new(dev);
    let timer = delayed.as_ref().map(|_| Timer::start(dev.clone())).transpose()?;
    let mut buf = vec![0u8; 1 << 20 | 4096];
    loop {
        let len = match (&*dev).read(&mut buf) {
            Ok(len) => len,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue, // interrupted request
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err), // ENODEV: unmounted or aborted
        };
        if len < IN_HEADER_LEN {
            continue;
        }
        let opcode = u32::from_le_bytes(buf[4..8].try_into().unwrap_or_default());
        let unique = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
        let nodeid = u64::from_le_bytes(buf[16..24].try_into().unwrap_or_default());
        match opcode {
            FUSE_INIT => reply(&dev, unique, 0, &init_out())?,
            FUSE_GETATTR if nodeid == FUSE_ROOT_ID => reply(&dev, unique, 0, &attr_out(FUSE_ROOT_ID))?,
            FUSE_GETATTR if is_file(nodeid) => reply(&dev, unique, 0, &attr_out(nodeid))?,
            FUSE_LOOKUP if lookup_name(&buf[IN_HEADER_LEN..len]) == FILE_NAME.as_bytes() => {
                reply(&dev, unique, 0, &entry_out(FILE_ID))?
            }
            FUSE_LOOKUP if lane_of(lookup_name(&buf[IN_HEADER_LEN..len])).is_some() => {
                let lane = lane_of(lookup_name(&buf[IN_HEADER_LEN..len])).unwrap_or_default();
                reply(&dev, unique, 0, &entry_out(LANE_BASE_ID + lane))?
            }
            FUSE_OPEN if is_file(nodeid) => {
                // fuse_open_out: fh 0, FOPEN_KEEP_CACHE (an open does not wait for
                // the page a held writer has locked).
                let mut out = [0u8; 16];
                out[8..12].copy_from_slice(&FOPEN_KEEP_CACHE.to_le_bytes());
                reply(&dev, unique, 0, &out)?
            }
            FUSE_FLUSH | FUSE_RELEASE => reply(&dev, unique, 0, &[])?,
            FUSE_WRITE if len >= IN_HEADER_LEN + 20 => {
                // fuse_write_in: fh, offset, size (u32), ...
                let size = u32::from_le_bytes(
                    buf[IN_HEADER_LEN + 16..IN_HEADER_LEN + 20].try_into().unwrap_or_default(),
                );
                let mut out = size.to_le_bytes().to_vec(); // fuse_write_out: size, padding
                out.extend_from_slice(&[0u8; 4]);
                if nodeid >= LANE_BASE_ID {
                    match (&delayed, &timer) {
                        (Some(delayed), Some(timer)) if size >= 2 => {
                            (delayed.on_held)(nodeid - LANE_BASE_ID);
                            timer.reply_at(Instant::now() + delayed.delay, unique, out);
                        }
                        _ => reply(&dev, unique, 0, &out)?,
                    }
                    continue;
                }
                let (dev, gate) = (dev.clone(), gate.clone());
                std::thread::spawn(move || {
                    gate.wait_open();
                    let _ = reply(&dev, unique, 0, &out);
                });
            }
            FUSE_LOOKUP => {
                let (dev, gate) = (dev.clone(), gate.clone());
                std::thread::spawn(move || {
                    gate.wait_open();
                    let _ = reply(&dev, unique, -libc::ENOENT, &[]);
                });
            }
            FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT => {} // no reply expected
            FUSE_DESTROY => return reply(&dev, unique, 0, &[]),
            _ => reply(&dev, unique, -libc::ENOSYS, &[])?,
        }
    }
}

/// Whether a node is a regular file ([`FILE_NAME`] or a lane).
fn is_file(nodeid: u64) -> bool {
    nodeid == FILE_ID || (LANE_BASE_ID..LANE_BASE_ID + MAX_LANES).contains(&nodeid)
}

/// Replies sent at a chosen time, by a thread of their own.
struct Timer {
    send: mpsc::Sender<(Instant, u64, Vec<u8>)>,
}

impl Timer {
    fn start(dev: Arc<File>) -> io::Result<Timer> {
        let (send, receive) = mpsc::channel::<(Instant, u64, Vec<u8>)>();
        std::thread::Builder::new().name("fuse-timer".into()).spawn(move || {
            // SAFETY: prctl(PR_SET_TIMERSLACK) on this thread, no pointer involved:
            // wake-ups on time to the microsecond rather than the default 50 us.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };
            // Earliest first.
            let mut due: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, u64, Vec<u8>)>> =
                std::collections::BinaryHeap::new();
            loop {
                let next = match due.peek() {
                    Some(std::cmp::Reverse((at, _, _))) => {
                        receive.recv_timeout(at.saturating_duration_since(Instant::now()))
                    }
                    None => receive.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                };
                match next {
                    Ok(item) => due.push(std::cmp::Reverse(item)),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                let now = Instant::now();
                while due.peek().is_some_and(|std::cmp::Reverse((at, _, _))| *at <= now) {
                    if let Some(std::cmp::Reverse((_, unique, out))) = due.pop() {
                        let _ = reply(&dev, unique, 0, &out);
                    }
                }
            }
        })?;
        Ok(Timer { send })
    }

    fn reply_at(&self, at: Instant, unique: u64, out: Vec<u8>) {
        let _ = self.send.send((at, unique, out));
    }
}

/// Writes one reply: `fuse_out_header` then the payload.
fn reply(dev: &File, unique: u64, error: i32, payload: &[u8]) -> io::Result<()> {
    let len = 16 + payload.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&error.to_le_bytes());
    out.extend_from_slice(&unique.to_le_bytes());
    out.extend_from_slice(payload);
    match { dev }.write(&out) {
        Ok(_) => Ok(()),
        // The request was interrupted or the connection is gone.
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(err) => Err(err),
    }
}

/// `fuse_init_out` for protocol 7.31: no optional feature asked for.
fn init_out() -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&7u32.to_le_bytes()); // major
    out.extend_from_slice(&31u32.to_le_bytes()); // minor
    out.extend_from_slice(&(128u32 << 10).to_le_bytes()); // max_readahead
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.extend_from_slice(&16u16.to_le_bytes()); // max_background
    out.extend_from_slice(&12u16.to_le_bytes()); // congestion_threshold
    out.extend_from_slice(&(128u32 << 10).to_le_bytes()); // max_write
    out.extend_from_slice(&1u32.to_le_bytes()); // time_gran
    out.resize(64, 0); // max_pages, map_alignment, flags2, unused: zero
    out
}

/// The name of a `LOOKUP` request (NUL-terminated after the header).
fn lookup_name(body: &[u8]) -> &[u8] {
    body.split(|&b| b == 0).next().unwrap_or_default()
}

/// `fuse_attr` of the root directory or of [`FILE_NAME`].
fn attr(nodeid: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(88);
    out.extend_from_slice(&nodeid.to_le_bytes()); // ino
    out.extend_from_slice(&[0u8; 8 * 5]); // size, blocks, atime, mtime, ctime
    out.extend_from_slice(&[0u8; 4 * 3]); // atimensec, mtimensec, ctimensec
    let (mode, nlink) =
        if nodeid == FUSE_ROOT_ID { (libc::S_IFDIR | 0o755, 2u32) } else { (libc::S_IFREG | 0o666, 1) };
    out.extend_from_slice(&mode.to_le_bytes());
    out.extend_from_slice(&nlink.to_le_bytes());
    out.resize(88, 0); // uid, gid, rdev, blksize, flags
    out
}

/// `fuse_attr_out`: valid for a second.
fn attr_out(nodeid: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(104);
    out.extend_from_slice(&1u64.to_le_bytes()); // attr_valid (s)
    out.extend_from_slice(&[0u8; 8]); // attr_valid_nsec, dummy
    out.extend_from_slice(&attr(nodeid));
    out
}

/// `fuse_entry_out` of a node: valid for a second.
fn entry_out(nodeid: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&nodeid.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // generation
    out.extend_from_slice(&1u64.to_le_bytes()); // entry_valid (s)
    out.extend_from_slice(&1u64.to_le_bytes()); // attr_valid (s)
    out.extend_from_slice(&[0u8; 8]); // entry_valid_nsec, attr_valid_nsec
    out.extend_from_slice(&attr(nodeid));
    out
}
