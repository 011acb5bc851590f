//! Target `fcapi`: a Firecracker API socket's requests, as its server
//! handles them (no socket: the bytes a connection reads, cut into the
//! pieces it reads them in), through `fcapi::http::parse`, `routes::route`
//! and one VM's `Slot`, with the control socket's fake monitor behind it
//! ([`crate::api_fake`]). The requests are those of [`crate::fcapi_gen`]:
//! curl's for every endpoint, broken ones, raw bytes.
//!
//! What must hold:
//! - parsing never panics; it takes the same requests (and refuses the
//!   same stream) however the bytes are cut; a request taken uses up at
//!   least one byte; while it waits for more, the buffer holds less than a
//!   head and a body at their limits;
//! - a well-formed request is read as written: method, path without its
//!   query, body, whether the connection stays open;
//! - every answer has a status Firecracker uses with its reason; a status
//!   of 400 or more has exactly `{"fault_message": "..."}` (not empty) as
//!   its body, 200 a JSON body, 204 none; its bytes carry its
//!   `Content-Length`; no body is longer than twice what the client sent
//!   and 4 KiB (the configuration it echoes comes from the client);
//! - a refused configuration request leaves `GET /vm/config` as it was;
//!   drives and network interfaces never outnumber the 8 virtio slots.

use std::path::Component;

use arbitrary::Arbitrary;
use hearth::api::Completions;
use hearth::fcapi::http::{self, Parsed, Request, Response, MAX_BODY, MAX_HEAD};
use hearth::fcapi::routes::{self, Action};
use hearth::fcapi::slot::Reply;
use hearth::fcapi::Slot;
use serde_json::{Map, Value};

use crate::api_fake::{Fake, FakeVm, Outcome};
use crate::fcapi_gen::{scratch_dir, HttpReq};
use crate::support::{self, List};

#[derive(Debug, Clone, Arbitrary)]
pub struct Case {
    pub reqs: List<HttpReq, 10>,
    /// Where the stream is cut into the pieces the server reads.
    pub cuts: List<u16, 6>,
    pub vms: List<FakeVm, 2>,
    pub outcome: Outcome,
}

static TALLY: support::Tally<6> = support::Tally::new([
    "cases",
    "requests",
    "refused streams",
    "answered 2xx",
    "answered 4xx-5xx",
    "started",
]);

/// What the server makes of the bytes: requests, and whether it refused
/// the rest (a refusal's status may depend on how much it had read).
#[derive(Debug, PartialEq)]
enum Event {
    Req(Request),
    Refused,
}

/// The server's reading of `stream`, cut at `cuts`; the refusal, if any.
fn serve(stream: &[u8], cuts: &[u16]) -> (Vec<Event>, Option<Response>) {
    let mut ends: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) % (stream.len() + 1))
        .collect();
    ends.push(stream.len());
    ends.sort_unstable();
    let (mut buf, mut at, mut events) = (Vec::new(), 0, Vec::new());
    for end in ends {
        buf.extend_from_slice(&stream[at..end]);
        at = end;
        loop {
            match http::parse(&buf) {
                Parsed::Complete(req, n) => {
                    assert!(n > 0 && n <= buf.len(), "took {n} of {} bytes", buf.len());
                    events.push(Event::Req(req));
                    buf.drain(..n);
                }
                Parsed::Bad(r) => {
                    events.push(Event::Refused);
                    return (events, Some(r));
                }
                Parsed::Incomplete { .. } => {
                    assert!(buf.len() < MAX_HEAD + MAX_BODY, "{} bytes held", buf.len());
                    break;
                }
            }
        }
    }
    (events, None)
}

