//! The control protocol: one JSON request per line, one JSON reply per line
//! (see `docs/api.md`).

use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use crate::config::Grant;

/// One request, tagged by `"op"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The VMs the client may read: name, state, vCPUs. (An empty struct
    /// variant, not a unit one: serde's `deny_unknown_fields` does not
    /// apply to unit variants of an internally tagged enum.)
    List {},
    /// Statistics (the `--stats-file` document) of one VM, or of every VM
    /// the client may read.
    Stats {
        vm: Option<String>,
    },
    Pause {
        vm: String,
    },
    Resume {
        vm: String,
    },
    Stop {
        vm: String,
    },
    /// CPU weight and/or cap; `"max": null` removes the cap.
    SetCpu {
        vm: String,
        weight: Option<u64>,
        #[serde(default, deserialize_with = "present")]
        max: Option<Option<f64>>,
    },
    /// Memory weight and/or floor (the ballooning allocator's policy).
    SetMemory {
        vm: String,
        weight: Option<u64>,
        floor_mib: Option<u64>,
    },
    /// A network interface's rate limiters (Firecracker's PATCH of
    /// `/network-interfaces/{iface_id}`): per bucket, absent keeps it,
    /// `null` removes it, an object replaces it.
    SetNet {
        vm: String,
        iface: String,
        rx_rate_limiter: Option<super::limits::LimiterPatch>,
        tx_rate_limiter: Option<super::limits::LimiterPatch>,
    },
    /// A VM's `io.weight` (its share of `host.io`).
    SetIo {
        vm: String,
        weight: u64,
    },
    /// A drive's rate limiter (Firecracker's `PATCH /drives`): a bucket
    /// left out is kept, `null` or a size or refill time of 0 removes it.
    SetDrive {
        vm: String,
        drive: String,
        rate_limiter: super::limits::LimiterPatch,
    },
    /// The device-access verifier's counters of one VM.
    AccessCounters {
        vm: String,
    },
    /// Stop every VM (the monitor then exits).
    Shutdown {},
    /// The statistics of the VMs the client may read as Prometheus text.
    Metrics {},
    /// Add a VM: `vm` is its definition (Hearth's JSON, as one entry of a
    /// monitor file's `vms`); relative paths in it resolve against
    /// `base_dir` (absolute). Built off the event loop; answered once built
    /// (and started, with `start: true`).
    Create {
        vm: Value,
        base_dir: Option<String>,
        #[serde(default)]
        start: bool,
        /// Serve Firecracker's API for this VM on this Unix socket
        /// (absolute path); `vm` may then be a template without `kernel`,
        /// the VM being configured and started through that socket.
        #[serde(default)]
        api_socket: Option<String>,
    },
    /// Start a created VM's vCPUs.
    Start {
        vm: String,
    },
    /// Stop a VM if it runs, tear it down and forget it (answered when gone).
    Delete {
        vm: String,
    },
    /// Stop a VM if it runs, then build and start it again from its
    /// definition (answered when it runs again).
    Restart {
        vm: String,
    },
}

/// `Some(x)` for a field that is present (even as `null`), `None` if absent.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl Request {
    /// Parses one request line.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        serde_json::from_slice(line).map_err(|e| format!("invalid request: {e}"))
    }

    /// The grant it needs, and on which VM (`None`: monitor-wide or
    /// filtered per VM, see [`Request::filtered`]).
    pub fn needs(&self) -> (Grant, Option<&str>) {
        match self {
            Request::List {} | Request::Stats { vm: None } | Request::Metrics {} => {
                (Grant::Read, None)
            }
            Request::Stats { vm: Some(vm) } | Request::AccessCounters { vm } => {
                (Grant::Read, Some(vm))
            }
            Request::Pause { vm }
            | Request::Resume { vm }
            | Request::Stop { vm }
            | Request::SetCpu { vm, .. }
            | Request::SetMemory { vm, .. }
            | Request::SetNet { vm, .. }
            | Request::SetIo { vm, .. }
            | Request::SetDrive { vm, .. }
            | Request::Start { vm }
            | Request::Restart { vm }
            | Request::Delete { vm } => (Grant::Control, Some(vm)),
            // Creating a VM opens host files with the monitor's rights.
            Request::Shutdown {} | Request::Create { .. } => (Grant::Admin, None),
        }
    }

    /// Whether the reply lists only the VMs the client may read, rather
    /// than needing a grant for the whole monitor.
    pub fn filtered(&self) -> bool {
        matches!(
            self,
            Request::List {} | Request::Stats { vm: None } | Request::Metrics {}
        )
    }
}

