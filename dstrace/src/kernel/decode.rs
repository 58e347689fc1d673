//! Decoding what the kernel side sends: ring buffer records, and the kernel's
//! own encodings of strings and device numbers.

use aya::Pod;
use dstrace_common::WaitEvent;

/// A ring buffer record that is not a [`WaitEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadRecord {
    /// Its length in bytes.
    pub len: usize,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a ring buffer record of {} bytes is not a wait ({} bytes)",
            self.len,
            size_of::<WaitEvent>()
        )
    }
}

impl std::error::Error for BadRecord {}

/// Decodes one ring buffer record.
pub fn decode_wait(bytes: &[u8]) -> Result<WaitEvent, BadRecord> {
    if bytes.len() != size_of::<WaitEvent>() {
        return Err(BadRecord { len: bytes.len() });
    }
    Ok(copy_out(bytes))
}

/// Decodes consecutive `T` records, as an iterator program writes them with
/// `bpf_seq_write`; `None` when `bytes` are not a whole number of them.
pub fn decode_records<T: Pod>(bytes: &[u8]) -> Option<Vec<T>> {
    if !bytes.len().is_multiple_of(size_of::<T>()) {
        return None;
    }
    Some(bytes.chunks_exact(size_of::<T>()).map(copy_out).collect())
}

/// A `T` copied out of the first `size_of::<T>()` bytes of `bytes`, which has them.
fn copy_out<T: Pod>(bytes: &[u8]) -> T {
    debug_assert!(bytes.len() >= size_of::<T>());
    // SAFETY: the length was checked; a `Pod` is plain `repr(C)` data valid for any
    // bit pattern; `read_unaligned` makes no alignment assumption.
    unsafe { bytes.as_ptr().cast::<T>().read_unaligned() }
}

/// A NUL-padded kernel string (a `comm`, an RPC's names) up to the first NUL,
/// invalid UTF-8 replaced.
pub fn comm_string(comm: &[u8]) -> String {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..len]).into_owned()
}

/// What marks the end of a path the kernel side's buffer was too short for.
pub const CUT_MARK: char = '\u{2026}';

/// A path the kernel side copied into a fixed buffer (`bpf_probe_read_kernel_str`,
/// which cuts what does not fit and always ends in NUL): up to its NUL, and
/// [`CUT_MARK`] after it when it filled the buffer, so a path cut is never shown
/// as a whole one (a path of exactly the buffer's length less one is marked too:
/// it may go on). Where it matters the mount comes from the kernel's mount ID,
/// never from this text.
pub fn path_string(bytes: &[u8]) -> String {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let mut path = String::from_utf8_lossy(&bytes[..len]).into_owned();
    if len + 1 >= bytes.len() && !bytes.is_empty() {
        path.push(CUT_MARK);
    }
    path
}

/// The letter `ps` shows for a task's `__state` bits (`task_state_index()`,
/// fs/proc/array.c): `R`, `S`, `D`, `T`, `t`, `X`, `Z`, `P`, `I`.
pub fn state_letter(state: u32) -> char {
    const TASK_UNINTERRUPTIBLE: u32 = 0x2;
    const TASK_NOLOAD: u32 = 0x400;
    if state & (TASK_UNINTERRUPTIBLE | TASK_NOLOAD) == TASK_UNINTERRUPTIBLE | TASK_NOLOAD {
        return 'I';
    }
    // __TASK_STOPPED, __TASK_TRACED, EXIT_DEAD, EXIT_ZOMBIE, TASK_PARKED, in order.
    const LETTERS: [(u32, char); 7] =
        [(0x1, 'S'), (0x2, 'D'), (0x4, 'T'), (0x8, 't'), (0x10, 'X'), (0x20, 'Z'), (0x40, 'P')];
    LETTERS.iter().find(|&&(bit, _)| state & bit != 0).map_or('R', |&(_, letter)| letter)
}

/// `(major, minor)` of a kernel-internal device number (`MKDEV`: `MINORBITS` = 20).
pub fn kernel_dev(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & ((1 << 20) - 1))
}

#[cfg(test)]
mod tests {
    use dstrace_common::{Cause, InFlight, Target, Waker, NO_STACK};

