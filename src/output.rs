//! Serial output that never blocks a guest, the event loop or another VM.
//!
//! A vCPU writing to its UART appends to its VM's [`OutputRing`]: a
//! bounded buffer (at most [`RING_BYTES`]) behind a short lock; when it is
//! full the bytes are dropped and counted. An [`OutputWriter`] thread per
//! destination (the terminal, or a VM's log file) drains the rings it
//! serves with ordinary blocking writes, so a reader that stops draining a
//! pipe stalls only that thread. When several VMs share the terminal, each
//! line is prefixed with its VM's name and lines never interleave.
//! At exit the monitor gives the writers a moment to drain, then leaves
//! whatever the console does.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::bus::lock;

/// Most bytes a VM's output may have waiting for its writer.
pub const RING_BYTES: usize = 32 * 1024;
/// Most bytes a writer takes from one ring per pass.
const CHUNK: usize = 4096;
/// Longest partial line kept before it is written anyway.
const MAX_LINE: usize = 4096;

/// The wake-up a writer sleeps on.
#[derive(Default)]
struct Wakeup {
    pending: Mutex<Signal>,
    cv: Condvar,
}

#[derive(Default)]
struct Signal {
    data: bool,
    stop: bool,
}

impl Wakeup {
    fn notify(&self, stop: bool) {
        let mut s = lock(&self.pending);
        s.data = true;
        s.stop |= stop;
        self.cv.notify_one();
    }
}

/// One VM's pending serial output.
pub struct OutputRing {
    bytes: Mutex<VecDeque<u8>>,
    dropped: AtomicU64,
    written: AtomicU64,
    wakeup: Arc<Wakeup>,
}

impl OutputRing {
    /// Bytes dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Bytes the writer has written out.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn push(&self, buf: &[u8]) {
        let mut q = lock(&self.bytes);
        let room = RING_BYTES.saturating_sub(q.len());
        let n = room.min(buf.len());
        q.extend(&buf[..n]);
        drop(q);
        if n < buf.len() {
            self.dropped
                .fetch_add((buf.len() - n) as u64, Ordering::Relaxed);
        }
        if n > 0 {
            self.wakeup.notify(false);
        }
    }

    /// Takes up to `max` bytes into `out`.
    fn take(&self, out: &mut Vec<u8>, max: usize) {
        let mut q = lock(&self.bytes);
        let n = q.len().min(max);
        out.extend(q.drain(..n));
        if q.is_empty() && q.capacity() > CHUNK {
            // A quiet VM does not keep a burst's buffer.
            q.shrink_to(CHUNK);
        }
    }
}

/// The UART's side of a ring: writes never block and never fail.
pub struct RingWriter(pub Arc<OutputRing>);

impl Write for RingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a writer sends what it drains.
pub enum Sink {
    /// The monitor's stdout; with `prefix`, each line starts with the VM's name.
    Stdout,
    File(std::fs::File),
}

/// One destination and the rings that go to it, served by one thread.
pub struct OutputWriter {
    wakeup: Arc<Wakeup>,
    rings: Vec<(Arc<OutputRing>, Option<String>)>,
    sink: Option<Sink>,
    done: Option<std::sync::mpsc::Receiver<()>>,
}

impl OutputWriter {
    pub fn new(sink: Sink) -> Self {
        OutputWriter {
            wakeup: Arc::default(),
            rings: Vec::new(),
            sink: Some(sink),
            done: None,
        }
    }

    /// A ring for one VM; its lines are prefixed with `prefix` if given.
    pub fn ring(&mut self, prefix: Option<&str>) -> Arc<OutputRing> {
        let ring = Arc::new(OutputRing {
            bytes: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            wakeup: self.wakeup.clone(),
        });
        self.rings
            .push((ring.clone(), prefix.map(|p| format!("{p}| "))));
        ring
    }