/// A successful reply.
pub fn ok(result: Value) -> Value {
    json!({ "ok": true, "result": result })
}

/// An error reply.
pub fn error(message: impl Into<String>) -> Value {
    json!({ "ok": false, "error": message.into() })
}

/// A reply as one line (newline-terminated).
pub fn line(reply: &Value) -> Vec<u8> {
    let mut bytes = reply.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_by_op() {
        assert_eq!(Request::parse(br#"{"op":"list"}"#), Ok(Request::List {}));
        assert_eq!(
            Request::parse(br#"{"op":"set-cpu","vm":"a","weight":300}"#),
            Ok(Request::SetCpu {
                vm: "a".into(),
                weight: Some(300),
                max: None
            })
        );
        assert_eq!(
            Request::parse(br#"{"op":"set-cpu","vm":"a","max":null}"#),
            Ok(Request::SetCpu {
                vm: "a".into(),
                weight: None,
                max: Some(None)
            })
        );
        assert_eq!(
            Request::parse(br#"{"op":"stats"}"#),
            Ok(Request::Stats { vm: None })
        );
    }

    #[test]
    fn set_drive_keeps_removes_or_replaces_each_bucket() {
        use crate::api::limits::{BucketJson as BucketPatch, LimiterPatch};
        let r = Request::parse(
            br#"{"op":"set-drive","vm":"a","drive":"root","rate_limiter":{"bandwidth":{"size":10,"refill_time":1000},"ops":null}}"#,
        )
        .expect("parses");
        let Request::SetDrive { rate_limiter, .. } = r else {
            panic!("not set-drive: {r:?}");
        };
        assert_eq!(
            rate_limiter.bandwidth,
            Some(Some(BucketPatch {
                size: 10,
                one_time_burst: 0,
                refill_time: 1000
            }))
        );
        assert_eq!(rate_limiter.ops, Some(None));
        let keep = Request::parse(br#"{"op":"set-drive","vm":"a","drive":"d","rate_limiter":{}}"#);
        assert!(matches!(
            keep,
            Ok(Request::SetDrive {
                rate_limiter: LimiterPatch {
                    bandwidth: None,
                    ops: None
                },
                ..
            })
        ));
        let bad = Request::parse(
            br#"{"op":"set-drive","vm":"a","drive":"d","rate_limiter":{"bandwidth":{"size":1}}}"#,
        );
        assert!(bad.expect_err("no refill_time").contains("refill_time"));
        assert_eq!(
            Request::parse(br#"{"op":"set-io","vm":"a","weight":300}"#).map(|r| r.needs().0),
            Ok(Grant::Control)
        );
    }

    #[test]
    fn bad_requests_say_why() {
        let e = |t: &[u8]| Request::parse(t).expect_err("must fail");
        assert!(e(b"garbage").starts_with("invalid request: expected value"));
        assert!(e(br#"{"op":"reboot"}"#).contains("unknown variant `reboot`"));
        assert!(e(br#"{"op":"pause"}"#).contains("missing field `vm`"));
        assert!(e(br#"{"op":"pause","vm":"a","x":1}"#).contains("unknown field `x`"));
        assert!(e(br#"{"op":"list","extra":1}"#).contains("unknown field `extra`"));
        assert!(e(br#"{"op":"shutdown","now":true}"#).contains("unknown field `now`"));
    }

    #[test]
    fn set_net_takes_firecrackers_limiter_shape() {
        let r = Request::parse(
            br#"{"op":"set-net","vm":"a","iface":"eth0","tx_rate_limiter":{"ops":{"size":10,"refill_time":100}}}"#,
        )
        .expect("parses");
        let Request::SetNet {
            iface,
            rx_rate_limiter,
            tx_rate_limiter,
            ..
        } = &r
        else {
            panic!("{r:?}");
        };
        assert_eq!(iface, "eth0");
        assert!(rx_rate_limiter.is_none());
        assert!(tx_rate_limiter.is_some_and(|t| t.ops.is_some() && t.bandwidth.is_none()));
        assert_eq!(r.needs(), (Grant::Control, Some("a")));
    }

    #[test]
    fn grants_needed() {
        let pause = Request::Pause { vm: "a".into() };
        assert_eq!(pause.needs(), (Grant::Control, Some("a")));
        assert_eq!(Request::Shutdown {}.needs(), (Grant::Admin, None));
        assert!(Request::List {}.filtered());
    }
}