/// What every answer must be; `sent` is how many bytes the client sent.
fn check_response(r: &Response, sent: usize) {
    const KNOWN: [u16; 11] = [200, 204, 400, 404, 405, 408, 413, 431, 500, 501, 503];
    assert!(KNOWN.contains(&r.status), "status {}", r.status);
    let body = r.body.as_deref();
    match r.status {
        204 => assert_eq!(body, None, "a 204 with a body"),
        200 => {
            let text = body.expect("a 200 has a body");
            serde_json::from_str::<Value>(text).expect("a 200's body is JSON");
        }
        _ => {
            let text = body.expect("an error has a body");
            let v: Value = serde_json::from_str(text).expect("an error's body is JSON");
            let fault = v.as_object().filter(|o| o.len() == 1);
            let message = fault.and_then(|o| o.get("fault_message")?.as_str());
            assert!(message.is_some_and(|m| !m.is_empty()), "error body {text}");
        }
    }
    let len = body.map_or(0, str::len);
    assert!(
        len <= 2 * sent + 4096,
        "a body of {len} bytes for {sent} sent"
    );
    let bytes = String::from_utf8(r.to_bytes(true)).expect("a response is text");
    assert!(
        bytes.starts_with(&format!("HTTP/1.1 {} ", r.status)),
        "{bytes}"
    );
    if let Some(b) = body {
        assert!(bytes.contains(&format!("Content-Length: {}\r\n", b.len())));
        assert!(bytes.ends_with(&format!("\r\n\r\n{b}")));
    }
}

/// Whether an action may be carried out here: metrics files only in the
/// scratch directory (the fuzzer writes no file elsewhere).
fn harmless(action: &Action) -> bool {
    match action {
        Action::PutMetrics(m) => {
            m.metrics_path.starts_with(scratch_dir())
                && !m
                    .metrics_path
                    .components()
                    .any(|c| c == Component::ParentDir)
        }
        _ => true,
    }
}

fn vm_config(
    slot: &mut Slot,
    fake: &mut Fake,
    waiter: &mut dyn FnMut() -> hearth::api::Waiter,
) -> Option<String> {
    match slot.handle(Action::GetVmConfig, fake, waiter) {
        Reply::Now(r) => r.body,
        Reply::Later(_) => panic!("GET /vm/config answered later"),
    }
}

/// The slot's answer to `req`.
fn answer(case: &Case, slot: &mut Slot, fake: &mut Fake, req: &Request, sent: usize) {
    let action = match routes::route(req) {
        Ok(a) => a,
        Err(r) => return check_response(&r, sent),
    };
    if !harmless(&action) {
        return;
    }
    let completions = Completions::new().expect("an eventfd");
    let mut waiter = || completions.waiter();
    let configures = matches!(
        action,
        Action::PutSection(..) | Action::PatchMachineConfig(_) | Action::PutEntry(..)
    );
    let before = configures.then(|| vm_config(slot, fake, &mut waiter));
    let response = match slot.handle(action, fake, &mut waiter) {
        Reply::Now(r) => r,
        Reply::Later(ticket) => {
            TALLY.add("started");
            let done = completions.take();
            let answer = done.into_iter().find(|(t, _)| *t == ticket);
            let (_, answer) = answer.expect("a later answer was completed");
            assert!(matches!(case.outcome, Outcome::Later(_)));
            slot.started(answer)
        }
    };
    let tally = if response.status >= 400 {
        "answered 4xx-5xx"
    } else {
        "answered 2xx"
    };
    TALLY.add(tally);
    check_response(&response, sent);
    let Some(before) = before else {
        return;
    };
    let after = vm_config(slot, fake, &mut waiter);
    if response.status >= 400 {
        assert_eq!(before, after, "a refused {} changed the config", req.path);
    }
    let config: Value = serde_json::from_str(&after.unwrap_or_default()).expect("JSON");
    let entries = |key: &str| config[key].as_array().map_or(0, Vec::len);
    let devices = entries("drives") + entries("network-interfaces");
    assert!(devices <= 8, "{devices} drives and interfaces for 8 slots");
}

