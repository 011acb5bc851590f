//! Firecracker's routes: a request's method, path and body turned into one
//! [`Action`], or the error Firecracker gives (`parsed_request.rs` in its
//! API server). Bodies of configuration sections stay JSON here: they are
//! checked where the config file's sections are (`config::firecracker`),
//! so the API and `--config-file` accept and refuse the same things.

use serde::Deserialize;
use serde_json::Value;

use super::http::{Method, Request, Response};

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    GetInstanceInfo,
    GetVersion,
    GetVmConfig,
    GetMachineConfig,
    GetBalloon,
    GetBalloonStats,
    /// A pre-boot section (`boot-source`, `machine-config`, `vsock`,
    /// `balloon`, `logger`), replaced whole.
    PutSection(&'static str, Value),
    PatchMachineConfig(Value),
    /// An entry of `drives` or `network-interfaces`, by id.
    PutEntry(List, String, Value),
    PatchDrive(String, Value),
    PatchNetwork(String, Value),
    PutMetrics(MetricsConfig),
    Start,
    SendCtrlAltDel,
    FlushMetrics,
    Pause,
    Resume,
    PatchBalloon(u64),
    /// An endpoint for something Hearth does not have: answered 400
    /// naming it.
    Unsupported(&'static str),
}

/// The two device lists configured entry by entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Drives,
    Interfaces,
}

impl List {
    /// The key in a config file.
    pub fn key(self) -> &'static str {
        match self {
            List::Drives => "drives",
            List::Interfaces => "network-interfaces",
        }
    }

    /// The id field of an entry.
    pub fn id_field(self) -> &'static str {
        match self {
            List::Drives => "drive_id",
            List::Interfaces => "iface_id",
        }
    }
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub metrics_path: std::path::PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Deserialize)]
enum ActionType {
    FlushMetrics,
    InstanceStart,
    SendCtrlAltDel,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: VmState,
}

#[derive(Deserialize)]
enum VmState {
    Paused,
    Resumed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalloonUpdate {
    amount_mib: u32,
}

const SNAPSHOTS: &str =
    "snapshots (PUT /snapshot/create, /snapshot/load) are not supported by Hearth";
const CPU_TEMPLATES: &str = "custom CPU templates (PUT /cpu-config) are not supported by Hearth";
const MMDS: &str = "the microVM metadata service (MMDS) is not supported by Hearth";
const ENTROPY: &str = "an entropy device (virtio-rng) is not supported by Hearth";
const PMEM: &str = "virtio-pmem devices are not supported by Hearth";
const HOTPLUG: &str = "memory hotplug (virtio-mem) is not supported by Hearth";
const UNPLUG: &str = "hot-unplugging devices is not supported by Hearth";
const SERIAL: &str =
    "PUT /serial is not supported by Hearth yet: the console goes to the monitor's stdout";
const HINTING: &str = "free page hinting is not supported by Hearth (free page reporting is)";
const BALLOON_STATS_INTERVAL: &str =
    "changing the balloon's statistics interval after boot is not supported by Hearth yet";

fn json_error(e: serde_json::Error) -> Response {
    Response::fault(
        400,
        format!("An error occurred when deserializing the json body of a request: {e}."),
    )
}

fn typed<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(json_error)
}

/// A section body: any JSON object (its fields are checked with the config).
fn object(body: &[u8]) -> Result<Value, Response> {
    match typed::<Value>(body)? {
        v @ Value::Object(_) => Ok(v),
        other => Err(Response::fault(
            400,
            format!("An error occurred when deserializing the json body of a request: expected a JSON object, found {other}."),
        )),
    }
}

/// Firecracker's check of an id in a path: not empty, alphanumeric or `_`.
fn checked_id(id: Option<&str>) -> Result<String, Response> {
    match id {
        None | Some("") => Err(Response::fault(400, "The ID cannot be empty.")),
        Some(id) if id.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) => Ok(id.into()),
        Some(_) => Err(Response::fault(
            400,
            "API Resource IDs can only contain alphanumeric characters and underscores.",
        )),
    }
}

/// An entry's body, whose id field must match the path's.
fn entry(list: List, id: Option<&str>, body: &[u8]) -> Result<(String, Value), Response> {
    let id = checked_id(id)?;
    let value = object(body)?;
    match value.get(list.id_field()).and_then(Value::as_str) {
        Some(given) if given == id => Ok((id, value)),
        Some(given) if list == List::Interfaces => Err(Response::fault(
            400,
            format!(
                "The id from the path [{id}] does not match the id from the body [{given}]!"
            ),
        )),
        Some(_) => Err(Response::fault(
            400,
            "The id from the path does not match the id from the body!",
        )),
        None => Err(Response::fault(
            400,
            format!(
                "An error occurred when deserializing the json body of a request: missing field `{}`.",
                list.id_field()
            ),
        )),
    }
}

