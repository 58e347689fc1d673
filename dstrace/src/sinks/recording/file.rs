//! Recording files on disk: created with mode 0600, never through a symbolic
//! link, appended to only when they are this user's recordings, by one writer at
//! a time (`flock`), rotated at their size cap; and read back, refusing what is
//! not a regular file.

use std::{
    fs::File,
    io::{self, Write as _},
    os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::sinks::recording::{
    frames::{check_header, file_id, header, random, stamped_frame, FileId, Stamp, HEADER_LEN, MAGIC},
    intern::Interner,
    schema::{Gap, IntervalData, Record, Session},
};

/// Where a recording goes, and how big its files may grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOptions {
    /// The file.
    pub path: PathBuf,
    /// Bytes a file may hold before it is rotated.
    pub max_size: u64,
    /// Rotated files kept (`FILE.1` ... `FILE.N`); 0: when the file is full,
    /// recording stops.
    pub rotate: u32,
}

/// Writes a recording: frames appended, files rotated at their size cap.
///
/// A write that fails leaves no torn frame where it can help it (what it
/// appended is cut off again) and costs no name: the next frame defines again
/// everything it uses, so a caller that holds what it could not write
/// ([`crate::sinks::recording::recorder::Recorder`], on a full disk) writes it
/// later as if nothing had happened.
pub struct Writer {
    options: FileOptions,
    session: Session,
    file: File,
    /// The identity of the file written, from its header.
    file_id: FileId,
    /// The stamp of the next frame: its session, its number.
    stamp: Stamp,
    size: u64,
    interner: Interner,
    /// The file is new (after a rotation): its first frame is a session.
    needs_session: bool,
    /// A write failed: the next frame defines again what it uses.
    needs_forget: bool,
    /// Files were rotated but the new `FILE` is not open yet.
    needs_file: bool,
    /// The last write that failed left part of its frames in the file.
    torn: bool,
    /// The file's size when its last session began.
    session_end: u64,
    full: bool,
    /// Bytes written, all files together.
    pub written: u64,
}

impl Writer {
    /// Opens (or creates) the file and starts a session in it.
    pub fn open(options: FileOptions, session: Session) -> Result<Writer> {
        let (file, size, file_id) = open_recording(&options.path)?;
        let mut writer = Writer {
            options,
            session,
            file,
            file_id,
            stamp: Stamp::default(),
            size,
            interner: Interner::default(),
            needs_session: true,
            needs_forget: false,
            needs_file: false,
            torn: false,
            session_end: 0,
            full: false,
            written: 0,
        };
        writer.start_session()?;
        Ok(writer)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.options.path
    }

    /// Bytes a file may hold before it is rotated.
    pub fn max_size(&self) -> u64 {
        self.options.max_size
    }

    /// Whether the file is full and recording has stopped (`rotate` 0).
    pub fn is_full(&self) -> bool {
        self.full
    }

    fn start_session(&mut self) -> Result<()> {
        let stamp = Stamp { session: u32::from_le_bytes(random()), seq: 0 };
        let frame = stamped_frame(&self.file_id, stamp, &Record::Session(self.session.clone()))?;
        self.stamp = stamp;
        self.append(&frame, 1)?;
        self.interner = Interner::default();
        (self.needs_session, self.needs_forget) = (false, false);
        self.session_end = self.size;
        Ok(())
    }

    /// Appends `frames` frames (`bytes`), numbered from the next stamp on.
    fn append(&mut self, bytes: &[u8], frames: u32) -> Result<()> {
        let result = self.file.write_all(bytes);
        if let Err(err) = result {
            // What went out of a half-written frame is cut off again (only what
            // this writer appended: nothing before `size`), so that a later write
            // leaves no torn frame behind; the next frame defines again what it
            // uses, so that nothing refers to a definition the file may not have.
            self.needs_forget = true;
            let len = self.file.metadata().map_or(self.size, |meta| meta.len());
            self.torn = len > self.size
                && len <= self.size + bytes.len() as u64
                && self.file.set_len(self.size).is_err();
            if self.torn {
                // Left in the file: their numbers and ids are not given again.
                self.size = len;
                self.stamp.seq += frames;
            }
            return Err(err).with_context(|| format!("cannot write to {}", self.options.path.display()));
        }
        self.size += bytes.len() as u64;
        self.written += bytes.len() as u64;
        self.stamp.seq += frames;
        Ok(())
    }

