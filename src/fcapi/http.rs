//! HTTP/1.1 framing for the Firecracker API: request heads parsed by
//! `httparse` (a bounded number of headers, a bounded head), bodies by
//! `Content-Length` (at most [`MAX_BODY`] bytes, Firecracker's default
//! payload limit), and responses written as Firecracker's server writes
//! them. Nothing here does I/O: the server feeds it the bytes it read.

use serde_json::json;

/// Longest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 32;
/// Largest body (Firecracker's `HTTP_MAX_PAYLOAD_SIZE`, 50 KiB).
pub const MAX_BODY: usize = 51_200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path, without a query string.
    pub path: String,
    /// The body; `None` when there is none (or it is empty).
    pub body: Option<Vec<u8>>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// A response: a status and, for most, a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
}

impl Response {
    pub fn no_content() -> Response {
        Response {
            status: 204,
            body: None,
        }
    }

    pub fn json(value: &serde_json::Value) -> Response {
        Response {
            status: 200,
            body: Some(value.to_string()),
        }
    }

    /// Firecracker's error body: `{"fault_message": "..."}`.
    pub fn fault(status: u16, message: impl Into<String>) -> Response {
        Response {
            status,
            body: Some(json!({ "fault_message": message.into() }).to_string()),
        }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nServer: Hearth API\r\nConnection: {connection}\r\n",
            self.status,
            reason(self.status)
        );
        match &self.body {
            Some(body) => {
                head.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                ));
                let mut bytes = head.into_bytes();
                bytes.extend_from_slice(body.as_bytes());
                bytes
            }
            None => {
                if self.status != 204 {
                    head.push_str("Content-Length: 0\r\n");
                }
                head.push_str("\r\n");
                head.into_bytes()
            }
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the bytes received so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet; `expects_continue` when the head is
    /// complete and asks for `100 Continue` before the body.
    Incomplete { expects_continue: bool },
    /// A request, and how many bytes it took.
    Complete(Request, usize),
    /// A request that cannot be served: answer this and close.
    Bad(Response),
}

fn bad(status: u16, message: impl Into<String>) -> Parsed {
    Parsed::Bad(Response::fault(status, message))
}

/// The head's facts beyond method and path.
struct Head {
    content_length: usize,
    keep_alive: bool,
    expects_continue: bool,
}

fn header_facts(req: &httparse::Request<'_, '_>) -> Result<Head, Parsed> {
    let http11 = req.version == Some(1);
    let mut head = Head {
        content_length: 0,
        keep_alive: http11,
        expects_continue: false,
    };
    let mut length_seen = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| bad(400, format!("invalid Content-Length {value:?}")))?;
            if length_seen && n != head.content_length {
                return Err(bad(400, "conflicting Content-Length headers"));
            }
            length_seen = true;
            head.content_length = n;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad(
                501,
                format!("Transfer-Encoding {value:?} is not supported; send a Content-Length"),
            ));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                head.keep_alive = false;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                head.keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            head.expects_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    if head.content_length > MAX_BODY {
        return Err(bad(
            413,
            format!(
                "Request payload with size {} is larger than the limit of {MAX_BODY} allowed by \
                 server.",
                head.content_length
            ),
        ));
    }
    Ok(head)
}

/// Looks for one request at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return bad(
                431,
                format!("the request head is longer than {MAX_HEAD} bytes"),
            )
        }
        Ok(httparse::Status::Partial) => {
            return Parsed::Incomplete {
                expects_continue: false,
            }
        }
        Err(httparse::Error::TooManyHeaders) => {
            return bad(431, format!("more than {MAX_HEADERS} headers"))
        }
        Err(e) => return bad(400, format!("malformed HTTP request: {e}")),
    };
    if head_len > MAX_HEAD {
        return bad(
            431,
            format!("the request head is longer than {MAX_HEAD} bytes"),
        );
    }
    let head = match header_facts(&req) {
        Ok(h) => h,
        Err(p) => return p,
    };
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        other => return bad(400, format!("Invalid HTTP method {other:?}.")),
    };
    let target = req.path.unwrap_or("/");
    let path = target.split('?').next().unwrap_or(target).to_string();
    let total = head_len + head.content_length;
    if buf.len() < total {
        return Parsed::Incomplete {
            expects_continue: head.expects_continue,
        };
    }
    let body = (head.content_length > 0).then(|| buf[head_len..total].to_vec());
    Parsed::Complete(
        Request {
            method,
            path,
            body,
            keep_alive: head.keep_alive,
        },
        total,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(text: &str) -> (Request, usize) {
        match parse(text.as_bytes()) {
            Parsed::Complete(r, n) => (r, n),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn curl_s_put_parses_with_its_body() {
        let text = "PUT /boot-source HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/7.88.1\r\n\
                    Accept: application/json\r\nContent-Type: application/json\r\n\
                    Content-Length: 19\r\n\r\n{\"boot_args\": \"x\"}\nGET / HTTP/1.1\r\n";
        let (r, n) = complete(text);
        assert_eq!(r.method, Method::Put);
        assert_eq!(r.path, "/boot-source");
        assert_eq!(r.body.as_deref(), Some(&b"{\"boot_args\": \"x\"}\n"[..]));
        assert!(r.keep_alive);
        assert_eq!(&text[n..], "GET / HTTP/1.1\r\n");
    }

    #[test]
    fn a_request_arrives_in_pieces() {
        let text = "PATCH /vm HTTP/1.1\r\nContent-Length: 19\r\nExpect: 100-continue\r\n\r\n";
        assert_eq!(
            parse(b"PATCH /vm HTT"),
            Parsed::Incomplete {
                expects_continue: false
            }
        );
        assert_eq!(
            parse(text.as_bytes()),
            Parsed::Incomplete {
                expects_continue: true
            }
        );
        let whole = format!("{text}{{\"state\": \"Paused\"}}");
        let (r, n) = complete(&whole);
        assert_eq!(n, whole.len());
        assert_eq!(r.body.map(|b| b.len()), Some(19));
    }

    #[test]
    fn limits_and_malformed_requests_are_refused() {
        let fault = |p: Parsed| match p {
            Parsed::Bad(r) => (r.status, r.body.unwrap_or_default()),
            other => panic!("{other:?}"),
        };
        let big = format!(
            "PUT /drives/x HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let (status, body) = fault(parse(big.as_bytes()));
        assert_eq!(status, 413);
        assert!(body.contains("larger than the limit of 51200"), "{body}");
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(fault(parse(text.as_bytes())).0, 431);
        let long = format!("GET /{} HTTP/1.1", "a".repeat(MAX_HEAD + 10));
        assert_eq!(fault(parse(long.as_bytes())).0, 431);
        assert_eq!(fault(parse(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")).0, 400);
        let chunked = b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(fault(parse(chunked)).0, 501);
        assert_eq!(fault(parse(b"POST / HTTP/1.1\r\n\r\n")).0, 400);
        let conflict = b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(fault(parse(conflict)).0, 400);
    }

    #[test]
    fn connection_close_and_http_1_0() {
        let (r, _) = complete("GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete("GET /?x=1 HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
        assert_eq!(r.path, "/");
    }

    #[test]
    fn responses_are_firecrackers() {
        let text = String::from_utf8(Response::no_content().to_bytes(true)).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(text.ends_with("\r\n\r\n") && !text.contains("Content-Length"));
        let fault = Response::fault(400, "bad \"x\"").to_bytes(false);
        let text = String::from_utf8(fault).unwrap();
        assert!(text.contains("Connection: close\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(body, r#"{"fault_message":"bad \"x\""}"#);
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
