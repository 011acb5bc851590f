//! A thread that makes a system call outside its class's allowlist is
//! stopped by seccomp: the filter is installed with hearth's own function
//! in a child process (this test binary, re-run with an env var), which
//! then calls socket(AF_INET): no thread of Hearth opens a network socket
//! (the ones that make sockets at all make Unix ones).

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use hearth::seccomp::{install, ThreadClass};

const CHILD: &str = "HEARTH_SECCOMP_CHILD";

/// In the child: install the class's filter on a fresh thread, do an
/// allowed call (write), then a forbidden one (socket).
fn child(class: &str) -> ! {
    let class = match class {
        "vcpu" => ThreadClass::Vcpu,
        "device" => ThreadClass::Device,
        "output" => ThreadClass::Output,
        "builder" => ThreadClass::Builder,
        _ => ThreadClass::EventLoop,
    };
    let t = std::thread::spawn(move || {
        install(class).expect("install the filter");
        eprintln!("filter installed");
        if class != ThreadClass::Vcpu && class != ThreadClass::Output {
            // SAFETY: socket() takes no pointers; the fd is closed at once.
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            eprintln!("unix socket: {}", if fd >= 0 { "ok" } else { "refused" });
            // SAFETY: closes the fd just made (or fails harmlessly on -1).
            unsafe { libc::close(fd) };
        }
        // SAFETY: socket() takes no pointers; the result is only printed.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        eprintln!("still alive after socket() = {fd}");
    });
    let _ = t.join();
    std::process::exit(0)
}

fn run_child(class: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD, class)
        .output()
        .expect("run the child");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn child_entry() {
    if let Ok(class) = std::env::var(CHILD) {
        child(&class);
    }
}

#[test]
fn a_forbidden_call_kills_the_process_with_sigsys() {
    for class in ["vcpu", "event-loop", "device", "output", "builder"] {
        let (status, stderr) = run_child(class);
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "{class}: {status:?}\n{stderr}"
        );
        assert!(stderr.contains("filter installed"), "{class}: {stderr}");
        assert!(!stderr.contains("still alive"), "{class}: {stderr}");
        if !matches!(class, "vcpu" | "output") {
            assert!(stderr.contains("unix socket: ok"), "{class}: {stderr}");
        }
    }
}
