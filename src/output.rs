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
    /// Bytes came in since the writer last took from it: the writer looks
    /// only at such rings, so a pass costs what was written, not an
    /// atomic lock and a look at every VM's ring.
    dirty: AtomicBool,
    /// What each of its lines starts with, when several VMs share the
    /// terminal. Then only whole lines go out, and the vCPU wakes the
    /// writer at a line's end (or a long line), not for every byte.
    prefix: Option<String>,
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
        let pending = q.len();
        drop(q);
        if n < buf.len() {
            self.dropped
                .fetch_add((buf.len() - n) as u64, Ordering::Relaxed);
        }
        if n > 0 {
            self.dirty.store(true, Ordering::Release);
            // A prefixed ring's partial line could not go out anyway: it
            // waits for its end (or for a wake-up by another ring). 200
            // booting guests woke the writer for every byte, and it took
            // a fifth of the CPU.
            if self.prefix.is_none() || buf[..n].contains(&b'\n') || pending >= MAX_LINE {
                self.wakeup.notify(false);
            }
        }
    }

    /// Takes up to `max` bytes into `out`; false when a vCPU holds the
    /// ring (it may be preempted there: the writer comes back to it rather
    /// than wait). A ring left held, or with more than `max`, stays dirty.
    fn take(&self, out: &mut Vec<u8>, max: usize) -> bool {
        let mut q = match self.bytes.try_lock() {
            Ok(q) => q,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.dirty.store(true, Ordering::Release);
                return false;
            }
        };
        let n = q.len().min(max);
        out.extend(q.drain(..n));
        if !q.is_empty() {
            self.dirty.store(true, Ordering::Release);
        } else if q.capacity() > CHUNK {
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

/// The rings a writer serves, and a count of changes to that list (the
/// writer copies it only when it moved).
#[derive(Default)]
struct RingList {
    rings: Mutex<Vec<Arc<OutputRing>>>,
    changes: AtomicU64,
}

type Rings = Arc<RingList>;

/// One destination and the rings that go to it, served by one thread.
/// Rings may be added and removed while it runs (VMs come and go).
pub struct OutputWriter {
    wakeup: Arc<Wakeup>,
    rings: Rings,
    sink: Option<Sink>,
    done: Mutex<Option<Arc<crate::handoff::Handoff<()>>>>,
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
            // Room made here, not by a vCPU thread: one preempted in malloc
            // held the loop and the writers (design.md, "Threads").
            bytes: Mutex::new(VecDeque::with_capacity(CHUNK)),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            prefix: prefix.map(|p| format!("{p}| ")),
            wakeup: self.wakeup.clone(),
        });
        lock(&self.rings.rings).push(ring.clone());
        self.rings.changes.fetch_add(1, Ordering::Release);
        ring
    }

    /// Stops serving `ring` (the writer's next pass drops it).
    pub fn remove(&self, ring: &Arc<OutputRing>) {
        lock(&self.rings.rings).retain(|r| !Arc::ptr_eq(r, ring));
        self.rings.changes.fetch_add(1, Ordering::Release);
    }

    /// Starts the writer thread (with the output class's seccomp filter).
    pub fn start(&mut self, seccomp: Option<Arc<seccompiler::BpfProgram>>) -> io::Result<()> {
        let Some(sink) = self.sink.take() else {
            return Ok(());
        };
        let rx = Arc::new(crate::handoff::Handoff::bounded(1));
        let tx = rx.clone();
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
                match seccomp.as_deref().map(crate::seccomp::apply) {
                    Some(Err(_)) => tx.close(),
                    _ => drain_loop(&wakeup, &rings, sink),
                }
                let _ = tx.push(());
            })?;
        *lock(&self.done) = Some(rx);
        Ok(())
    }

    /// Asks the thread to write what is left and waits for it, at most
    /// `within`. A writer stuck on a reader that does not drain is left.
    pub fn finish(&self, within: Duration) -> bool {
        self.wakeup.notify(true);
        match lock(&self.done).take() {
            Some(rx) => rx.pop_timeout(within).is_some(),
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

/// A ring as its writer serves it: with its partial line.
struct Served {
    ring: Arc<OutputRing>,
    line: Vec<u8>,
}

/// The writer's copy of the ring list, taken again only when it changed
/// (partial lines carry over).
#[derive(Default)]
struct ServedList {
    changes: Option<u64>,
    served: Vec<Served>,
}

impl ServedList {
    fn refresh(&mut self, rings: &RingList) {
        let changes = rings.changes.load(Ordering::Acquire);
        if self.changes == Some(changes) {
            return;
        }
        // (A BTreeMap: a HashMap would seed itself with getrandom, which the
        // output class's seccomp filter does not allow.)
        let mut old: std::collections::BTreeMap<usize, Vec<u8>> = self
            .served
            .drain(..)
            .map(|s| (ring_key(&s.ring), s.line))
            .collect();
        self.served = lock(&rings.rings)
            .iter()
            .map(|ring| Served {
                line: old.remove(&ring_key(ring)).unwrap_or_default(),
                ring: ring.clone(),
            })
            .collect();
        self.changes = Some(changes);
    }

    /// One pass over the rings with new bytes (every ring when `all`):
    /// whether it wrote anything, and whether a ring was held by its vCPU.
    fn pass(&mut self, out: &mut dyn Write, chunk: &mut Vec<u8>, all: bool) -> (bool, bool) {
        let (mut any, mut held) = (false, false);
        for s in &mut self.served {
            if !s.ring.dirty.swap(false, Ordering::AcqRel) && !all {
                continue;
            }
            chunk.clear();
            if !s.ring.take(chunk, CHUNK) {
                held = true;
                continue;
            }
            if chunk.is_empty() {
                continue;
            }
            any = true;
            let n = chunk.len() as u64;
            let ok = match &s.ring.prefix {
                None => out.write_all(chunk).and_then(|()| out.flush()),
                Some(p) => write_lines(out, p, &mut s.line, chunk),
            };
            if ok.is_ok() {
                s.ring.written.fetch_add(n, Ordering::Relaxed);
            }
        }
        (any, held)
    }

    /// At the end: the partial lines go out, each ended.
    fn end_lines(&mut self, out: &mut dyn Write) {
        for s in &mut self.served {
            if let (Some(p), false) = (&s.ring.prefix, s.line.is_empty()) {
                s.line.push(b'\n');
                let _ = emit(out, p, &mut s.line);
            }
        }
        let _ = out.flush();
    }
}

/// The writer thread: wait for output, drain the rings that have some,
/// write it out.
fn drain_loop(wakeup: &Wakeup, rings: &RingList, sink: Sink) {
    let mut out: Box<dyn Write> = match sink {
        Sink::Stdout => Box::new(io::stdout()),
        Sink::File(f) => Box::new(f),
    };
    let mut list = ServedList::default();
    let mut chunk = Vec::with_capacity(CHUNK);
    // A ring skipped because a vCPU held it: look again after this long.
    let mut retry = None;
    loop {
        let stop = wakeup.wait(retry);
        let deadline = Instant::now() + Duration::from_millis(200);
        loop {
            list.refresh(rings);
            let (any, held) = list.pass(&mut *out, &mut chunk, stop);
            retry = held.then_some(RETRY);
            if !any || (stop && Instant::now() > deadline) {
                break;
            }
        }
        if stop {
            list.end_lines(&mut *out);
            return;
        }
    }
}

fn ring_key(ring: &Arc<OutputRing>) -> usize {
    Arc::as_ptr(ring) as usize
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
    fn a_guest_printing_lines_does_not_make_its_vcpu_allocate() {
        let w = OutputWriter::new(Sink::Stdout);
        let ring = w.ring(Some("web"));
        let room = lock(&ring.bytes).capacity();
        assert!(room >= CHUNK, "a new ring has room for {room} bytes");
        let mut uart = RingWriter(ring.clone());
        let mut out = Vec::new();
        for _ in 0..100 {
            for &b in b"hearth-guest: a line of a booting guest\n" {
                uart.write_all(&[b]).unwrap();
            }
            // The writer drains it; the ring keeps its room.
            ring.take(&mut out, CHUNK);
            assert_eq!(lock(&ring.bytes).capacity(), room);
        }
        assert_eq!(ring.dropped(), 0);
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

    #[test]
    fn a_prefixed_ring_wakes_its_writer_at_a_line_end_not_for_every_byte() {
        let w = OutputWriter::new(Sink::Stdout);
        let (lines, bytes) = (w.ring(Some("vm")), w.ring(None));
        let woken = || w.wakeup.data.swap(false, Ordering::AcqRel);
        RingWriter(lines.clone()).write_all(b"booting").unwrap();
        assert!(!woken(), "a partial line woke the writer");
        assert!(lines.dirty.load(Ordering::Acquire));
        RingWriter(lines.clone()).write_all(b" done\nnext").unwrap();
        assert!(woken(), "a line end did not wake the writer");
        RingWriter(lines.clone())
            .write_all(&[b'x'; MAX_LINE])
            .unwrap();
        assert!(woken(), "a line too long to keep did not wake the writer");
        // Without a prefix every byte goes out as it comes (a console echo).
        RingWriter(bytes.clone()).write_all(b"$").unwrap();
        assert!(woken(), "an unprefixed byte did not wake the writer");
    }

    #[test]
    fn many_rings_each_get_their_lines_out_whole_and_in_order() {
        let path = std::env::temp_dir().join(format!("hearth-out-many-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let mut w = OutputWriter::new(Sink::File(file));
        let rings: Vec<_> = (0..300).map(|i| w.ring(Some(&format!("vm{i}")))).collect();
        w.start(None).unwrap();
        for round in 0..3 {
            for (i, r) in rings.iter().enumerate() {
                // Split lines: the first half wakes nobody.
                RingWriter(r.clone())
                    .write_all(format!("vm{i} line").as_bytes())
                    .unwrap();
                RingWriter(r.clone())
                    .write_all(format!(" {round}\n").as_bytes())
                    .unwrap();
            }
        }
        w.remove(&rings[0]);
        assert!(w.finish(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, _) in rings.iter().enumerate().skip(1) {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("vm{i}| ")))
                .collect();
            let want: Vec<String> = (0..3).map(|r| format!("vm{i}| vm{i} line {r}")).collect();
            assert_eq!(mine, want, "ring {i}");
        }
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
        // (It had pushed before: the writer knows it has bytes.)
        held.dirty.store(true, Ordering::Release);
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
