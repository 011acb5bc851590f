//! The jailed monitor (`host.sandbox`, `--sandbox`): once start-up has
//! opened what it needs (/dev/kvm, images, drives, taps, sockets, log
//! files) and started every thread, the monitor lives in an empty root,
//! in namespaces of its own, as an unprivileged user with no capabilities,
//! and its seccomp filters allow no `open` at all. docs/security.md has
//! the threat model.
//!
//! Two steps, because namespaces are per thread until they are shared by
//! creation: [`unshare`] runs first thing, while the process has a single
//! thread, so every thread it starts later lives in the new mount and IPC
//! (and network) namespaces; [`enter`] runs when everything is open: it
//! pivots into an empty read-only root, moves the process's future
//! children into a new PID namespace (done last: a process may not start
//! threads after that), and drops to the configured user. glibc applies
//! `setgroups`/`setresgid`/`setresuid` to every thread of the process, so
//! the threads already running drop with it. What the monitor reads of
//! /proc for itself was opened before (`host::ProcFile`).

use std::ffi::CString;
use std::io;

use crate::config::SandboxSpec;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox: {what}: {source}")]
    Sys {
        what: &'static str,
        source: io::Error,
    },
    #[error("sandbox: still privileged after dropping to uid {uid}: {detail}")]
    StillPrivileged { uid: u32, detail: String },
}

fn sys(what: &'static str) -> impl FnOnce(io::Error) -> SandboxError {
    move |source| SandboxError::Sys { what, source }
}

/// `rc` as a result: an error carries errno.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Whether the monitor runs in its sandbox (it then removes no file at exit).
static ACTIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn active() -> bool {
    ACTIVE.load(std::sync::atomic::Ordering::Acquire)
}

/// New mount and IPC namespaces (and a network namespace when
/// `network`): call while the process has one thread.
pub fn unshare(network: bool) -> Result<(), SandboxError> {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC;
    if network {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare takes only flags; the process is single-threaded
    // here (the caller's contract), so every later thread shares them.
    check(unsafe { libc::unshare(flags) }).map_err(sys("unshare namespaces"))?;
    // Nothing mounted from here on propagates back to the host.
    // SAFETY: null source and type with MS_REC|MS_PRIVATE only change the
    // propagation of the mounts under "/".
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
    .map_err(sys("make mounts private"))
}

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (source, target, fstype, data) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: every pointer is a NUL-terminated string alive for the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })
}

/// An empty root: a small tmpfs, read-only once pivoted into. It is
/// mounted over /tmp of the monitor's own mount namespace, so nothing of
/// it is left on the host.
fn pivot_into_empty_root() -> Result<(), SandboxError> {
    let root = "/tmp";
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("tmpfs", root, "tmpfs", nodev, "size=16k,mode=0755").map_err(sys("mount its tmpfs"))?;
    std::fs::create_dir(format!("{root}/old")).map_err(sys("make its mount point"))?;
    let (new, old) = (cstr(root), cstr(&format!("{root}/old")));
    let (new, old) = (
        new.map_err(sys("root path"))?,
        old.map_err(sys("root path"))?,
    );
    // SAFETY: pivot_root has no libc wrapper; both arguments are
    // NUL-terminated paths alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, new.as_ptr(), old.as_ptr()) };
    check(rc as libc::c_int).map_err(sys("pivot_root"))?;
    std::env::set_current_dir("/").map_err(sys("chdir to the new root"))?;
    // SAFETY: a NUL-terminated path; MNT_DETACH only unmounts.
    check(unsafe { libc::umount2(c"/old".as_ptr(), libc::MNT_DETACH) })
        .map_err(sys("detach the old root"))?;
    std::fs::remove_dir("/old").map_err(sys("remove the old root's mount point"))?;
    // SAFETY: remounts the new root read-only; null pointers are allowed.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | nodev,
            std::ptr::null(),
        )
    })
    .map_err(sys("make the root read-only"))
}

/// Drops every thread to `uid`/`gid` with no supplementary groups, then
/// checks no capability is left.
fn drop_privileges(spec: &SandboxSpec) -> Result<(), SandboxError> {
    // SAFETY: setgroups with a zero-length list reads no memory; glibc
    // applies it, and the two calls below, to every thread.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map_err(sys("setgroups"))?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresgid(spec.gid, spec.gid, spec.gid) }).map_err(sys("setresgid"))?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresuid(spec.uid, spec.uid, spec.uid) }).map_err(sys("setresuid"))?;
    // SAFETY: prctl with integer arguments; it sets a flag on this thread
    // (the others set it when they install their seccomp filters).
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(sys("no_new_privs"))?;
    let caps = crate::host::capabilities().map_err(sys("read the capabilities"))?;
    if caps != 0 {
        return Err(SandboxError::StillPrivileged {
            uid: spec.uid,
            detail: format!("effective/permitted capabilities {caps:#x}"),
        });
    }
    Ok(())
}

/// Pivots into the empty root and drops to `spec`'s user: call when
/// everything the monitor needs is open and its threads have started.
pub fn enter(spec: &SandboxSpec) -> Result<(), SandboxError> {
    pivot_into_empty_root()?;
    // SAFETY: unshare takes only flags. After it the process may start no
    // thread (and it starts none: nothing is built inside the sandbox).
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) })
        .map_err(sys("unshare the PID namespace"))?;
    drop_privileges(spec)?;
    ACTIVE.store(true, std::sync::atomic::Ordering::Release);
    log::info!(
        "sandbox: in an empty root as uid {} gid {}, no capabilities",
        spec.uid,
        spec.gid
    );
    Ok(())
}

/// A socket file the monitor bound (the control socket, a Firecracker API
/// socket, a VM's vsock socket), removed when dropped. Inside the sandbox
/// the monitor sees no file system and removes nothing (an `unlink` there
/// would be a forbidden call): the file is left, and the next monitor to
/// bind that path replaces it as stale.
#[derive(Debug)]
pub struct SocketFile(std::path::PathBuf);

impl SocketFile {
    pub fn new(path: std::path::PathBuf) -> Self {
        SocketFile(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if active() {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.0) {
            log::debug!("cannot remove {}: {e}", self.0.display());
        }
    }
}
