//! API sockets: bound with their mode set before anyone can connect, and
//! the registry through which the control socket's `create` hands a new
//! one to the server in the event loop.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind};
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use super::slot::Slot;
use super::FcApiError;
use crate::bus::lock;
pub use crate::sandbox::SocketFile;

/// Firecracker's API socket mode: only its owner may connect.
pub const DEFAULT_MODE: u32 = 0o600;

/// Closes `fd` when dropped (until handed on).
struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        if self.0 >= 0 {
            // SAFETY: the fd was returned by socket() and is owned here.
            unsafe { libc::close(self.0) };
        }
    }
}

fn os(what: &'static str, path: &Path) -> FcApiError {
    FcApiError::Socket {
        path: path.to_path_buf(),
        what,
        source: io::Error::last_os_error(),
    }
}

/// Binds a listening socket at `path` with exactly `mode`: the file gets
/// its mode before `listen`, and no one can connect before `listen`, so
/// the socket is never reachable with a wider mode. An existing file is
/// refused (as Firecracker refuses it), unless `replace_stale` and it is
/// a socket nobody listens on (checked by connecting: only before the
/// event loop's seccomp filter, which forbids `connect`).
pub fn bind(
    path: &Path,
    mode: u32,
    replace_stale: bool,
) -> Result<(UnixListener, SocketFile), FcApiError> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(FcApiError::Path {
            path: path.to_path_buf(),
            why: "must be 1 to 107 bytes, without NUL",
        });
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if !replace_stale {
            return Err(FcApiError::Exists {
                path: path.to_path_buf(),
            });
        }
        remove_stale(path)?;
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket creation; the fd is owned by `Fd` below.
    let fd = Fd(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    });
    if fd.0 < 0 {
        return Err(os("cannot create a socket", path));
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    if unsafe { libc::bind(fd.0, std::ptr::addr_of!(addr).cast(), len) } != 0 {
        return Err(os("cannot bind", path));
    }
    let file = SocketFile::new(path.to_path_buf());
    let c_path = std::ffi::CString::new(bytes).map_err(|_| FcApiError::Path {
        path: path.to_path_buf(),
        why: "must not contain NUL",
    })?;
    // SAFETY: `c_path` is a valid NUL-terminated path for the call.
    if unsafe { libc::fchmodat(libc::AT_FDCWD, c_path.as_ptr(), mode as libc::mode_t, 0) } != 0 {
        return Err(os("cannot set its mode", path));
    }
    // SAFETY: `fd` is a bound socket.
    if unsafe { libc::listen(fd.0, 64) } != 0 {
        return Err(os("cannot listen", path));
    }
    let raw = fd.0;
    std::mem::forget(fd);
    // SAFETY: `raw` is a listening socket this function owns; the listener takes it.
    let listener = unsafe { UnixListener::from_raw_fd(raw) };
    Ok((listener, file))
}

fn remove_stale(path: &Path) -> Result<(), FcApiError> {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return Err(FcApiError::Exists {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            log::info!("removing stale API socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| FcApiError::Socket {
                path: path.to_path_buf(),
                what: "cannot remove the stale socket",
                source,
            })
        }
        _ => Err(FcApiError::Exists {
            path: path.to_path_buf(),
        }),
    }
}

/// A bound API socket and its VM, on its way to the server.
pub struct NewEndpoint {
    pub listener: UnixListener,
    pub file: SocketFile,
    pub slot: Slot,
}

/// The API sockets of a monitor: the names and paths in use, sockets
/// waiting to be served, sockets to close. Shared between the control
/// socket's requests and the server (both on the event loop; the eventfd
/// wakes the server).
pub struct Registry {
    open: Mutex<BTreeMap<String, PathBuf>>,
    pending: Mutex<Vec<NewEndpoint>>,
    closing: Mutex<Vec<String>>,
    evt: EventFd,
}

impl Registry {
    pub fn new() -> io::Result<Registry> {
        Ok(Registry {
            open: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(Vec::new()),
            closing: Mutex::new(Vec::new()),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// The socket of the VM named `name`, if it has one.
    pub fn socket_of(&self, name: &str) -> Option<PathBuf> {
        lock(&self.open).get(name).cloned()
    }

    /// Hands a new socket to the server.
    pub fn add(&self, endpoint: NewEndpoint) {
        lock(&self.open).insert(
            endpoint.slot.name.clone(),
            endpoint.file.path().to_path_buf(),
        );
        lock(&self.pending).push(endpoint);
        let _ = self.evt.write(1);
    }

    /// Asks the server to close the socket of `name`; whether it has one.
    pub fn close(&self, name: &str) -> bool {
        if !lock(&self.open).contains_key(name) {
            return false;
        }
        lock(&self.closing).push(name.to_string());
        let _ = self.evt.write(1);
        true
    }

    /// What the server is to do: new sockets, names to close.
    pub fn take(&self) -> (Vec<NewEndpoint>, Vec<String>) {
        let _ = self.evt.read();
        (
            std::mem::take(&mut *lock(&self.pending)),
            std::mem::take(&mut *lock(&self.closing)),
        )
    }

    /// The server closed the socket of `name`.
    pub fn closed(&self, name: &str) {
        lock(&self.open).remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_socket_is_bound_with_its_mode_and_removed_with_its_file() {
        let dir = std::env::temp_dir().join(format!("hearth-fcsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let (listener, file) = bind(&path, 0o600, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(UnixStream::connect(&path).is_ok());
        // In use: refused, stale or not.
        assert!(matches!(
            bind(&path, 0o600, false),
            Err(FcApiError::Exists { .. })
        ));
        assert!(matches!(
            bind(&path, 0o600, true),
            Err(FcApiError::Exists { .. })
        ));
        drop(listener);
        // Nobody listens now, but the file is there: replaced only when allowed.
        assert!(matches!(
            bind(&path, 0o600, false),
            Err(FcApiError::Exists { .. })
        ));
        std::mem::forget(file);
        let (_l, file) = bind(&path, 0o640, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        drop(file);
        assert!(!path.exists());
        let long = dir.join("x".repeat(120));
        assert!(matches!(
            bind(&long, 0o600, false),
            Err(FcApiError::Path { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
