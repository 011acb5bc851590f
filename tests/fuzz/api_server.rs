//! Target `api_server`: the control socket's line handling, through a
//! real socket to a real `ApiServer` on its own event loop (the monitor
//! behind it a fake): the client sends any bytes in any pieces (requests,
//! broken ones, empty lines, CRLF, lines near and over the 64 KiB limit),
//! closes its side and reads every reply.
//!
//! What must hold:
//! - one reply per non-empty line, in order, and none for an empty one; a
//!   last line without its newline is answered too;
//! - a line the parser refuses is answered `invalid request: ...`, a
//!   `list` with the VMs, every other line with a well-formed reply;
//! - no reply is longer than `MAX_REPLY` (a reply over it becomes an error);
//! - a line over `MAX_REQUEST` is answered with an error and the server
//!   closes the connection after the replies before it;
//! - the server closes the connection once it has answered everything.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arbitrary::Arbitrary;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use hearth::api::protocol::Request;
use hearth::api::server::{MAX_REPLY, MAX_REQUEST};
use hearth::api::{ApiServer, Listener};
use hearth::config::{own_uid, ApiSpec};
use serde_json::Value;

use crate::api_fake::{Fake, FakeVm, Outcome, Req};
use crate::support::{self, List};

/// A line certainly over the limit: the server reads 4 KiB at a time,
/// so one this long has a read that ends inside it past `MAX_REQUEST`.
const SURELY_LONG: usize = MAX_REQUEST + 4096 + 1;

/// What the client sends, piece by piece.
#[derive(Debug, Clone, Arbitrary)]
pub enum Piece {
    /// A request and its newline.
    Line(Req),
    /// A request, no newline.
    Req(Req),
    Raw(List<u8, 48>),
    Newline,
    CrLf,
    /// Many of one byte: `n % 8 + 1` KiB; from 224, 60 to 63 KiB (near
    /// the limit); from 250, 70 KiB (over it).
    Long(u8, u8),
}

#[derive(Debug, Clone, Arbitrary)]
pub struct Case {
    pub outcome: Outcome,
    pub pieces: List<Piece, 16>,
}

static TALLY: support::Tally<4> =
    support::Tally::new(["cases", "replies", "refused lines", "too long"]);

/// A control socket served on its own thread.
struct Server {
    dir: PathBuf,
    socket: PathBuf,
    fake: Arc<Mutex<Fake>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        Self::start_in("target")
    }

    /// A server whose socket is in a scratch directory named after `tag`.
    fn start_in(tag: &str) -> Server {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("hearth-fuzz-api-{pid}-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let socket = dir.join("api.sock");
        let listener = Listener::bind(&ApiSpec::owner_only(socket.clone(), own_uid()))
            .expect("the control socket binds");
        let vms =
            [(true, 2, 0), (false, 1, 0), (true, 4, u8::MAX)].map(|(running, vcpus, notes)| {
                FakeVm {
                    running,
                    vcpus,
                    notes,
                }
            });
        let fake = Arc::new(Mutex::new(Fake::new(&vms, Outcome::Later(true))));
        let server = ApiServer::new(listener, fake.clone()).expect("a server");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut em = EventManager::<Box<dyn MutEventSubscriber + Send>>::new()
                .expect("an event manager");
            em.add_subscriber(Box::new(server));
            while !stopping.load(Ordering::Acquire) {
                em.run_with_timeout(50).expect("the event loop runs");
            }
        });
        Server {
            dir,
            socket,
            fake,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bytes_of(pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Line(r) => {
                out.extend_from_slice(r.text().as_bytes());
                out.push(b'\n');
            }
            Piece::Req(r) => out.extend_from_slice(r.text().as_bytes()),
            Piece::Raw(b) => out.extend_from_slice(b),
            Piece::Newline => out.push(b'\n'),
            Piece::CrLf => out.extend_from_slice(b"\r\n"),
            Piece::Long(byte, n) => {
                let kib = match n {
                    0..224 => usize::from(n % 8) + 1,
                    224..250 => 60 + usize::from(n % 4),
                    250.. => 70,
                };
                out.extend(std::iter::repeat_n(*byte, kib << 10));
            }
        }
    }
    out
}

/// The line without its line ending, as the server trims it.
fn trim(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r' | b'\n'] = line {
        line = rest;
    }
    line
}

