//! The Firecracker API sockets in the event loop: one subscriber for all
//! of a monitor's API sockets, each socket with at most [`MAX_CONNS`]
//! connections, each connection a tagged fd with bounded buffers (a head
//! of at most 8 KiB, a body of at most 50 KiB, replies read or the
//! connection is no longer read), so a slow or hostile client never holds
//! up the loop, another client, or the monitor's memory.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::timerfd::TimerFd;

use super::http::{self, Parsed, Response};
use super::routes;
use super::slot::{entry_in, Phase, Reply, Slot};
use super::socket::{NewEndpoint, Registry, SocketFile};
use crate::api::{Completions, Control, Ticket};
use crate::bus::lock;

/// Connections per API socket.
pub const MAX_CONNS: usize = 16;
/// API sockets per monitor.
pub const MAX_SOCKETS: usize = 1024;
/// A connection with no traffic for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Firecracker writes its metrics every 60 s.
pub const METRICS_PERIOD: Duration = Duration::from_secs(60);
/// Replies not yet read beyond this stop a connection being read.
const MAX_OUTPUT: usize = 256 * 1024;
const READS_PER_EVENT: usize = 16;
const TICK: Duration = Duration::from_secs(1);

const TAG_TICK: u32 = 0;
const TAG_ANSWERS: u32 = 1;
const TAG_REGISTRY: u32 = 2;
const TAG_BASE: u32 = 16;
const STRIDE: u32 = 1 + MAX_CONNS as u32;

fn listener_tag(s: usize) -> u32 {
    TAG_BASE + s as u32 * STRIDE
}

fn conn_tag(s: usize, c: usize) -> u32 {
    listener_tag(s) + 1 + c as u32
}

struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    last_active: Instant,
    closing: bool,
    /// A request answered later, and whether its connection stays open.
    waiting: Option<(Ticket, bool)>,
    /// `100 Continue` was sent for the request being received.
    continued: bool,
    interest: EventSet,
}

impl Conn {
    fn wanted(&self) -> EventSet {
        let reading = !self.closing && self.waiting.is_none() && self.output.len() < MAX_OUTPUT;
        crate::api::server::interest(reading, &self.output)
    }

    fn finished(&self) -> bool {
        self.closing && self.output.is_empty() && self.waiting.is_none()
    }

    fn flush(&mut self) -> io::Result<()> {
        crate::api::server::write_pending(&mut self.stream, &mut self.output)
    }
}

/// One API socket: its listener, file, VM and connections.
struct Endpoint {
    listener: UnixListener,
    _file: SocketFile,
    slot: Slot,
    conns: Vec<Option<Conn>>,
}

/// The event-loop subscriber serving every Firecracker API socket.
pub struct FcApiServer<C: Control + Send> {
    target: Arc<Mutex<C>>,
    registry: Arc<Registry>,
    endpoints: Vec<Option<Endpoint>>,
    completions: Arc<Completions>,
    /// Deferred requests: their socket (by index and VM name, in case the
    /// index is reused) and connection. Kept when the connection closes:
    /// the socket's VM still learns how its start ended.
    waiting: HashMap<Ticket, (usize, String, usize)>,
    tick: TimerFd,
}

impl<C: Control + Send> FcApiServer<C> {
    /// A server for `registry`'s sockets, acting on `target`.
    pub fn new(target: Arc<Mutex<C>>, registry: Arc<Registry>) -> io::Result<Self> {
        let mut tick = TimerFd::new().map_err(io::Error::from)?;
        tick.reset(TICK, Some(TICK)).map_err(io::Error::from)?;
        Ok(FcApiServer {
            target,
            registry,
            endpoints: Vec::new(),
            completions: Completions::new()?,
            waiting: HashMap::new(),
            tick,
        })
    }