fn invalid(method: Method, path: &str) -> Response {
    Response::fault(
        400,
        format!(
            "Invalid request method and/or path: {} {path}.",
            method.name()
        ),
    )
}

/// The action of `req`.
pub fn route(req: &Request) -> Result<Action, Response> {
    let mut tokens = req.path.trim_start_matches('/').split_terminator('/');
    let first = tokens.next().unwrap_or("");
    let second = tokens.next();
    let body = req.body.as_deref();
    match (req.method, first, body) {
        (Method::Get, _, Some(_)) => Err(Response::fault(400, "GET request cannot have a body.")),
        (Method::Put, _, None) => Err(Response::fault(400, "Empty PUT request.")),
        (Method::Patch, _, None) if first != "balloon" => {
            Err(Response::fault(400, "Empty PATCH request."))
        }
        (Method::Get, _, None) => get(first, second, &req.path),
        (Method::Put, _, Some(body)) => put(first, second, body, &req.path),
        (Method::Patch, _, body) => patch(first, second, body, &req.path),
        (Method::Delete, "drives" | "network-interfaces" | "pmem", _) => {
            Ok(Action::Unsupported(UNPLUG))
        }
        (method, _, _) => Err(invalid(method, &req.path)),
    }
}

fn get(first: &str, second: Option<&str>, path: &str) -> Result<Action, Response> {
    Ok(match (first, second) {
        ("", None) => Action::GetInstanceInfo,
        ("version", None) => Action::GetVersion,
        ("vm", Some("config")) => Action::GetVmConfig,
        ("machine-config", None) => Action::GetMachineConfig,
        ("balloon", None) => Action::GetBalloon,
        ("balloon", Some("statistics")) => Action::GetBalloonStats,
        ("balloon", Some("hinting")) => Action::Unsupported(HINTING),
        ("balloon", Some(other)) => {
            return Err(Response::fault(
                400,
                format!("Unrecognized GET request path `{other}`."),
            ))
        }
        ("mmds", _) => Action::Unsupported(MMDS),
        ("hotplug", Some("memory")) => Action::Unsupported(HOTPLUG),
        _ => return Err(invalid(Method::Get, path)),
    })
}

fn put(first: &str, second: Option<&str>, body: &[u8], path: &str) -> Result<Action, Response> {
    Ok(match first {
        "actions" => match typed::<ActionBody>(body)?.action_type {
            ActionType::InstanceStart => Action::Start,
            ActionType::SendCtrlAltDel => Action::SendCtrlAltDel,
            ActionType::FlushMetrics => Action::FlushMetrics,
        },
        "boot-source" => Action::PutSection("boot-source", object(body)?),
        "machine-config" => Action::PutSection("machine-config", object(body)?),
        "vsock" => Action::PutSection("vsock", object(body)?),
        "balloon" => Action::PutSection("balloon", object(body)?),
        "logger" => Action::PutSection("logger", object(body)?),
        "drives" => {
            let (id, v) = entry(List::Drives, second, body)?;
            Action::PutEntry(List::Drives, id, v)
        }
        "network-interfaces" => {
            let (id, v) = entry(List::Interfaces, second, body)?;
            Action::PutEntry(List::Interfaces, id, v)
        }
        "metrics" => Action::PutMetrics(typed(body)?),
        "snapshot" => Action::Unsupported(SNAPSHOTS),
        "cpu-config" => Action::Unsupported(CPU_TEMPLATES),
        "mmds" => Action::Unsupported(MMDS),
        "entropy" => Action::Unsupported(ENTROPY),
        "pmem" => Action::Unsupported(PMEM),
        "hotplug" => Action::Unsupported(HOTPLUG),
        "serial" => Action::Unsupported(SERIAL),
        _ => return Err(invalid(Method::Put, path)),
    })
}

