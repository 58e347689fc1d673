//! File locks (POSIX, flock, OFD, leases) from `/proc/locks`: who holds a lock on
//! the file a task waits to lock. This is the hunt of a stuck `nova-compute`
//! (which pid holds the POSIX lock on that inode?) done in one step, on the
//! machine where the lock is held; for NFS the holder may be on another client,
//! and the server's `/proc/locks` names it.

/// One line of `/proc/locks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLock {
    /// The number of the line's lock in `/proc/locks` (a waiter's is that of the
    /// lock it waits for).
    pub id: u32,
    /// `POSIX`, `FLOCK`, `OFDLCK`, `LEASE`, `DELEG`, ...
    pub kind: String,
    /// `READ` or `WRITE` (`UNLCK` for a lease being broken).
    pub access: String,
    /// The holder (or, for a waiter line, the waiter); `None` for OFD locks, which
    /// belong to an open file, not a process.
    pub pid: Option<u32>,
    /// Device of the file: major and minor.
    pub dev: (u32, u32),
    /// Inode number of the file.
    pub ino: u64,
    /// Byte range: start, and end (`None` for `EOF`).
    pub range: (u64, Option<u64>),
    /// A waiter (`->` line) rather than a holder.
    pub waiting: bool,
}

/// Parses the text of `/proc/locks`; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<FileLock> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<FileLock> {
    // 1: POSIX  ADVISORY  WRITE 28331 00:1d:2199054015793 0 EOF
    // 1: -> POSIX  ADVISORY  WRITE 1234 00:1d:2199054015793 0 EOF
    let mut fields = line.split_whitespace();
    let id = fields.next()?.strip_suffix(':')?.parse().ok()?;
    let mut kind = fields.next()?;
    let waiting = kind == "->";
    if waiting {
        kind = fields.next()?;
    }
    let _mode = fields.next()?;
    let access = fields.next()?;
    let pid: i64 = fields.next()?.parse().ok()?;
    let mut file = fields.next()?.split(':');
    let major = u32::from_str_radix(file.next()?, 16).ok()?;
    let minor = u32::from_str_radix(file.next()?, 16).ok()?;
    let ino = file.next()?.parse().ok()?;
    let start = fields.next()?.parse().ok()?;
    let end = match fields.next()? {
        "EOF" => None,
        end => Some(end.parse().ok()?),
    };
    Some(FileLock {
        id,
        kind: kind.to_owned(),
        access: access.to_owned(),
        pid: u32::try_from(pid).ok().filter(|&pid| pid > 0),
        dev: (major, minor),
        ino,
        range: (start, end),
        waiting,
    })
}

/// The locks held (not waited for) on a file, by anyone but `except_pid`.
pub fn holders(locks: &[FileLock], dev: (u32, u32), ino: u64, except_pid: u32) -> Vec<FileLock> {
    locks
        .iter()
        .filter(|lock| !lock.waiting && lock.dev == dev && lock.ino == ino && lock.pid != Some(except_pid))
        .cloned()
        .collect()
}

/// A lock others wait for: the kernel lists its waiters (`->` lines) under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue {
    /// The lock held.
    pub held: FileLock,
    /// The tasks waiting for it (in any state: a POSIX or flock waiter sleeps
    /// interruptibly, in S, unless the lock is on a remote filesystem's server).
    pub waiters: Vec<FileLock>,
}

/// The locks that have waiters, each with them, in the order of `/proc/locks`.
pub fn queues(locks: &[FileLock]) -> Vec<Queue> {
    let mut queues: Vec<Queue> = Vec::new();
    let mut current: Option<Queue> = None;
    for lock in locks {
        if !lock.waiting {
            queues.extend(current.take().filter(|queue| !queue.waiters.is_empty()));
            current = Some(Queue { held: lock.clone(), waiters: Vec::new() });
        } else if let Some(queue) = current.as_mut().filter(|queue| queue.held.id == lock.id) {
            queue.waiters.push(lock.clone());
        }
    }
    queues.extend(current.filter(|queue| !queue.waiters.is_empty()));
    queues
}

/// Reads `/proc/locks` (nothing if it cannot be read).
pub fn read() -> Vec<FileLock> {
    std::fs::read_to_string("/proc/locks").map(|text| parse(&text)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
1: POSIX  ADVISORY  WRITE 28331 00:1d:2199054015793 0 EOF
1: -> POSIX  ADVISORY  WRITE 1234 00:1d:2199054015793 0 EOF
2: FLOCK  ADVISORY  WRITE 16935 fe:00:10010690 0 EOF
3: OFDLCK ADVISORY  READ  -1 00:1d:77 100 199
4: LEASE  ACTIVE    READ  900 08:11:42 0 EOF
garbage
";

    #[test]
    fn parses_holders_and_waiters() {
        let locks = parse(FIXTURE);
        assert_eq!(locks.len(), 5);
        assert_eq!(
            locks[0],
            FileLock {
                id: 1,
                kind: "POSIX".into(),
                access: "WRITE".into(),
                pid: Some(28331),
                dev: (0, 0x1d),
                ino: 2199054015793,
                range: (0, None),
                waiting: false,
            }
        );
        assert!(locks[1].waiting && locks[1].pid == Some(1234));
        assert_eq!(locks[2].dev, (0xfe, 0));
        assert_eq!((locks[3].pid, locks[3].range), (None, (100, Some(199))));
        assert_eq!(locks[4].kind, "LEASE");
    }

    #[test]
    fn queues_are_locks_with_their_waiters() {
        let text = format!("{FIXTURE}5: POSIX  ADVISORY  WRITE 194 00:20:11381 0 EOF\n5: -> POSIX  ADVISORY  WRITE 354 00:20:11381 0 EOF\n5:  -> POSIX  ADVISORY  WRITE 356 00:20:11381 0 EOF\n");
        let queues = queues(&parse(&text));
        assert_eq!(queues.len(), 2);
        assert_eq!((queues[0].held.pid, queues[0].waiters.len()), (Some(28331), 1));
        assert_eq!(queues[0].waiters[0].pid, Some(1234));
        assert_eq!((queues[1].held.pid, queues[1].held.ino), (Some(194), 11381));
        let waiters: Vec<Option<u32>> = queues[1].waiters.iter().map(|w| w.pid).collect();
        assert_eq!(waiters, [Some(354), Some(356)]);
    }

    #[test]
    fn holders_of_a_file_leave_out_waiters_and_the_waiting_task() {
        let locks = parse(FIXTURE);
        let held = holders(&locks, (0, 0x1d), 2199054015793, 1234);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].pid, Some(28331));
        assert!(holders(&locks, (0, 0x1d), 2199054015793, 28331).is_empty());
    }

    #[test]
    fn reads_this_machines_table() {
        // A lock of our own is listed with our pid.
        let path = std::env::temp_dir().join(format!("dstrace-locks-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        file.lock().unwrap();
        let mine =
            read().into_iter().any(|lock| lock.kind == "FLOCK" && lock.pid == Some(std::process::id()));
        drop(file);
        let _ = std::fs::remove_file(&path);
        assert!(mine, "our own flock is not in /proc/locks");
    }
}
