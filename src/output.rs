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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bus::lock;

/// Most bytes a VM's output may have waiting for its writer.
pub const RING_BYTES: usize = 32 * 1024;
/// Most bytes a writer takes from one ring per pass.
const CHUNK: usize = 4096;
/// How soon a writer comes back to a ring it found held by its vCPU.
const RETRY: Duration = Duration::from_millis(1);
/// Longest partial line kept before it is written anyway.
const MAX_LINE: usize = 4096;

/// The wake-up a writer sleeps on. A vCPU thread that adds output must
/// never take a lock the writer also waits for: with many busy vCPUs on a
/// CPU, one preempted while holding it (at 1/N of the CPU) held the writer
/// (and every VM's console) for seconds. So the vCPU's side is an atomic
/// flag and `Thread::unpark` (an atomic and a futex wake, no lock).
#[derive(Default)]
struct Wakeup {
    /// Output was added since the writer last looked.
    data: AtomicBool,
    /// Write what is left and end.
    stop: AtomicBool,
    /// The writer thread, once it runs.
    writer: std::sync::OnceLock<std::thread::Thread>,
}

impl Wakeup {
    fn notify(&self, stop: bool) {
        if stop {
            self.stop.store(true, Ordering::Release);
        }
        // Only the first notice since the writer last looked wakes it.
        if !self.data.swap(true, Ordering::AcqRel) || stop {
            if let Some(t) = self.writer.get() {
                t.unpark();
            }
        }
    }

