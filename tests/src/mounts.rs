//! Mount namespaces and mount(2) for the test programs (`dstrace-test-fused`,
//! `dstrace-bench`): what they change in mounts stays in a namespace of their own,
//! never on the host.

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

/// Moves the calling thread to a new mount namespace whose mounts are all private
/// (nothing mounted here reaches the host). Call it while the process has one
/// thread: `unshare` moves the calling thread only, and its children inherit it.
pub fn private_namespace() -> std::io::Result<()> {
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)
}

/// mount(2).
pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    let cstring = |s: &str| CString::new(s).map_err(std::io::Error::other);
    let source = source.map(cstring).transpose()?;
    let target = CString::new(target.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let fstype = fstype.map(cstring).transpose()?;
    let data = data.map(cstring).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: each pointer is null or a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mount(ptr(&source), target.as_ptr(), ptr(&fstype), flags, ptr(&data).cast()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
