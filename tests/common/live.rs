//! A `hearth` run in progress as tests drive it: its serial lines
//! collected as they come, waits that fail the test (with the output so
//! far) when hearth exits or misses its deadline, and a kill on drop.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A `hearth` run in progress, its serial lines collected as they come.
pub struct Live {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
    start: Instant,
    deadline: Duration,
}

impl Live {
    /// Starts `hearth ARGS`; the run fails the test once it outlives `deadline`.
    pub fn spawn(args: &[&str], deadline: Duration) -> Live {
        let mut child = super::spawn_hearth(args);
        let out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Live {
            child,
            lines,
            reader: Some(reader),
            stderr: Some(stderr),
            start: Instant::now(),
            deadline,
        }
    }

    pub fn output(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// The first serial line containing `needle`, once there is one.
    pub fn line(&self, needle: &str) -> Option<String> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// How many serial lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Whether a serial line contains `needle`.
    pub fn has(&self, needle: &str) -> bool {
        self.count(needle) > 0
    }

    /// Time since hearth started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The monitor's VmRSS now.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Fails the test (with the output so far) once hearth has exited or
    /// missed its deadline. An exit first lets the last lines arrive, and
    /// returns if `done` then holds.
    fn check_alive(&mut self, waiting_for: &str, mut done: impl FnMut(&Live) -> bool) {
        let exited = self.child.try_wait().expect("wait").is_some();
        if !exited && self.start.elapsed() <= self.deadline {
            return;
        }
        if exited {
            // The last lines may still be on their way.
            if let Some(r) = self.reader.take() {
                let _ = r.join();
            }
            if done(self) {
                return;
            }
        } else {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let err = self.stderr.take().map(|h| h.join().unwrap_or_default());
        panic!(
            "waiting for {waiting_for:?}: hearth {} after {:?}\n--- serial ---\n{}\n--- stderr ---\n{}",
            if exited { "exited" } else { "missed its deadline" },
            self.start.elapsed(),
            self.output(),
            err.unwrap_or_default()
        );
    }

    /// Waits until `done` holds, calling `each` every 20 ms meanwhile;
    /// fails the test if hearth exits or the deadline passes first.
    pub fn wait_until(
        &mut self,
        what: &str,
        mut done: impl FnMut(&Live) -> bool,
        mut each: impl FnMut(&Live),
    ) {
        loop {
            each(self);
            if done(self) {
                return;
            }
            self.check_alive(what, &mut done);
            if done(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a serial line containing `needle` and returns it (from
    /// `needle` on); fails the test if hearth exits or the deadline passes.
    pub fn wait_for(&mut self, needle: &str) -> String {
        loop {
            if let Some(l) = self.line(needle) {
                return l[l.find(needle).expect("contains")..].to_string();
            }
            self.check_alive(needle, |l| l.has(needle));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for hearth to exit by itself (SIGTERM, then SIGKILL, at the
    /// deadline), or asks it to stop with SIGTERM when `stop`; returns its
    /// status, serial output and stderr.
    pub fn finish(mut self, stop: bool) -> (ExitStatus, String, String) {
        if stop {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if self.start.elapsed() > self.deadline {
                let _ = self.child.kill();
                let s = self.child.wait().expect("wait");
                let err = self.stderr.take().map(|h| h.join().unwrap_or_default());
                panic!(
                    "hearth did not exit within {:?} ({s})\n--- serial ---\n{}\n--- stderr ---\n{}",
                    self.deadline,
                    self.output(),
                    err.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let err = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, self.output(), err)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