    /// Waits (at most `retry`, when given) for a notice; true to stop.
    fn wait(&self, retry: Option<Duration>) -> bool {
        loop {
            if self.data.swap(false, Ordering::AcqRel) || self.stop.load(Ordering::Acquire) {
                return self.stop.load(Ordering::Acquire);
            }
            match retry {
                Some(after) => {
                    std::thread::park_timeout(after);
                    self.data.store(false, Ordering::Release);
                    return self.stop.load(Ordering::Acquire);
                }
                None => std::thread::park(),
            }
        }
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

    /// Takes up to `max` bytes into `out`; false when a vCPU holds the
    /// ring (it may be preempted there: the writer comes back to it rather
    /// than wait).
    fn take(&self, out: &mut Vec<u8>, max: usize) -> bool {
        let mut q = match self.bytes.try_lock() {
            Ok(q) => q,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        let n = q.len().min(max);
        out.extend(q.drain(..n));
        if q.is_empty() && q.capacity() > CHUNK {
            // A quiet VM does not keep a burst's buffer.
            q.shrink_to(CHUNK);
        }
        true
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

/// The rings a writer serves, each with the prefix of its lines.
type Rings = Arc<Mutex<Vec<(Arc<OutputRing>, Option<String>)>>>;

/// One destination and the rings that go to it, served by one thread.
/// Rings may be added and removed while it runs (VMs come and go).
pub struct OutputWriter {
    wakeup: Arc<Wakeup>,
    rings: Rings,
    sink: Option<Sink>,
    done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// Its thread runs `SCHED_FIFO` (see [`OutputWriter::realtime`]).
    realtime: bool,
}

impl OutputWriter {
    pub fn new(sink: Sink) -> Self {
        OutputWriter {
            wakeup: Arc::default(),
            rings: Arc::default(),
            sink: Some(sink),
            done: Mutex::new(None),
            realtime: false,
        }
    }

    /// Its thread will run `SCHED_FIFO` just above every normal thread
    /// (`host.cpu.realtime`), as the statistics writer does. A normal
    /// thread, even at nice -10, waited up to 120 ms for a CPU that 200
    /// busy vCPUs shared (1.8 s of 4 s runnable and waiting), and every
    /// VM's console waited with it. What it does is bounded by what the
    /// guests write: each byte cost its guest an exit, and a ring holds at
    /// most [`RING_BYTES`].
    pub fn realtime(mut self, on: bool) -> Self {
        self.realtime = on;
        self
    }

    /// A ring for one VM; its lines are prefixed with `prefix` if given.
    pub fn ring(&self, prefix: Option<&str>) -> Arc<OutputRing> {
        let ring = Arc::new(OutputRing {
            bytes: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            wakeup: self.wakeup.clone(),
        });
        lock(&self.rings).push((ring.clone(), prefix.map(|p| format!("{p}| "))));
        ring
    }

    /// Stops serving `ring` once what it holds has been written (the next
    /// pass drops it).
    pub fn remove(&self, ring: &Arc<OutputRing>) {
        lock(&self.rings).retain(|(r, _)| !Arc::ptr_eq(r, ring));
    }

    /// Starts the writer thread (with the output class's seccomp filter).
    pub fn start(&mut self, seccomp: Option<Arc<seccompiler::BpfProgram>>) -> io::Result<()> {
        let Some(sink) = self.sink.take() else {
            return Ok(());
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let wakeup = self.wakeup.clone();
        let rings = self.rings.clone();
        let realtime = self.realtime;
        std::thread::Builder::new()
            .name("hearth-out".into())
            .spawn(move || {
                let _ = wakeup.writer.set(std::thread::current());
                if realtime {
                    crate::host::try_realtime(crate::host::WRITER_RT_PRIORITY, "an output writer");
                }
                if let Some(filter) = &seccomp {
                    if crate::seccomp::apply(filter).is_err() {
                        return;
                    }
                }
                drain_loop(&wakeup, &rings, sink);
                let _ = tx.send(());
            })?;
        *lock(&self.done) = Some(rx);
        Ok(())
    }

    /// Asks the thread to write what is left and waits for it, at most
    /// `within`. A writer stuck on a reader that does not drain is left.
    pub fn finish(&self, within: Duration) -> bool {
        self.wakeup.notify(true);
        match lock(&self.done).take() {
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

/// Where one VM's serial output goes: a ring on the shared terminal
/// writer, or a ring with a writer thread of its own for its log file
/// (returned, for the VM to own), or nowhere.
pub fn vm_output(
    output: &crate::config::SerialOutput,
    name: &str,
    terminal: &OutputWriter,
    prefix: bool,
    seccomp: Option<Arc<seccompiler::BpfProgram>>,
) -> io::Result<(Option<Arc<OutputRing>>, Option<OutputWriter>)> {
    use crate::config::SerialOutput;
    Ok(match output {
        SerialOutput::Off => (None, None),
        SerialOutput::Stdout => (Some(terminal.ring(prefix.then_some(name))), None),
        SerialOutput::File(path) => {
            let file = std::fs::File::create(path)?;
            let mut writer = OutputWriter::new(Sink::File(file)).realtime(terminal.realtime);
            let ring = writer.ring(None);
            writer.start(seccomp)?;
            (Some(ring), Some(writer))
        }
    })
}

/// The writer thread: wait for output, drain every ring, write it out.
fn drain_loop(wakeup: &Wakeup, rings: &Rings, sink: Sink) {
    let mut out: Box<dyn Write> = match sink {
        Sink::Stdout => Box::new(io::stdout()),
        Sink::File(f) => Box::new(f),
    };
    // Partial lines, per ring (keyed by the ring's address).
    let mut lines: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut chunk = Vec::with_capacity(CHUNK);
    // A ring skipped because a vCPU held it: look again after this long.
    let mut retry = None;
    loop {
        let stop = wakeup.wait(retry);
        retry = None;
        let deadline = Instant::now() + Duration::from_millis(200);
        loop {
            let current = lock(rings).clone();
            lines.retain(|(key, _)| current.iter().any(|(r, _)| ring_key(r) == *key));
            let mut any = false;
            for (ring, prefix) in &current {
                chunk.clear();
                if !ring.take(&mut chunk, CHUNK) {
                    retry = Some(RETRY);
                    continue;
                }
                if chunk.is_empty() {
                    continue;
                }
                any = true;
                let n = chunk.len() as u64;
                let ok = match prefix {
                    None => out.write_all(&chunk).and_then(|()| out.flush()),
                    Some(p) => write_lines(&mut *out, p, partial(&mut lines, ring), &chunk),
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
            for (ring, prefix) in lock(rings).iter() {
                let line = partial(&mut lines, ring);
                if let (Some(p), false) = (prefix, line.is_empty()) {
                    line.push(b'\n');
                    let _ = emit(&mut *out, p, line);
                }
            }
            let _ = out.flush();
            return;
        }
    }
}

fn ring_key(ring: &Arc<OutputRing>) -> usize {
    Arc::as_ptr(ring) as usize
}

/// The partial line kept for `ring`.
fn partial<'a>(lines: &'a mut Vec<(usize, Vec<u8>)>, ring: &Arc<OutputRing>) -> &'a mut Vec<u8> {
    let key = ring_key(ring);
    let at = match lines.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            lines.push((key, Vec::new()));
            lines.len() - 1
        }
    };
    &mut lines[at].1
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
        let w = OutputWriter::new(Sink::Stdout);
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

    /// Waits (at most 5 s) until `ring` has had `n` bytes written.
    fn written(ring: &OutputRing, n: u64) -> bool {
        let start = std::time::Instant::now();
        while ring.written() < n {
            if start.elapsed() > Duration::from_secs(5) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    #[test]
    fn a_ring_held_by_its_vcpu_holds_back_no_other_ring() {
        let path = std::env::temp_dir().join(format!("hearth-out-held-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let mut w = OutputWriter::new(Sink::File(file));
        let (held, free) = (w.ring(Some("held")), w.ring(Some("free")));
        w.start(None).unwrap();
        RingWriter(held.clone()).write_all(b"first\n").unwrap();
        assert!(written(&held, 6));
        // A vCPU preempted while it holds its ring's lock (with its bytes
        // in): the writer goes on with the other rings.
        let guard = held.bytes.lock().unwrap();
        RingWriter(free.clone()).write_all(b"other\n").unwrap();
        assert!(written(&free, 6), "the other VM's output waited");
        let mut guard = guard;
        guard.extend(b"second\n");
        drop(guard);
        // The writer comes back to the held ring without another notice.
        assert!(written(&held, 13), "the held ring was not retried");
        assert!(w.finish(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "held| first\nfree| other\nheld| second\n");
        let _ = std::fs::remove_file(&path);
    }
}