    use super::*;

    #[test]
    fn a_path_that_filled_its_buffer_is_marked_cut() {
        assert_eq!(path_string(b"/mnt/x\0\0\0\0"), "/mnt/x");
        assert_eq!(path_string(b"/mnt/xyz\0"), "/mnt/xyz\u{2026}", "it may go on");
        assert_eq!(path_string(b"/mnt/xyzw"), "/mnt/xyzw\u{2026}");
        assert_eq!(path_string(b"\0\0"), "");
    }

    fn sample() -> WaitEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"stat");
        let wait = InFlight {
            start_ns: 10,
            cgroup_id: 77,
            tgid: 41,
            kstack_id: 7,
            ustack_id: NO_STACK,
            state: 0x102,
            comm,
            waker: Waker { at_ns: 5, tid: 3, tgid: 3, kstack_id: 8, _pad: 0, comm },
            cause: Cause::NONE,
            target: Target::NONE,
        };
        WaitEvent { wait, end_ns: 2_000_000_010, tid: 42, _pad: 0 }
    }

    #[test]
    fn decodes_its_own_layout() {
        let event = sample();
        // SAFETY: viewing a plain `repr(C)` value as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&event as *const WaitEvent).cast::<u8>(), size_of::<WaitEvent>())
        };
        assert_eq!(decode_wait(bytes), Ok(event));
        // Field by field, as the kernel writes them (little endian, repr(C)).
        assert_eq!(&bytes[0..8], &10u64.to_le_bytes()); // start_ns
        assert_eq!(&bytes[8..16], &77u64.to_le_bytes()); // cgroup_id
        assert_eq!(&bytes[16..20], &41u32.to_le_bytes()); // tgid
        assert_eq!(&bytes[20..24], &7i32.to_le_bytes()); // kstack_id
        assert_eq!(&bytes[32..36], b"stat"); // comm
        let end = size_of::<InFlight>();
        assert_eq!(&bytes[end..end + 8], &2_000_000_010u64.to_le_bytes()); // end_ns
        assert_eq!(&bytes[end + 8..end + 12], &42u32.to_le_bytes()); // tid
    }

    #[test]
    fn comm_is_cut_at_nul_and_lossy() {
        assert_eq!(comm_string(b"stat\0\0\0\0\0\0\0\0\0\0\0\0"), "stat");
        assert_eq!(comm_string(b"0123456789abcdef"), "0123456789abcdef");
        assert_eq!(comm_string(b"a\xffb\0\0\0\0\0\0\0\0\0\0\0\0\0"), "a\u{fffd}b");
    }

    #[test]
    fn states_are_the_letters_of_ps() {
        assert_eq!(state_letter(0), 'R');
        assert_eq!(state_letter(0x1), 'S');
        assert_eq!(state_letter(0x2), 'D');
        assert_eq!(state_letter(0x102), 'D', "killable");
        assert_eq!(state_letter(0x402), 'I', "TASK_IDLE");
        assert_eq!(state_letter(0x104), 'T', "TASK_STOPPED");
        assert_eq!(state_letter(0x8), 't');
    }

    #[test]
    fn device_numbers() {
        assert_eq!(kernel_dev((8 << 20) | 17), (8, 17));
        assert_eq!(kernel_dev(55), (0, 55));
    }

    #[test]
    fn records_are_whole_or_refused() {
        let bytes: Vec<u8> = [7u32, 8, 9].iter().flat_map(|n| n.to_le_bytes()).collect();
        assert_eq!(decode_records::<u32>(&bytes), Some(vec![7, 8, 9]));
        assert_eq!(decode_records::<u32>(&bytes[1..]), None);
        assert_eq!(decode_records::<u32>(&[]), Some(vec![]));
    }

    #[test]
    fn rejects_other_sizes() {
        let size = size_of::<WaitEvent>();
        assert_eq!(decode_wait(&vec![0; size - 1]), Err(BadRecord { len: size - 1 }));
        assert_eq!(decode_wait(&vec![0; size + 1]), Err(BadRecord { len: size + 1 }));
        assert!(decode_wait(&[]).unwrap_err().to_string().contains("0 bytes"));
    }
}
