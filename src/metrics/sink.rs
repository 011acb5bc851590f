//! A metrics destination (a regular file or a named pipe), written without
//! ever blocking the event loop: a reader that does not drain a FIFO makes
//! lines drop (and be counted), never the loop wait. A line is written
//! whole or not at all as far as the reader can tell: the part a full pipe
//! did not take is kept (at most one line) and finished before anything
//! else is written.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Longest line kept to finish later; a longer remainder is dropped.
const MAX_PENDING: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("metrics_path {path:?}: cannot open it: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metrics_path {path:?}: {what}")]
    Kind { path: PathBuf, what: &'static str },
}

/// Where metrics lines go.
#[derive(Debug)]
pub struct MetricsSink {
    path: PathBuf,
    file: File,
    /// The unwritten end of the last line (a pipe that was nearly full).
    pending: Vec<u8>,
    dropped: u64,
    failures: u64,
}

/// What became of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Whole,
    /// Partly written; the rest goes first next time.
    Partly,
    /// Not written (the reader is behind, or the write failed); counted.
    Dropped,
}

impl MetricsSink {
    /// Opens `path` as [`MetricsSink::open`] does, for another writer (the
    /// log).
    pub fn open_raw(path: &Path) -> Result<File, SinkError> {
        Ok(MetricsSink::open(path)?.file)
    }

    /// Opens `path` for writing without blocking: an existing FIFO (opened
    /// read-write, so that opening never waits for a reader) or a regular
    /// file (created, mode 0600, if missing; appended to).
    pub fn open(path: &Path) -> Result<MetricsSink, SinkError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| SinkError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let kind = file
            .metadata()
            .map_err(|source| SinkError::Open {
                path: path.to_path_buf(),
                source,
            })?
            .file_type();
        use std::os::unix::fs::FileTypeExt;
        if !(kind.is_file() || kind.is_fifo()) {
            return Err(SinkError::Kind {
                path: path.to_path_buf(),
                what: "is neither a regular file nor a named pipe",
            });
        }
        Ok(MetricsSink {
            path: path.to_path_buf(),
            file,
            pending: Vec::new(),
            dropped: 0,
            failures: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines dropped because the reader was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Writes that failed for another reason.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Writes what it can of `bytes`; how many went out, `None` when the
    /// destination takes nothing now, `Err` on a real failure.
    fn write_some(&mut self, bytes: &[u8]) -> std::io::Result<Option<usize>> {
        loop {
            match self.file.write(bytes) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Finishes a partly written line; whether the way is clear.
    fn finish_pending(&mut self) -> bool {
        while !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            match self.write_some(&pending) {
                Ok(Some(n)) if n > 0 => self.pending = pending[n..].to_vec(),
                Ok(_) => {
                    self.pending = pending;
                    return false;
                }
                Err(_) => {
                    // The line cannot be finished: the reader sees it cut.
                    self.failures += 1;
                    return true;
                }
            }
        }
        true
    }

    /// Writes one line (`line` ends with a newline).
    pub fn write_line(&mut self, line: &[u8]) -> Written {
        if !self.finish_pending() {
            self.dropped += 1;
            return Written::Dropped;
        }
        match self.write_some(line) {
            Ok(Some(n)) if n == line.len() => Written::Whole,
            Ok(Some(n)) if n > 0 && line.len() - n <= MAX_PENDING => {
                self.pending = line[n..].to_vec();
                Written::Partly
            }
            Ok(_) => {
                self.dropped += 1;
                Written::Dropped
            }
            Err(e) => {
                self.failures += 1;
                if self.failures == 1 {
                    log::warn!("metrics: cannot write to {}: {e}", self.path.display());
                }
                Written::Dropped
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hearth-sink-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn a_file_gets_every_line() {
        let dir = scratch("file");
        let path = dir.join("metrics.json");
        let mut sink = MetricsSink::open(&path).unwrap();
        assert_eq!(sink.write_line(b"{\"a\":1}\n"), Written::Whole);
        assert_eq!(sink.write_line(b"{\"a\":2}\n"), Written::Whole);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fifo_nobody_drains_drops_lines_whole_and_never_blocks() {
        let dir = scratch("fifo");
        let path = dir.join("metrics.fifo");
        mkfifo(&path);
        let mut sink = MetricsSink::open(&path).unwrap();
        let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(3000));
        let start = std::time::Instant::now();
        let mut outcomes = Vec::new();
        for _ in 0..100 {
            outcomes.push(sink.write_line(line.as_bytes()));
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        assert!(sink.dropped() > 0, "a 64 KiB pipe cannot take 300 KB");
        assert_eq!(
            outcomes.iter().filter(|o| **o == Written::Dropped).count() as u64,
            sink.dropped()
        );
        // A reader now sees only whole lines, the cut one finished first.
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {
                    // Drained: let the sink finish its pending line, read it.
                    if sink.pending.is_empty() {
                        break;
                    }
                    sink.finish_pending();
                }
            }
        }
        let text = String::from_utf8(got).unwrap();
        assert!(text.ends_with('\n'));
        assert!(text.lines().all(|l| l == line.trim_end()), "cut line");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = scratch("dir");
        let e = MetricsSink::open(&dir).unwrap_err().to_string();
        assert!(e.contains("metrics_path"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