    fn add_endpoint(&mut self, new: NewEndpoint, ops: &mut EventOps) {
        let free = self.endpoints.iter().position(Option::is_none);
        let s = match free {
            Some(s) => s,
            None if self.endpoints.len() < MAX_SOCKETS => {
                self.endpoints.push(None);
                self.endpoints.len() - 1
            }
            None => {
                log::warn!("Firecracker API: more than {MAX_SOCKETS} sockets; closing the new one");
                self.registry.closed(&new.slot.name);
                return;
            }
        };
        let ev = Events::with_data(&new.listener, listener_tag(s), EventSet::IN);
        if let Err(e) = ops.add(ev) {
            log::error!(
                "Firecracker API: cannot watch {}: {e}",
                new.file.path().display()
            );
            self.registry.closed(&new.slot.name);
            return;
        }
        self.endpoints[s] = Some(Endpoint {
            listener: new.listener,
            _file: new.file,
            slot: new.slot,
            conns: (0..MAX_CONNS).map(|_| None).collect(),
        });
    }

    /// Closes a socket (its file goes with it) and its connections.
    fn remove_endpoint(&mut self, s: usize, ops: &mut EventOps) {
        for c in 0..MAX_CONNS {
            self.close_conn(s, c, ops);
        }
        if let Some(ep) = self.endpoints.get_mut(s).and_then(Option::take) {
            let _ = ops.remove(Events::with_data(
                &ep.listener,
                listener_tag(s),
                EventSet::IN,
            ));
            log::info!("{}: its Firecracker API socket is closed", ep.slot.name);
            self.registry.closed(&ep.slot.name);
        }
    }

    fn on_registry(&mut self, ops: &mut EventOps) {
        let (new, closing) = self.registry.take();
        for n in new {
            self.add_endpoint(n, ops);
        }
        for name in closing {
            let found = self.endpoints.iter().position(|e| {
                e.as_ref()
                    .is_some_and(|e| e.slot.name == name && e.slot.phase() != Phase::Attached)
            });
            if let Some(s) = found {
                self.remove_endpoint(s, ops);
            }
        }
    }

