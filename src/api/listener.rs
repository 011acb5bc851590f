//! The control socket's file: bound with exactly its mode, a stale one
//! replaced, a live one refused; and the peer credentials of a connection.

use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::config::ApiSpec;
use crate::sandbox::SocketFile;

use super::acl::{Acl, Peer};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("control socket {path}: another process is listening on it")]
    InUse { path: PathBuf },
    #[error("control socket {path}: exists and is not a socket; refusing to remove it")]
    NotASocket { path: PathBuf },
    #[error("control socket {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

/// A bound, listening control socket.
#[derive(Debug)]
pub struct Listener {
    pub(super) listener: UnixListener,
    file: SocketFile,
    pub(super) acl: Acl,
}

impl Listener {
    /// Creates the socket with exactly `spec.mode` (the umask is set around
    /// `bind`, so the file is never more open than that), after removing
    /// a stale socket file that nothing listens on.
    pub fn bind(spec: &ApiSpec) -> Result<Listener, ApiError> {
        let path = &spec.socket;
        let io_err = |what| {
            move |source| ApiError::Io {
                path: path.clone(),
                what,
                source,
            }
        };
        remove_stale(path)?;
        let mask = !spec.mode & 0o777;
        // SAFETY: umask only swaps the process's file mode mask; it is
        // restored right after bind. No other thread creates files now
        // (the monitor binds before any vCPU thread starts).
        let old = unsafe { libc::umask(mask) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above; restores the previous mask.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(io_err("cannot listen"))?;
        let file = SocketFile::new(path.clone());
        listener
            .set_nonblocking(true)
            .map_err(io_err("set non-blocking"))?;
        Ok(Listener {
            listener,
            file,
            acl: Acl::new(spec.acl.clone()),
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

fn remove_stale(path: &Path) -> Result<(), ApiError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ApiError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            log::info!("removing stale control socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| ApiError::Io {
                path: path.to_path_buf(),
                what: "cannot remove the stale socket",
                source,
            })
        }
        Err(source) => Err(ApiError::Io {
            path: path.to_path_buf(),
            what: "cannot tell whether it is in use",
            source,
        }),
    }
}

/// The peer's credentials, as recorded by the kernel at connect time.
pub(super) fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given;
    // the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}
