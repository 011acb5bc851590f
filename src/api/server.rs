//! The control socket in the event loop: a listening Unix socket and one
//! tagged fd per connection, each with its own buffers, so a slow, silent
//! or hostile client never holds up the loop or another client.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::timerfd::TimerFd;

use crate::bus::lock;
use crate::config::Grant;

use super::acl::Peer;
use super::deferred::{Answer, Completions, Ticket};
use super::listener::{peer_of, Listener};
use super::ops::{execute, Control};
use super::protocol::{self, Request};

/// Longest request line; a longer one gets an error and the connection closes.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Most connections open at once; more are told so and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Most connections one uid may hold, so one client cannot hold them all.
pub const MAX_CONNECTIONS_PER_UID: usize = 16;
/// Longest reply to one request; a longer one is replaced by an error.
pub const MAX_REPLY: usize = 1 << 20;
/// A connection with no traffic for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Replies a client has not read beyond this stop its requests being read.
const MAX_PENDING_REPLIES: usize = 1 << 20;
/// Reads per readiness event, so one busy client cannot monopolise the loop.
const READS_PER_EVENT: usize = 16;
/// Refusals logged per sweep period; the rest are counted.
const REFUSALS_LOGGED: u32 = 20;
const SWEEP_PERIOD: Duration = Duration::from_secs(1);

const TAG_LISTEN: u32 = 0;
const TAG_SWEEP: u32 = 1;
const TAG_ANSWERS: u32 = 2;
const TAG_CONN: u32 = 16;

struct Conn {
    stream: UnixStream,
    peer: Peer,
    input: Vec<u8>,
    output: Vec<u8>,
    last_active: Instant,
    /// Close once the pending replies are written.
    closing: bool,
    /// A request answered later (a VM being built or torn down): nothing
    /// more is read from the connection until it is, so replies keep the
    /// order of the requests.
    waiting: Option<Ticket>,
    /// The events it is registered for.
    interest: EventSet,
}

/// The events a client connection waits for: input while it `reads`,
/// output while it has some to write (neither: only hang-ups). Shared
/// with the Firecracker API's connections.
pub(crate) fn interest(reads: bool, output: &[u8]) -> EventSet {
    match (reads, output.is_empty()) {
        (true, true) => EventSet::IN,
        (true, false) => EventSet::IN | EventSet::OUT,
        (false, false) => EventSet::OUT,
        (false, true) => EventSet::empty(),
    }
}