fn patch(
    first: &str,
    second: Option<&str>,
    body: Option<&[u8]>,
    path: &str,
) -> Result<Action, Response> {
    let Some(body) = body else {
        // PATCH /balloon/hinting/... may have no body in Firecracker.
        return match second {
            Some("hinting") => Ok(Action::Unsupported(HINTING)),
            _ => Err(Response::fault(400, "Empty PATCH request.")),
        };
    };
    Ok(match (first, second) {
        ("vm", None) => match typed::<VmStateBody>(body)?.state {
            VmState::Paused => Action::Pause,
            VmState::Resumed => Action::Resume,
        },
        ("machine-config", None) => Action::PatchMachineConfig(object(body)?),
        ("balloon", Some("statistics")) => Action::Unsupported(BALLOON_STATS_INTERVAL),
        ("balloon", Some("hinting")) => Action::Unsupported(HINTING),
        ("balloon", _) => Action::PatchBalloon(u64::from(typed::<BalloonUpdate>(body)?.amount_mib)),
        ("drives", _) => {
            let (id, v) = entry(List::Drives, second, body)?;
            Action::PatchDrive(id, v)
        }
        ("network-interfaces", _) => {
            let (id, v) = entry(List::Interfaces, second, body)?;
            Action::PatchNetwork(id, v)
        }
        ("mmds", _) => Action::Unsupported(MMDS),
        ("pmem", _) => Action::Unsupported(PMEM),
        ("hotplug", Some("memory")) => Action::Unsupported(HOTPLUG),
        _ => return Err(invalid(Method::Patch, path)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, path: &str, body: Option<&str>) -> Request {
        Request {
            method,
            path: path.into(),
            body: body.map(|b| b.as_bytes().to_vec()),
            keep_alive: true,
        }
    }

    fn ok(method: Method, path: &str, body: Option<&str>) -> Action {
        route(&req(method, path, body)).unwrap_or_else(|r| panic!("{path}: {r:?}"))
    }

    fn fault(method: Method, path: &str, body: Option<&str>) -> String {
        let r = route(&req(method, path, body)).expect_err("refused");
        assert_eq!(r.status, 400);
        let v: Value = serde_json::from_str(&r.body.unwrap()).unwrap();
        v["fault_message"].as_str().unwrap().to_string()
    }

    #[test]
    fn firecrackers_endpoints_route() {
        use Method::*;
        assert_eq!(ok(Get, "/", None), Action::GetInstanceInfo);
        assert_eq!(ok(Get, "/vm/config", None), Action::GetVmConfig);
        assert_eq!(ok(Get, "/machine-config", None), Action::GetMachineConfig);
        assert_eq!(
            ok(Get, "/balloon/statistics", None),
            Action::GetBalloonStats
        );
        let start = r#"{"action_type": "InstanceStart"}"#;
        assert_eq!(ok(Put, "/actions", Some(start)), Action::Start);
        let cad = r#"{"action_type": "SendCtrlAltDel"}"#;
        assert_eq!(ok(Put, "/actions", Some(cad)), Action::SendCtrlAltDel);
        assert_eq!(
            ok(Patch, "/vm", Some(r#"{"state": "Paused"}"#)),
            Action::Pause
        );
        assert_eq!(
            ok(Patch, "/balloon", Some(r#"{"amount_mib": 64}"#)),
            Action::PatchBalloon(64)
        );
        let drive = r#"{"drive_id": "rootfs", "path_on_host": "r.ext4", "is_root_device": true, "is_read_only": false}"#;
        assert!(matches!(
            ok(Put, "/drives/rootfs", Some(drive)),
            Action::PutEntry(List::Drives, id, _) if id == "rootfs"
        ));
        assert!(matches!(
            ok(Put, "/boot-source", Some(r#"{"kernel_image_path": "k"}"#)),
            Action::PutSection("boot-source", _)
        ));
        assert_eq!(
            ok(Put, "/metrics", Some(r#"{"metrics_path": "/m"}"#)),
            Action::PutMetrics(MetricsConfig {
                metrics_path: "/m".into()
            })
        );
    }

    #[test]
    fn firecrackers_errors() {
        use Method::*;
        assert_eq!(
            fault(Get, "/nope", None),
            "Invalid request method and/or path: GET /nope."
        );
        assert_eq!(fault(Put, "/boot-source", None), "Empty PUT request.");
        assert_eq!(
            fault(Get, "/", Some("{}")),
            "GET request cannot have a body."
        );
        assert_eq!(
            fault(Put, "/drives/a", Some(r#"{"drive_id": "b"}"#)),
            "The id from the path does not match the id from the body!"
        );
        assert_eq!(
            fault(Put, "/drives/a-b", Some(r#"{"drive_id": "a-b"}"#)),
            "API Resource IDs can only contain alphanumeric characters and underscores."
        );
        assert!(fault(Put, "/actions", Some(r#"{"action_type": "Reboot"}"#))
            .contains("unknown variant `Reboot`"));
        assert!(fault(Patch, "/vm", Some(r#"{"state": "Paused", "x": 1}"#))
            .contains("unknown field `x`"));
        assert!(fault(Put, "/boot-source", Some("[1]")).contains("expected a JSON object"));
    }

    #[test]
    fn what_hearth_lacks_is_named() {
        use Method::*;
        let named = |m, p, b| match ok(m, p, b) {
            Action::Unsupported(what) => what,
            other => panic!("{p}: {other:?}"),
        };
        assert!(named(Put, "/snapshot/create", Some("{}")).contains("snapshots"));
        assert!(named(Put, "/cpu-config", Some("{}")).contains("CPU templates"));
        assert!(named(Put, "/mmds", Some("{}")).contains("MMDS"));
        assert!(named(Delete, "/drives/a", None).contains("unplug"));
    }
}
