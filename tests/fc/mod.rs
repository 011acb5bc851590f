//! Helpers for the Firecracker API tests: a `hearth firecracker` (or
//! `hearth serve`) process whose console lines are collected as they come,
//! and HTTP on a Unix socket, through `curl --unix-socket` as Firecracker's
//! getting-started guide does, or raw.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `hearth` whose stdout lines and stderr are collected.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    pub deadline: Duration,
    start: Instant,
}

impl Proc {
    /// Starts `hearth ARGS` and waits (within `deadline`) for `socket` to
    /// accept connections.
    pub fn start(args: &[&str], socket: &Path, deadline: Duration) -> Proc {
        let mut child = crate::common::spawn_hearth(args);
        let out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (l, e) = (lines.clone(), stderr.clone());
        let readers = vec![
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    l.lock().expect("lines").push(line);
                }
            }),
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    e.lock()
                        .expect("stderr")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }),
        ];
        let mut p = Proc {
            child,
            lines,
            stderr,
            readers,
            deadline,
            start: Instant::now(),
        };
        while UnixStream::connect(socket).is_err() {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!(
                    "hearth exited ({status:?}) before its socket appeared:\n{}",
                    p.stderr()
                );
            }
            assert!(p.start.elapsed() < deadline, "the socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    }

    pub fn stdout(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// Waits for a console line containing `text`; the line.
    pub fn wait_line(&self, text: &str) -> String {
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .find(|l| l.contains(text))
            {
                return l.clone();
            }
            assert!(
                self.start.elapsed() < self.deadline,
                "no line with {text:?} within {:?}:\n{}\n{}",
                self.deadline,
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to end (killing it at the deadline: a failure).
    pub fn wait(&mut self) -> ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return status;
            }
            if self.start.elapsed() > self.deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "hearth did not end within {:?}:\n{}\n{}",
                    self.deadline,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill() with a pid this test started; no memory involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl --unix-socket SOCKET -X METHOD [--data BODY] http://localhost/PATH`:
/// the status code and the body (JSON, or `Value::Null` when empty).
pub fn curl(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "60", "--unix-socket"])
        .arg(socket)
        .args(["-X", method, "-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args(["--data", b]);
    }
    cmd.arg(format!("http://localhost{path}"));
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code: u16 = code.trim().parse().unwrap_or(0);
    let value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: {body:?}: {e}"))
    };
    (code, value)
}

/// A request that must answer 204.
pub fn put(socket: &Path, method: &str, path: &str, body: &str) {
    let (code, reply) = curl(socket, method, path, Some(body));
    assert_eq!(code, 204, "{method} {path} {body}: {reply}");
}

/// A request that must fail with 400; its fault message.
pub fn fault(socket: &Path, method: &str, path: &str, body: Option<&str>) -> String {
    let (code, reply) = curl(socket, method, path, body);
    assert_eq!(code, 400, "{method} {path}: {reply}");
    reply["fault_message"]
        .as_str()
        .unwrap_or_else(|| panic!("no fault_message: {reply}"))
        .to_string()
}

/// `GET PATH`, which must answer 200.
pub fn get(socket: &Path, path: &str) -> Value {
    let (code, reply) = curl(socket, "GET", path, None);
    assert_eq!(code, 200, "GET {path}: {reply}");
    reply
}

/// Raw bytes to the socket; everything read back until the server closes
/// or `wait` passes without data.
pub fn raw(socket: &Path, bytes: &[u8], wait: Duration) -> String {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(wait)).expect("timeout");
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The test guest's kernel path.
pub fn guest() -> &'static str {
    env!("HEARTH_TEST_GUEST_ELF")
}

/// A scratch directory and a socket path in it.
pub fn socket_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