    fn accept(&mut self, s: usize, ops: &mut EventOps) {
        loop {
            let Some(ep) = self.endpoints.get_mut(s).and_then(Option::as_mut) else {
                return;
            };
            let stream = match ep.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("{}: API socket: accept: {e}", ep.slot.name);
                    return;
                }
            };
            let _ = stream.set_nonblocking(true);
            let Some(c) = ep.conns.iter().position(Option::is_none) else {
                let busy =
                    Response::fault(503, format!("too many connections (at most {MAX_CONNS})"));
                let _ = (&stream).write(&busy.to_bytes(false));
                continue;
            };
            if let Err(e) = ops.add(Events::with_data(&stream, conn_tag(s, c), EventSet::IN)) {
                log::warn!(
                    "{}: API socket: cannot watch a connection: {e}",
                    ep.slot.name
                );
                continue;
            }
            ep.conns[c] = Some(Conn {
                stream,
                input: Vec::new(),
                output: Vec::new(),
                last_active: Instant::now(),
                closing: false,
                waiting: None,
                continued: false,
                interest: EventSet::IN,
            });
        }
    }

    fn close_conn(&mut self, s: usize, c: usize, ops: &mut EventOps) {
        let Some(ep) = self.endpoints.get_mut(s).and_then(Option::as_mut) else {
            return;
        };
        if let Some(conn) = ep.conns.get_mut(c).and_then(Option::take) {
            let _ = ops.remove(Events::with_data(
                &conn.stream,
                conn_tag(s, c),
                conn.interest,
            ));
        }
    }

    fn take_conn(&mut self, s: usize, c: usize) -> Option<Conn> {
        self.endpoints
            .get_mut(s)?
            .as_mut()?
            .conns
            .get_mut(c)?
            .take()
    }

    fn put_conn(&mut self, s: usize, c: usize, conn: Conn) {
        if let Some(slot) = self
            .endpoints
            .get_mut(s)
            .and_then(Option::as_mut)
            .and_then(|ep| ep.conns.get_mut(c))
        {
            *slot = Some(conn);
        }
    }

    /// The answer to one request.
    fn dispatch(&mut self, s: usize, req: &http::Request) -> Reply {
        let action = match routes::route(req) {
            Ok(a) => a,
            Err(resp) => return Reply::Now(resp),
        };
        let Some(ep) = self.endpoints.get_mut(s).and_then(Option::as_mut) else {
            return Reply::Now(Response::fault(500, "the socket is closing"));
        };
        log::debug!("{}: API {} {}", ep.slot.name, req.method.name(), req.path);
        let completions = self.completions.clone();
        let mut waiter = || completions.waiter();
        let mut target = lock(&self.target);
        ep.slot.handle(action, &mut *target, &mut waiter)
    }

    /// Answers the complete requests a connection holds, in order.
    fn process(&mut self, s: usize, c: usize, conn: &mut Conn) {
        while conn.waiting.is_none() && !conn.closing {
            match http::parse(&conn.input) {
                Parsed::Incomplete { expects_continue } => {
                    if expects_continue && !conn.continued {
                        conn.output.extend_from_slice(http::CONTINUE);
                        conn.continued = true;
                    }
                    return;
                }
                Parsed::Bad(resp) => {
                    conn.input.clear();
                    conn.output.extend(resp.to_bytes(false));
                    conn.closing = true;
                }
                Parsed::Complete(req, used) => {
                    conn.input.drain(..used);
                    conn.continued = false;
                    match self.dispatch(s, &req) {
                        Reply::Now(resp) => {
                            conn.output.extend(resp.to_bytes(req.keep_alive));
                            conn.closing = !req.keep_alive;
                        }
                        Reply::Later(ticket) => {
                            conn.waiting = Some((ticket, req.keep_alive));
                            let name = self.endpoints[s]
                                .as_ref()
                                .map(|ep| ep.slot.name.clone())
                                .unwrap_or_default();
                            self.waiting.insert(ticket, (s, name, c));
                        }
                    }
                }
            }
        }
    }

    /// Reads and answers; `false` if the connection is dead.
    fn serve(&mut self, s: usize, c: usize, conn: &mut Conn) -> bool {
        let mut buf = [0u8; 4096];
        let limit = http::MAX_HEAD + http::MAX_BODY;
        for _ in 0..READS_PER_EVENT {
            if conn.closing
                || conn.waiting.is_some()
                || conn.output.len() >= MAX_OUTPUT
                || conn.input.len() >= limit
            {
                break;
            }
            let room = (limit - conn.input.len()).min(buf.len());
            match conn.stream.read(&mut buf[..room]) {
                Ok(0) => {
                    conn.closing = true;
                    break;
                }
                Ok(n) => {
                    conn.last_active = Instant::now();
                    conn.input.extend_from_slice(&buf[..n]);
                    self.process(s, c, conn);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        conn.flush().is_ok()
    }

    /// Closes a finished or dead connection, or updates its interest.
    fn after_io(&mut self, s: usize, c: usize, mut conn: Conn, alive: bool, ops: &mut EventOps) {
        if !alive || conn.finished() {
            self.put_conn(s, c, conn);
            self.close_conn(s, c, ops);
            return;
        }
        let wanted = conn.wanted();
        if wanted != conn.interest
            && ops
                .modify(Events::with_data(&conn.stream, conn_tag(s, c), wanted))
                .is_ok()
        {
            conn.interest = wanted;
        }
        self.put_conn(s, c, conn);
    }

    fn on_conn(&mut self, s: usize, c: usize, set: EventSet, ops: &mut EventOps) {
        let Some(mut conn) = self.take_conn(s, c) else {
            return;
        };
        let readable = set.intersects(EventSet::IN | EventSet::OUT);
        let mut alive = readable && self.serve(s, c, &mut conn);
        if set.intersects(EventSet::ERROR | EventSet::HANG_UP) && !set.contains(EventSet::IN) {
            alive = false;
        }
        self.after_io(s, c, conn, alive, ops);
    }

    /// Answers to `InstanceStart`s (and starts of created VMs): the VM's
    /// slot learns how the start ended, and the connection, if it is still
    /// there, gets the response.
    fn on_answers(&mut self, ops: &mut EventOps) {
        for (ticket, answer) in self.completions.take() {
            let Some((s, name, c)) = self.waiting.remove(&ticket) else {
                continue;
            };
            let response = match self.endpoints.get_mut(s).and_then(Option::as_mut) {
                Some(ep) if ep.slot.name == name => ep.slot.started(answer),
                _ => continue,
            };
            let Some(mut conn) = self.take_conn(s, c) else {
                continue;
            };
            if conn.waiting.is_none_or(|(t, _)| t != ticket) {
                // The connection closed; this one is another client's.
                self.put_conn(s, c, conn);
                continue;
            }
            let keep_alive = conn.waiting.take().is_some_and(|(_, k)| k);
            conn.output.extend(response.to_bytes(keep_alive));
            conn.closing |= !keep_alive;
            self.process(s, c, &mut conn);
            let alive = conn.flush().is_ok();
            self.after_io(s, c, conn, alive, ops);
        }
    }

    /// Every second: idle connections closed, metrics written when due,
    /// and the sockets of VMs that have ended closed (as Firecracker's
    /// process ends with its VM).
    fn on_tick(&mut self, ops: &mut EventOps) {
        let _ = self.tick.wait();
        let now = Instant::now();
        let mut idle = Vec::new();
        let mut wanted = false;
        for (s, ep) in self.endpoints.iter().enumerate() {
            let Some(ep) = ep else { continue };
            wanted |= ep.slot.phase() == Phase::Attached || ep.slot.has_metrics();
            for (c, conn) in ep.conns.iter().enumerate() {
                if conn.as_ref().is_some_and(|conn| {
                    conn.waiting.is_none() && now.duration_since(conn.last_active) >= IDLE_TIMEOUT
                }) {
                    idle.push((s, c));
                }
            }
        }
        for (s, c) in idle {
            self.close_conn(s, c, ops);
        }
        if !wanted {
            return;
        }
        // One statistics document for every socket this tick.
        let doc = lock(&self.target).stats_json();
        let mut ended = Vec::new();
        for (s, ep) in self.endpoints.iter_mut().enumerate() {
            let Some(ep) = ep else { continue };
            let gone = ep.slot.phase() == Phase::Attached
                && !matches!(
                    entry_in(&doc, &ep.slot.name)
                        .as_ref()
                        .and_then(|v| v["state"].as_str()),
                    Some("building" | "created" | "running" | "paused" | "stopping")
                );
            if ep.slot.has_metrics()
                && (gone || now.duration_since(ep.slot.last_flush) >= METRICS_PERIOD)
            {
                ep.slot.flush_metrics(&doc);
            }
            if gone {
                ended.push(s);
            }
        }
        for s in ended {
            self.remove_endpoint(s, ops);
        }
    }
}

impl<C: Control + Send> MutEventSubscriber for FcApiServer<C> {
    fn init(&mut self, ops: &mut EventOps) {
        for ev in [
            Events::with_data(&self.tick, TAG_TICK, EventSet::IN),
            Events::with_data(self.completions.eventfd(), TAG_ANSWERS, EventSet::IN),
            Events::with_data(self.registry.eventfd(), TAG_REGISTRY, EventSet::IN),
        ] {
            if let Err(e) = ops.add(ev) {
                log::error!("Firecracker API: cannot watch an fd: {e}");
            }
        }
        self.on_registry(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TAG_TICK => self.on_tick(ops),
            TAG_ANSWERS => self.on_answers(ops),
            TAG_REGISTRY => self.on_registry(ops),
            tag if tag >= TAG_BASE => {
                let s = ((tag - TAG_BASE) / STRIDE) as usize;
                match ((tag - TAG_BASE) % STRIDE) as usize {
                    0 => self.accept(s, ops),
                    k => self.on_conn(s, k - 1, events.event_set(), ops),
                }
            }
            other => log::warn!("Firecracker API: unexpected event tag {other}"),
        }
    }
}