/// What the server must answer: the non-empty lines in order, and
/// whether a line over the limit ends the connection; `None` when a line
/// is of a length whose fate depends on how the reads fall.
fn expected(sent: &[u8]) -> Option<(Vec<&[u8]>, bool)> {
    let mut lines = Vec::new();
    for segment in sent.split_inclusive(|b| *b == b'\n') {
        let complete = segment.ends_with(b"\n");
        let len = segment.len() - usize::from(complete);
        if len > MAX_REQUEST && !complete || len >= SURELY_LONG {
            return Some((lines, true));
        }
        if len > MAX_REQUEST {
            return None;
        }
        if !trim(segment).is_empty() {
            lines.push(trim(segment));
        }
    }
    Some((lines, false))
}

/// Checks one reply line against the request line it answers.
fn check_reply(reply: &[u8], line: Option<&[u8]>) {
    assert!(reply.len() <= MAX_REPLY, "a reply of {} bytes", reply.len());
    let v: Value = serde_json::from_slice(reply).expect("a reply is JSON");
    let ok = v["ok"].as_bool().expect("a reply says ok or not");
    let error = v["error"].as_str();
    assert!(ok || error.is_some_and(|e| !e.is_empty()), "{v}");
    let Some(line) = line else {
        return;
    };
    match Request::parse(line) {
        Err(_) => {
            TALLY.add("refused lines");
            assert!(
                error.is_some_and(|e| e.starts_with("invalid request: ")),
                "{v}"
            );
        }
        Ok(Request::List {}) => assert_eq!(v["result"]["vms"].as_array().map(Vec::len), Some(3)),
        Ok(_) => {}
    }
}

fn run_on(server: &Server, case: &Case) {
    TALLY.add("cases");
    server
        .fake
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .outcome = case.outcome;
    let sent = bytes_of(&case.pieces);
    let mut s = UnixStream::connect(&server.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("a write timeout");
    // The server may close mid-way (a line over the limit): stop writing
    // then. It must not stop reading while the client still writes (its
    // replies to 4 KiB of requests are far below what stops it).
    let written = s
        .write_all(&sent)
        .and_then(|_| s.shutdown(std::net::Shutdown::Write));
    if let Err(e) = written {
        let timed_out = matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
        assert!(
            !timed_out,
            "the server stopped reading a client that writes"
        );
    }
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading the replies: {e} (the server never closed?)"),
    }
    let replies: Vec<&[u8]> = got.split_inclusive(|b| *b == b'\n').collect();
    assert!(got.is_empty() || got.ends_with(b"\n"), "a reply cut short");
    TALLY.add_n("replies", replies.len() as u64);
    let Some((lines, too_long)) = expected(&sent) else {
        return replies.iter().for_each(|r| check_reply(r, None));
    };
    assert_eq!(
        replies.len(),
        lines.len() + usize::from(too_long),
        "replies to {lines:?}"
    );
    for (reply, line) in replies.iter().zip(&lines) {
        check_reply(reply, Some(line));
    }
    if too_long {
        TALLY.add("too long");
        let last: Value = serde_json::from_slice(replies[lines.len()]).expect("JSON");
        let error = last["error"].as_str().unwrap_or_default();
        assert!(error.starts_with("request too long"), "{last}");
    }
}

#[test]
fn api_server() {
    let _heap = support::shared();
    // One server for every case (a failing case leaves nothing behind
    // that the next one could trip on: each has its own connection).
    let server = Server::start();
    let server = std::panic::AssertUnwindSafe(&server);
    bolero::check!()
        .with_test_time(support::budget(6))
        .with_generator(support::input())
        .for_each(|bytes| support::decode(bytes, |case| run_on(*server, case)));
    TALLY.report("api_server");
}

/// Fixed inputs: the edges of the line protocol.
mod regressions {
    use super::*;

    fn case(pieces: Vec<Piece>) -> Case {
        Case {
            outcome: Outcome::Later(true),
            pieces: pieces.into(),
        }
    }

    #[test]
    fn lines_at_and_over_the_limit_empty_lines_and_a_last_line_without_newline() {
        let _heap = support::shared();
        let server = Server::start_in("regressions");
        let raw = |b: &[u8]| Piece::Raw(b.to_vec().into());
        // 63 KiB is answered; 70 KiB ends the connection after the replies
        // before it.
        run_on(
            &server,
            &case(vec![Piece::Long(b'x', 227), Piece::Newline, raw(b"{}")]),
        );
        run_on(
            &server,
            &case(vec![raw(b"{}\n"), Piece::Long(b'x', 250), Piece::Newline]),
        );
        run_on(
            &server,
            &case(vec![
                Piece::CrLf,
                Piece::Newline,
                raw(b"\r\r\n"),
                raw(b"{\"op\":\"list\"}"),
            ]),
        );
    }
}