/// Writes what it can of `output` to a non-blocking `stream` and drops
/// what was written; `Err` means the connection is dead.
pub(crate) fn write_pending(stream: &mut UnixStream, output: &mut Vec<u8>) -> io::Result<()> {
    while !output.is_empty() {
        match stream.write(output) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                output.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Conn {
    fn wanted(&self) -> EventSet {
        let reading = !self.closing && self.waiting.is_none();
        interest(
            reading && self.output.len() < MAX_PENDING_REPLIES,
            &self.output,
        )
    }

    /// Whether it is done: closing, every reply written, none pending.
    fn finished(&self) -> bool {
        self.closing && self.output.is_empty() && self.waiting.is_none()
    }

    /// Writes what it can; `Err` means the connection is dead.
    fn flush(&mut self) -> io::Result<()> {
        write_pending(&mut self.stream, &mut self.output)
    }
}

/// The event-loop subscriber serving the control socket.
pub struct ApiServer<C: Control + Send> {
    listener: Listener,
    target: Arc<Mutex<C>>,
    conns: Vec<Option<Conn>>,
    /// Answers to deferred requests, and which connection waits for each.
    completions: Arc<Completions>,
    waiting: HashMap<Ticket, usize>,
    sweep: TimerFd,
    refusals_logged: u32,
    refusals_quiet: u64,
}

impl<C: Control + Send> ApiServer<C> {
    pub fn new(listener: Listener, target: Arc<Mutex<C>>) -> io::Result<Self> {
        let mut sweep = TimerFd::new().map_err(io::Error::from)?;
        sweep
            .reset(SWEEP_PERIOD, Some(SWEEP_PERIOD))
            .map_err(io::Error::from)?;
        log::info!("control socket: {}", listener.path().display());
        Ok(ApiServer {
            listener,
            target,
            conns: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            completions: Completions::new()?,
            waiting: HashMap::new(),
            sweep,
            refusals_logged: 0,
            refusals_quiet: 0,
        })
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.listener.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("control socket: accept: {e}");
                    return;
                }
            };
            let _ = stream.set_nonblocking(true);
            let peer = match peer_of(&stream) {
                Ok(peer) => peer,
                Err(e) => {
                    log::warn!("control socket: a new connection failed: {e}");
                    continue;
                }
            };
            // Credentials first: a client no ACL entry names never takes a slot.
            if let Err(why) = self.admit(&peer) {
                self.note_refusal(&peer, &why);
                let _ = (&stream).write(&protocol::line(&protocol::error(why)));
                continue;
            }
            let Some(slot) = self.conns.iter().position(Option::is_none) else {
                let reply = protocol::error(format!(
                    "too many connections (at most {MAX_CONNECTIONS}); try again later"
                ));
                let _ = (&stream).write(&protocol::line(&reply));
                continue;
            };
            let tag = TAG_CONN + slot as u32;
            if let Err(e) = ops.add(Events::with_data(&stream, tag, EventSet::IN)) {
                log::warn!("control socket: cannot watch a connection: {e}");
                continue;
            }
            log::debug!(
                "control socket: connection from pid {} uid {} gid {}",
                peer.pid,
                peer.uid,
                peer.gid
            );
            self.conns[slot] = Some(Conn {
                stream,
                peer,
                input: Vec::new(),
                output: Vec::new(),
                last_active: Instant::now(),
                closing: false,
                waiting: None,
                interest: EventSet::IN,
            });
        }
    }

    /// Whether a new connection from `peer` may be served.
    fn admit(&self, peer: &Peer) -> Result<(), String> {
        if !self.listener.acl.knows(peer) {
            return Err(format!(
                "permission denied: uid {} (gid {}) is not in the access list",
                peer.uid, peer.gid
            ));
        }
        let held = self
            .conns
            .iter()
            .flatten()
            .filter(|c| c.peer.uid == peer.uid)
            .count();
        if held >= MAX_CONNECTIONS_PER_UID {
            return Err(format!(
                "too many connections from uid {} (at most {MAX_CONNECTIONS_PER_UID})",
                peer.uid
            ));
        }
        Ok(())
    }

    /// Logs a refusal, at most [`REFUSALS_LOGGED`] per sweep period.
    fn note_refusal(&mut self, peer: &Peer, why: &str) {
        if self.refusals_logged < REFUSALS_LOGGED {
            self.refusals_logged += 1;
            log::warn!("control socket: refused pid {}: {why}", peer.pid);
        } else {
            self.refusals_quiet += 1;
        }
    }

    fn close(&mut self, slot: usize, ops: &mut EventOps) {
        if let Some(conn) = self.conns.get_mut(slot).and_then(Option::take) {
            let tag = TAG_CONN + slot as u32;
            let _ = ops.remove(Events::with_data(&conn.stream, tag, conn.interest));
            if let Some(t) = conn.waiting {
                self.waiting.remove(&t);
            }
        }
    }

    /// Answers that came in for deferred requests: written to their
    /// connections, whose next requests are then read.
    fn on_answers(&mut self, ops: &mut EventOps) {
        for (ticket, answer) in self.completions.take() {
            let Some(slot) = self.waiting.remove(&ticket) else {
                continue; // its connection has gone
            };
            let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            conn.waiting = None;
            let reply = match answer {
                Ok(v) => protocol::ok(v),
                Err(e) => protocol::error(e),
            };
            conn.output.extend(capped(&reply));
            self.answer_lines(slot, &mut conn);
            let alive = conn.flush().is_ok();
            self.conns[slot] = Some(conn);
            self.after_io(slot, alive, false, ops);
        }
    }

    /// Closes a connection that is done or dead, or updates its interest.
    fn after_io(&mut self, slot: usize, alive: bool, hung_up: bool, ops: &mut EventOps) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if !alive || hung_up || conn.finished() {
            self.close(slot, ops);
            return;
        }
        let wanted = conn.wanted();
        if wanted != conn.interest {
            let tag = TAG_CONN + slot as u32;
            if ops
                .modify(Events::with_data(&conn.stream, tag, wanted))
                .is_ok()
            {
                conn.interest = wanted;
            }
        }
    }

    /// Answers one request line from `peer`: the reply, or `Err` with the
    /// ticket of an answer that comes later.
    fn answer(&mut self, peer: &Peer, line: &[u8]) -> Result<serde_json::Value, Ticket> {
        let request = match Request::parse(line) {
            Ok(r) => r,
            Err(e) => return Ok(protocol::error(e)),
        };
        if let Err(refusal) = self.listener.acl.check(peer, &request) {
            self.note_refusal(peer, &format!("{request:?}: {refusal}"));
            return Ok(protocol::error(refusal));
        }
        let (grant, _) = request.needs();
        if grant >= Grant::Control {
            log::info!(
                "control socket: uid {} (pid {}): {request:?}",
                peer.uid,
                peer.pid
            );
        }
        let mut ticket = None;
        let completions = self.completions.clone();
        let mut waiter = || {
            let w = completions.waiter();
            ticket = Some(w.ticket);
            w
        };
        let mut target = lock(&self.target);
        let answer = execute(&mut *target, &self.listener.acl, peer, request, &mut waiter);
        drop(target);
        match (answer, ticket) {
            (Ok(Answer::Now(result)), _) => Ok(protocol::ok(result)),
            (Ok(Answer::Later), Some(t)) => Err(t),
            (Ok(Answer::Later), None) => Ok(protocol::error("internal: no answer")),
            (Err(e), _) => Ok(protocol::error(e)),
        }
    }

    /// Reads and answers what a connection sent; `false` if it must close now.
    fn serve(&mut self, slot: usize) -> bool {
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return true;
        };
        let alive = self.serve_conn(slot, &mut conn);
        self.conns[slot] = Some(conn);
        alive
    }

    fn serve_conn(&mut self, slot: usize, conn: &mut Conn) -> bool {
        let mut buf = [0u8; 4096];
        let mut eof = false;
        for _ in 0..READS_PER_EVENT {
            if conn.closing || conn.waiting.is_some() || conn.output.len() >= MAX_PENDING_REPLIES {
                break;
            }
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    conn.last_active = Instant::now();
                    conn.input.extend_from_slice(&buf[..n]);
                    self.answer_lines(slot, conn);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if eof {
            // A last request without its newline is still answered.
            if !conn.input.is_empty() && !conn.closing && conn.waiting.is_none() {
                conn.input.push(b'\n');
                self.answer_lines(slot, conn);
            }
            conn.closing = true;
        }
        conn.flush().is_ok()
    }

    fn answer_lines(&mut self, slot: usize, conn: &mut Conn) {
        while conn.waiting.is_none() {
            let Some(end) = conn.input.iter().position(|b| *b == b'\n') else {
                break;
            };
            let line: Vec<u8> = conn.input.drain(..=end).collect();
            let line = trim(&line);
            if line.is_empty() {
                continue;
            }
            let peer = conn.peer;
            match self.answer(&peer, line) {
                Ok(reply) => conn.output.extend(capped(&reply)),
                Err(ticket) => {
                    conn.waiting = Some(ticket);
                    self.waiting.insert(ticket, slot);
                }
            }
        }
        if conn.input.len() > MAX_REQUEST {
            log::warn!(
                "control socket: pid {} sent a request longer than {MAX_REQUEST} bytes; closing",
                conn.peer.pid
            );
            conn.input.clear();
            let reply = protocol::error(format!(
                "request too long (more than {MAX_REQUEST} bytes without a newline); closing"
            ));
            conn.output.extend(protocol::line(&reply));
            conn.closing = true;
        }
    }

    fn on_sweep(&mut self, ops: &mut EventOps) {
        let _ = self.sweep.wait();
        if self.refusals_quiet > 0 {
            log::warn!(
                "control socket: {} more refusals not logged",
                self.refusals_quiet
            );
        }
        self.refusals_logged = 0;
        self.refusals_quiet = 0;
        let now = Instant::now();
        let idle: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.as_ref()
                    .filter(|c| now.duration_since(c.last_active) >= IDLE_TIMEOUT)
                    .map(|_| i)
            })
            .collect();
        for slot in idle {
            log::debug!("control socket: closing an idle connection");
            self.close(slot, ops);
        }
    }
}