    /// The frames of an interval: what was lost before it (`gap`), its own, then
    /// that of the tasks in D at its end (if any were).
    /// Also returns how many frames.
    fn frames_of(&mut self, gap: Option<&Gap>, data: &IntervalData) -> Result<(Vec<u8>, u32)> {
        let mut records = Vec::with_capacity(3);
        if let Some(gap) = gap {
            records.push(Record::Gap(gap.clone()));
        }
        let (first, interval) = self.interner.interval(data);
        records.push(Record::IntervalAt(first, interval));
        if !data.in_d.is_empty() {
            records.push(Record::InD(self.interner.tasks_in_d(data.end, &data.in_d)));
        }
        let mut bytes = Vec::new();
        let mut stamp = self.stamp;
        for record in &records {
            bytes.extend(stamped_frame(&self.file_id, stamp, record)?);
            stamp.seq += 1;
        }
        Ok((bytes, records.len() as u32))
    }

    /// Writes one interval, rotating first if the file would grow past its cap.
    pub fn write_interval(&mut self, data: &IntervalData) -> Result<bool> {
        self.write(None, data)
    }

    /// Writes one interval after what was lost before it (`gap`), rotating first
    /// if the file would grow past its cap. `Ok(false)`: not written, the file is
    /// full (`rotate` 0).
    pub fn write(&mut self, gap: Option<&Gap>, data: &IntervalData) -> Result<bool> {
        if self.full {
            return Ok(false);
        }
        if self.needs_file {
            self.reopen()?;
        }
        if self.needs_session {
            self.start_session()?;
        }
        if self.needs_forget {
            self.interner.forget();
        }
        let mut before = self.interner.next_ids();
        let (mut bytes, mut frames) = self.frames_of(gap, data)?;
        // A file holding no interval yet takes one whatever its size: rotating it
        // would only make another such file.
        if self.size + bytes.len() as u64 > self.options.max_size && self.size > self.session_end {
            if self.options.rotate == 0 {
                self.full = true;
                return Ok(false);
            }
            self.rotate()?;
            self.start_session()?;
            before = self.interner.next_ids();
            (bytes, frames) = self.frames_of(gap, data)?;
        }
        if let Err(err) = self.append(&bytes, frames) {
            if !self.torn {
                // Nothing of it is in the file: its ids are given again, so that
                // a disk full for days does not use them up, retry after retry.
                self.interner.forget();
                self.interner.rewind(before);
            }
            return Err(err);
        }
        self.needs_forget = false;
        Ok(true)
    }

    /// Opens `FILE` again after a rotation; its first frame will be a session.
    fn reopen(&mut self) -> Result<()> {
        let (file, size, file_id) = open_recording(&self.options.path)?;
        self.file = file;
        self.size = size;
        self.file_id = file_id;
        self.needs_file = false;
        self.needs_session = true;
        Ok(())
    }

    /// `FILE.N-1` to `FILE.N`, ..., `FILE` to `FILE.1`; then a new `FILE`.
    fn rotate(&mut self) -> Result<()> {
        let path = &self.options.path;
        let numbered = |n: u32| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        for n in (1..=self.options.rotate).rev() {
            let from = if n == 1 { path.clone() } else { numbered(n - 1) };
            let to = numbered(n);
            if !exists(&from) {
                continue;
            }
            if exists(&to) {
                is_recording_file(&to).with_context(|| {
                    format!("cannot rotate {}: {} is in the way", path.display(), to.display())
                })?;
            }
            std::fs::rename(&from, &to)
                .with_context(|| format!("cannot rotate {} to {}", from.display(), to.display()))?;
        }
        self.needs_file = true;
        self.reopen()
    }
}

/// Whether a path exists, without following a final symbolic link.
fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Checks that `path` is a regular file of this user that starts like a recording.
fn is_recording_file(path: &Path) -> Result<()> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| open_error(path, err))?;
    check_existing(path, &file).map(|_| ())
}