/// Runs one case; panics when a property fails.
pub fn run(case: &Case) {
    TALLY.add("cases");
    let dir = scratch_dir();
    for m in ["m0", "m1"] {
        let _ = std::fs::remove_file(dir.join(m));
    }
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    let mut plain = true;
    for r in case.reqs.iter() {
        stream.extend_from_slice(&r.bytes());
        match r.expected() {
            Some(e) if plain => expected.push(e),
            _ => plain = false,
        }
    }
    let (events, refusal) = serve(&stream, &[]);
    let (pieces, _) = serve(&stream, &case.cuts);
    assert_eq!(events, pieces, "the same stream, cut elsewhere");
    for (e, (method, path, body, keep_alive)) in events.iter().zip(&expected) {
        let Event::Req(r) = e else {
            panic!("a well-formed request refused: {method} {path}");
        };
        assert_eq!(r.method.name(), *method);
        assert_eq!(&r.path, path);
        assert_eq!(r.body.as_deref().unwrap_or(&[]), &body[..]);
        assert_eq!(r.keep_alive, *keep_alive, "keep-alive of {method} {path}");
    }
    if let Some(r) = &refusal {
        TALLY.add("refused streams");
        assert!(r.status >= 400);
        check_response(r, stream.len());
    }
    let mut fake = Fake::new(&case.vms, case.outcome);
    let mut slot = Slot::new("fc0", "fc0", dir, Map::new());
    for e in &events {
        if let Event::Req(req) = e {
            TALLY.add("requests");
            answer(case, &mut slot, &mut fake, req, stream.len());
        }
    }
}

#[test]
fn fcapi() {
    let _heap = support::shared();
    bolero::check!()
        .with_test_time(support::budget(4))
        .with_generator(support::input())
        .for_each(|bytes| support::decode(bytes, run));
    TALLY.report("fcapi");
}

/// Fixed inputs: a VM configured and started as the getting-started
/// guide does, and a stream cut everywhere.
mod regressions {
    use super::*;
    use crate::fcapi_gen::{Body, Length};

    pub fn req(method: u8, path: u8, kind: u8, a: u8, b: u16) -> HttpReq {
        HttpReq {
            method,
            path,
            id: 0,
            query: false,
            body: Body {
                kind,
                a,
                b,
                raw: vec![].into(),
            },
            length: Length(0),
            version: 0,
            connection: None,
            expect: false,
            chunked: 0,
            headers: 0,
            wild: 0,
            raw: vec![].into(),
        }
    }

    /// Before the fix, every new id was kept: the configuration grew with
    /// each request.
    #[test]
    fn more_drives_and_interfaces_than_slots() {
        let _heap = support::shared();
        let reqs = (0..10u8).flat_map(|i| {
            let mut drive = req(1, 5, 0, 1, 0);
            let mut tap = req(1, 6, 0, 0, 0);
            (drive.id, tap.id) = (100 + i, 110 + i);
            [drive, tap]
        });
        run(&Case {
            reqs: reqs.collect::<Vec<_>>().into(),
            cuts: vec![].into(),
            vms: vec![].into(),
            outcome: Outcome::Refused,
        });
    }

    #[test]
    fn configured_started_and_paused() {
        let _heap = support::shared();
        let (get, put, patch) = (0, 1, 2);
        let reqs = vec![
            req(put, 3, 0, 2, 16),
            req(put, 4, 0, 0, 0),
            req(put, 5, 0, 0, 0),
            req(put, 6, 0, 0, 1),
            req(get, 2, 0, 0, 0),
            req(put, 13, 0, 0, 0),
            req(get, 0, 0, 0, 0),
            req(patch, 14, 0, 0, 0),
            req(put, 4, 0, 0, 0),
        ];
        run(&Case {
            reqs: reqs.into(),
            cuts: vec![1, 17, 100, 101, 2000, 2001].into(),
            vms: vec![].into(),
            outcome: Outcome::Later(true),
        });
    }
}