/// One reply as a line, or an error line when it exceeds [`MAX_REPLY`]
/// (so what one request makes the monitor buffer is bounded).
fn capped(reply: &serde_json::Value) -> Vec<u8> {
    let line = protocol::line(reply);
    if line.len() <= MAX_REPLY {
        return line;
    }
    protocol::line(&protocol::error(format!(
        "the reply would be {} bytes, more than the {MAX_REPLY} bytes a reply may be; ask for less \
         (one VM's statistics, say)",
        line.len()
    )))
}

/// A line without its line ending.
fn trim(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &line[..end]
}

impl<C: Control + Send> MutEventSubscriber for ApiServer<C> {
    fn init(&mut self, ops: &mut EventOps) {
        for ev in [
            Events::with_data(&self.listener.listener, TAG_LISTEN, EventSet::IN),
            Events::with_data(&self.sweep, TAG_SWEEP, EventSet::IN),
            Events::with_data(self.completions.eventfd(), TAG_ANSWERS, EventSet::IN),
        ] {
            if let Err(e) = ops.add(ev) {
                log::error!("control socket: cannot watch an fd: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TAG_LISTEN => self.accept(ops),
            TAG_SWEEP => self.on_sweep(ops),
            TAG_ANSWERS => self.on_answers(ops),
            tag if tag >= TAG_CONN => {
                let slot = (tag - TAG_CONN) as usize;
                let set = events.event_set();
                let alive = if set.contains(EventSet::IN) || set.contains(EventSet::OUT) {
                    self.serve(slot)
                } else {
                    false
                };
                let hung_up = set.intersects(EventSet::ERROR | EventSet::HANG_UP)
                    && !set.contains(EventSet::IN);
                self.after_io(slot, alive, hung_up, ops);
            }
            other => log::warn!("control socket: unexpected event tag {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_over_the_cap_becomes_an_error() {
        let small = serde_json::json!({"ok": true, "result": "x"});
        assert_eq!(capped(&small), protocol::line(&small));
        let big = protocol::ok(serde_json::json!("y".repeat(MAX_REPLY)));
        let line = capped(&big);
        assert!(line.len() < 1024);
        let reply: serde_json::Value = serde_json::from_slice(&line).expect("JSON");
        assert_eq!(reply["ok"], false);
        assert!(reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("more than the 1048576 bytes"));
    }
}