fn open_error(path: &Path, err: io::Error) -> anyhow::Error {
    if err.raw_os_error() == Some(libc::ELOOP) {
        anyhow::anyhow!(
            "{} is a symbolic link: recordings are never written through one (it could point \
             anywhere); give the real path",
            path.display()
        )
    } else {
        anyhow::anyhow!("cannot open {}: {err}", path.display())
    }
}

/// Checks an open file that may hold a recording: a regular file owned by us,
/// empty or starting with a recording's header. Returns its size and identity.
fn check_existing(path: &Path, file: &File) -> Result<(u64, FileId)> {
    let meta = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.file_type().is_file() {
        bail!("{} is not a regular file: give the path of a recording file", path.display());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        bail!(
            "{} belongs to uid {}, not to this user ({euid}): recordings are only appended to by their \
             owner; choose another path",
            path.display(),
            meta.uid()
        );
    }
    let mut head = [0u8; HEADER_LEN];
    if meta.len() > 0 {
        let read = file.read_at(&mut head, 0).with_context(|| format!("cannot read {}", path.display()))?;
        check_header(&head[..read]).map_err(|err| {
            anyhow::anyhow!(
                "{} exists and is {err}: dstrace never overwrites it; choose another path or remove it",
                path.display()
            )
        })?;
    }
    Ok((meta.len(), file_id(&head)))
}

/// Takes the file's write lock (`flock`, held while the file is open): two
/// dstrace processes appending to one file would interleave their frames.
fn lock_for_writing(path: &Path, file: &File) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor this `File` owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        bail!(
            "{} is being written by another dstrace (record or run --output): give each its own file",
            path.display()
        );
    }
    Err(err).with_context(|| format!("cannot lock {}", path.display()))
}

/// Opens a recording for appending, creating it (mode 0600) if missing, never
/// through a symbolic link; writes the header of a new file.
fn open_recording(path: &Path) -> Result<(File, u64, FileId)> {
    let mut file = File::options()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| open_error(path, err))?;
    let (mut size, mut id) = check_existing(path, &file)?;
    lock_for_writing(path, &file)?;
    let mode = file.metadata().map(|meta| meta.permissions().mode()).unwrap_or(0);
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private (mode 0600)", path.display()))?;
    }
    if size == 0 {
        let header = header();
        id = file_id(&header);
        if let Err(err) = file.write_all(&header) {
            // No half header: the next try (a full disk freed) starts it again.
            let _ = file.set_len(0);
            return Err(err).with_context(|| format!("cannot write to {}", path.display()));
        }
        size = HEADER_LEN as u64;
    }
    Ok((file, size, id))
}

/// Refuses an output that is one of the files a command reads (the same file,
/// device and inode, through any path, a symbolic link or a hard link) or any
/// recording, so that `dstrace report REC -o REC` never writes a report over
/// the recording. An output that does not exist yet is none of them.
pub fn refuse_output_over_input(output: &Path, inputs: &[PathBuf]) -> Result<()> {
    let Ok(out) = std::fs::metadata(output) else { return Ok(()) };
    for input in inputs {
        let Ok(meta) = std::fs::metadata(input) else { continue };
        if (meta.dev(), meta.ino()) == (out.dev(), out.ino()) {
            bail!(
                "-o {} is {}, a file this command reads (the same file): it would be written over; \
                 give -o another path",
                output.display(),
                input.display()
            );
        }
    }
    if out.file_type().is_file() {
        let mut head = [0u8; MAGIC.len()];
        let read = File::options()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(output)
            .and_then(|file| file.read_at(&mut head, 0));
        if read.is_ok_and(|n| n == head.len()) && head == MAGIC {
            bail!(
                "-o {} is a dstrace recording: it would be written over; give -o another path",
                output.display()
            );
        }
    }
    Ok(())
}

/// Reads a recording file (a regular file; a FIFO or device is refused, not read).
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.file_type().is_file() {
        bail!("{} is not a regular file: give a recording written by `dstrace record`", path.display());
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}