    /// Starts the writer thread (with the output class's seccomp filter).
    pub fn start(&mut self, seccomp: Option<Arc<seccompiler::BpfProgram>>) -> io::Result<()> {
        let Some(sink) = self.sink.take() else {
            return Ok(());
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let wakeup = self.wakeup.clone();
        let rings = self.rings.clone();
        std::thread::Builder::new()
            .name("hearth-out".into())
            .spawn(move || {
                if let Some(filter) = &seccomp {
                    if crate::seccomp::apply(filter).is_err() {
                        return;
                    }
                }
                drain_loop(&wakeup, &rings, sink);
                let _ = tx.send(());
            })?;
        self.done = Some(rx);
        Ok(())
    }

    /// Asks the thread to write what is left and waits for it, at most
    /// `within`. A writer stuck on a reader that does not drain is left.
    pub fn finish(&mut self, within: Duration) -> bool {
        self.wakeup.notify(true);
        match &self.done {
            Some(rx) => rx.recv_timeout(within).is_ok(),
            None => true,
        }
    }
}

impl Drop for OutputWriter {
    fn drop(&mut self) {
        self.finish(Duration::from_millis(500));
    }
}

/// The writer thread: wait for output, drain every ring, write it out.
fn drain_loop(wakeup: &Wakeup, rings: &[(Arc<OutputRing>, Option<String>)], sink: Sink) {
    let mut out: Box<dyn Write> = match sink {
        Sink::Stdout => Box::new(io::stdout()),
        Sink::File(f) => Box::new(f),
    };
    let mut lines: Vec<Vec<u8>> = vec![Vec::new(); rings.len()];
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        let stop = {
            let mut s = lock(&wakeup.pending);
            while !s.data && !s.stop {
                s = wakeup
                    .cv
                    .wait(s)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            s.data = false;
            s.stop
        };
        let deadline = Instant::now() + Duration::from_millis(200);
        loop {
            let mut any = false;
            for (i, (ring, prefix)) in rings.iter().enumerate() {
                chunk.clear();
                ring.take(&mut chunk, CHUNK);
                if chunk.is_empty() {
                    continue;
                }
                any = true;
                let n = chunk.len() as u64;
                let ok = match prefix {
                    None => out.write_all(&chunk).and_then(|()| out.flush()),
                    Some(p) => write_lines(&mut *out, p, &mut lines[i], &chunk),
                };
                if ok.is_ok() {
                    ring.written.fetch_add(n, Ordering::Relaxed);
                }
            }
            if !any || (stop && Instant::now() > deadline) {
                break;
            }
        }
        if stop {
            for (i, (_, prefix)) in rings.iter().enumerate() {
                if let (Some(p), false) = (prefix, lines[i].is_empty()) {
                    lines[i].push(b'\n');
                    let _ = emit(&mut *out, p, &mut lines[i]);
                }
            }
            let _ = out.flush();
            return;
        }
    }
}

/// Writes whole lines of `bytes`, each starting with `prefix`; keeps a
/// partial line in `line` for later.
fn write_lines(
    out: &mut dyn Write,
    prefix: &str,
    line: &mut Vec<u8>,
    bytes: &[u8],
) -> io::Result<()> {
    for &b in bytes {
        if b == b'\r' {
            continue;
        }
        line.push(b);
        if b == b'\n' || line.len() >= MAX_LINE {
            emit(out, prefix, line)?;
        }
    }
    Ok(())
}

fn emit(out: &mut dyn Write, prefix: &str, line: &mut Vec<u8>) -> io::Result<()> {
    let mut whole = Vec::with_capacity(prefix.len() + line.len());
    whole.extend_from_slice(prefix.as_bytes());
    whole.append(line);
    out.write_all(&whole)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_and_kept_whole() {
        let mut buf = Vec::new();
        let mut line = Vec::new();
        write_lines(&mut buf, "web| ", &mut line, b"hel").unwrap();
        write_lines(&mut buf, "web| ", &mut line, b"lo\r\nwor").unwrap();
        write_lines(&mut buf, "web| ", &mut line, b"ld\n").unwrap();
        write_lines(&mut buf, "web| ", &mut line, b"tail").unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), "web| hello\nweb| world\n");
        assert_eq!(line, b"tail");
    }

    #[test]
    fn a_full_ring_drops_and_counts_and_never_blocks() {
        let mut w = OutputWriter::new(Sink::Stdout);
        let ring = w.ring(None);
        let mut uart = RingWriter(ring.clone());
        // No writer thread runs: nothing drains, nothing blocks.
        let big = vec![b'x'; RING_BYTES + 100];
        assert_eq!(uart.write(&big).unwrap(), big.len());
        assert_eq!(uart.write(b"more").unwrap(), 4);
        assert_eq!(ring.dropped(), 104);
        let mut out = Vec::new();
        ring.take(&mut out, usize::MAX);
        assert_eq!(out.len(), RING_BYTES);
    }

    #[test]
    fn a_writer_drains_to_a_file() {
        let path = std::env::temp_dir().join(format!("hearth-out-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let mut w = OutputWriter::new(Sink::File(file));
        let ring = w.ring(None);
        w.start(None).unwrap();
        RingWriter(ring.clone()).write_all(b"hello\n").unwrap();
        assert!(w.finish(Duration::from_secs(5)));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
        assert_eq!(ring.written(), 6);
        let _ = std::fs::remove_file(&path);
    }
}
