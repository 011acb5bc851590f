//! What the `fcapi` target sends a Firecracker API socket: HTTP requests
//! as clients write them (curl's, with bodies for each endpoint of
//! docs/firecracker.md), broken ones (wrong or conflicting lengths,
//! chunked bodies, too many headers, bad versions and methods), and raw
//! bytes; files the bodies name lie in a scratch directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use serde_json::{json, Value};

use crate::support::List;

/// The paths a client asks for (`{}`: an id).
const PATHS: [&str; 24] = [
    "/",
    "/version",
    "/vm/config",
    "/machine-config",
    "/boot-source",
    "/drives/{}",
    "/network-interfaces/{}",
    "/vsock",
    "/balloon",
    "/balloon/statistics",
    "/balloon/hinting",
    "/logger",
    "/metrics",
    "/actions",
    "/vm",
    "/snapshot/create",
    "/mmds",
    "/entropy",
    "/cpu-config",
    "/serial",
    "/pmem/{}",
    "/hotplug/memory",
    "/nowhere/{}",
    "",
];

const METHODS: [&str; 7] = ["GET", "PUT", "PATCH", "DELETE", "POST", "get", "PUT "];

/// A scratch directory of this process, with a file to use as a kernel
/// or a disk.
pub fn scratch_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fuzz-fcapi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        std::fs::write(dir.join("disk"), vec![0u8; 4096]).expect("a disk file");
        std::fs::write(dir.join("vmlinux"), bzimage()).expect("a kernel file");
        dir
    })
}

/// A file the kernel probe takes for a 64-bit bzImage (boot protocol
/// 2.12, loaded at 1 MiB), with nothing to run.
fn bzimage() -> Vec<u8> {
    let mut out = vec![0u8; 8 * 512];
    out[0x1f1] = 4; // setup_sects
    out[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    out[0x202..0x206].copy_from_slice(b"HdrS");
    out[0x206..0x208].copy_from_slice(&0x020cu16.to_le_bytes());
    out[0x211] = 1; // loadflags: LOADED_HIGH
    out[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    out[0x236] = 1; // xloadflags: XLF_KERNEL_64
    out[0x258..0x260].copy_from_slice(&0x10_0000u64.to_le_bytes()); // pref_address
    out[0x260..0x264].copy_from_slice(&0x1_0000u32.to_le_bytes()); // init_size
    out
}

/// A request body.
#[derive(Debug, Clone, Arbitrary)]
pub struct Body {
    /// 0-159 the body the endpoint takes (none for GET and DELETE),
    /// 160-199 none, 200-219 valid JSON of another shape, 220-239 `raw`,
    /// 240 on many bytes (`b * 64`, up to past the 50 KiB limit).
    pub kind: u8,
    pub a: u8,
    pub b: u16,
    pub raw: List<u8, 48>,
}

/// How `Content-Length` is given: mostly right (230-234 twice); from 235
/// on missing, off by `n % 8 + 1` either way, twice and not the same,
/// garbage.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Length(pub u8);

/// One request.
#[derive(Debug, Clone, Arbitrary)]
pub struct HttpReq {
    /// 0-239 GET, PUT, PATCH or DELETE (`% 4`); then any of [`METHODS`].
    pub method: u8,
    pub path: u8,
    /// 0-199 a good id (from 100 on, one of 16 more); 200-249 an empty
    /// one; else one with a bad byte.
    pub id: u8,
    pub query: bool,
    pub body: Body,
    pub length: Length,
    /// 0-223 HTTP/1.1; then 1.0, from 248 none or garbage.
    pub version: u8,
    /// `Connection: close` / `keep-alive`.
    pub connection: Option<bool>,
    pub expect: bool,
    /// From 250 on, `Transfer-Encoding: chunked`.
    pub chunked: u8,
    /// Extra headers: `% 4`; from 248 on `% 40` (past the limit of 32).
    pub headers: u8,
    /// From 240 on, `raw` instead of a request.
    pub wild: u8,
    pub raw: List<u8, 96>,
}

fn id(n: u8) -> String {
    match n {
        0..100 => ["rootfs", "eth0", "data_1", "x"][usize::from(n % 4)].to_string(),
        100..200 => format!("d{}", n % 16),
        200..250 => String::new(),
        _ => "bad-id".to_string(),
    }
}

/// The body that fits `path` (a first segment), with values from `a`, `b`.
fn fit(path: &str, id: &str, a: u8, b: u8) -> Value {
    let dir = scratch_dir();
    let file = |n: u8, name: &str| match n % 3 {
        0 => json!(dir.join(name)),
        1 => json!("/absent/file"),
        _ => json!(name),
    };
    match path {
        "machine-config" => {
            json!({"vcpu_count": a % 5, "mem_size_mib": u32::from(b) * 8, "smt": a > 200})
        }
        "boot-source" => {
            json!({"kernel_image_path": file(a, "vmlinux"), "boot_args": "console=ttyS0"})
        }
        "drives" => json!({
            "drive_id": if a < 240 { id } else { "other" },
            "path_on_host": file(b, "disk"),
            "is_root_device": a % 2 == 0,
            "is_read_only": b % 2 == 0,
        }),
        "network-interfaces" => json!({
            "iface_id": if a < 240 { id } else { "other" },
            "host_dev_name": format!("tap{}", b % 3),
        }),
        "vsock" => json!({"guest_cid": a, "uds_path": dir.join(format!("v{}.sock", b % 2))}),
        "balloon" => json!({"amount_mib": a, "deflate_on_oom": b % 2 == 0}),
        "logger" => {
            let level = ["Debug", "Info", "Bogus"][usize::from(a % 3)];
            json!({ "level": level })
        }
        "metrics" => json!({"metrics_path": dir.join(format!("m{}", a % 2))}),
        "actions" => {
            let kinds = ["InstanceStart", "FlushMetrics", "SendCtrlAltDel", "Reboot"];
            json!({"action_type": kinds[usize::from(a % 4)]})
        }
        "vm" => {
            let state = ["Paused", "Resumed", "Running"][usize::from(a % 3)];
            json!({ "state": state })
        }
        _ => json!({"a": a, "b": b}),
    }
}

fn other(n: u8) -> Value {
    match n % 6 {
        0 => json!(null),
        1 => json!([1, 2]),
        2 => json!("text"),
        3 => json!({}),
        4 => json!({"unknown": true}),
        _ => json!(n),
    }
}

impl HttpReq {
    /// The request target (path and query) and its first segment.
    fn target(&self) -> (String, &'static str) {
        let template = PATHS[usize::from(self.path) % PATHS.len()];
        let mut path = template.replace("{}", &id(self.id));
        if self.query {
            path.push_str("?x=1");
        }
        if path.is_empty() {
            path.push('*');
        }
        let first = template.trim_start_matches('/').split('/').next();
        (path, first.unwrap_or(""))
    }

    fn method(&self) -> &'static str {
        match self.method {
            0..240 => METHODS[usize::from(self.method % 4)],
            _ => METHODS[usize::from(self.method) % METHODS.len()],
        }
    }

    fn extra_headers(&self) -> u8 {
        match self.headers {
            0..248 => self.headers % 4,
            _ => self.headers % 40,
        }
    }

    fn body_bytes(&self, first: &str) -> Vec<u8> {
        let b = &self.body;
        let bodiless = matches!(self.method(), "GET" | "DELETE");
        match b.kind {
            0..160 if bodiless => Vec::new(),
            0..160 => {
                let v = fit(first, &id(self.id), b.a, b.b as u8);
                v.to_string().into_bytes()
            }
            160..200 => Vec::new(),
            200..220 => other(b.a).to_string().into_bytes(),
            220..240 => b.raw.0.clone(),
            240.. => vec![b' '; usize::from(b.b % 1024) * 64],
        }
    }

    /// The request's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        if self.wild >= 240 {
            return self.raw.0.clone();
        }
        let (target, first) = self.target();
        let body = self.body_bytes(first);
        let method = self.method();
        let version = match self.version {
            0..224 => " HTTP/1.1",
            224..248 => " HTTP/1.0",
            248..252 => "",
            _ => " HTTP/9",
        };
        let mut head = format!("{method} {target}{version}\r\nHost: localhost\r\n");
        let n = body.len();
        let d = usize::from(self.length.0 % 8) + 1;
        let _ = match self.length.0 {
            0..230 => write!(head, "Content-Length: {n}\r\n"),
            230..235 => write!(head, "Content-Length: {n}\r\nContent-Length: {n}\r\n"),
            235..240 => Ok(()),
            240..245 => write!(head, "Content-Length: {}\r\n", n + d),
            245..250 => write!(head, "Content-Length: {}\r\n", n.saturating_sub(d)),
            250..253 => write!(head, "Content-Length: {n}\r\nContent-Length: {}\r\n", n + 1),
            253.. => write!(head, "Content-Length: -{n}\r\n"),
        };
        if let Some(close) = self.connection {
            let v = if close { "close" } else { "keep-alive" };
            let _ = write!(head, "Connection: {v}\r\n");
        }
        if self.expect {
            head.push_str("Expect: 100-continue\r\n");
        }
        if self.chunked >= 250 {
            head.push_str("Transfer-Encoding: chunked\r\n");
        }
        for i in 0..self.extra_headers() {
            let _ = write!(head, "X-Extra-{i}: {i}\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }

    /// What a server must make of it when it is well formed: the method,
    /// the path without its query, the body and whether the connection
    /// stays open.
    pub fn expected(&self) -> Option<(&'static str, String, Vec<u8>, bool)> {
        let method = self.method();
        let (target, first) = self.target();
        let body = self.body_bytes(first);
        let plain = self.wild < 240
            && matches!(method, "GET" | "PUT" | "PATCH" | "DELETE")
            && self.version < 248
            && self.chunked < 250
            && self.extra_headers() < 26
            && (self.length.0 < 235 || (self.length.0 < 240 && body.is_empty()));
        let path = target.split('?').next().unwrap_or("").to_string();
        let fits = body.len() <= hearth::fcapi::http::MAX_BODY && !path.contains(' ');
        let keep_alive = match self.connection {
            Some(close) => !close,
            None => self.version < 224,
        };
        (plain && fits).then_some((method, path, body, keep_alive))
    }
}
