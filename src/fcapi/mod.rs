//! Firecracker's REST API on Unix sockets (docs/firecracker.md, "The
//! API"): one socket per VM, each speaking HTTP/1.1 as Firecracker's does,
//! served by one subscriber of the monitor's event loop.
//!
//! - [`http`]: request framing (`httparse`) and responses;
//! - [`routes`]: method and path to an [`routes::Action`], or
//!   Firecracker's error;
//! - [`preboot`]: the configuration built up by `PUT`s, checked as the
//!   config file's sections are;
//! - [`slot`]: one socket's VM, from configuration to the monitor's
//!   operations after `InstanceStart`;
//! - [`socket`]: binding sockets, and the registry through which the
//!   control socket's `create` adds one at run time;
//! - [`template`]: Hearth's own settings merged into such a VM;
//! - [`logger`]: `PUT /logger`;
//! - [`server`]: the sockets and their connections in the event loop.
//!
//! `hearth firecracker --api-sock PATH` is a monitor serving one such
//! socket (and exiting when its VM ends); `create` with `api_socket` on a
//! running monitor's control socket adds one more.

pub mod http;
pub mod logger;
pub mod preboot;
pub mod routes;
pub mod server;
pub mod slot;
pub mod socket;
pub mod template;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub use server::FcApiServer;
pub use slot::Slot;
pub use socket::{bind, NewEndpoint, Registry, SocketFile, DEFAULT_MODE};

use crate::api::{Answer, Control, Waiter};

#[derive(Debug, thiserror::Error)]
pub enum FcApiError {
    #[error("API socket {path:?}: {what}: {source}")]
    Socket {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("API socket {path:?}: the file exists (remove it, or give another path)")]
    Exists { path: PathBuf },
    #[error("API socket {path:?}: {why}")]
    Path { path: PathBuf, why: &'static str },
}

/// `hearth firecracker`: the one API socket the monitor serves.
#[derive(Debug, Clone)]
pub struct FirecrackerOptions {
    pub api_sock: PathBuf,
    /// `GET /`'s `id` (Firecracker's `--id`).
    pub id: String,
    /// The VM's name in the monitor.
    pub vm_name: String,
    /// Where relative paths in requests resolve (the working directory).
    pub base_dir: PathBuf,
    /// The `--config-file` the VM was booted from (already the monitor's
    /// VM), shown by `GET /vm/config`.
    pub booted_from: Option<Value>,
}

/// The one socket of `hearth firecracker`: for the VM of its config file,
/// already the monitor's, or one to configure.
pub fn firecracker_endpoint(
    opts: &FirecrackerOptions,
    listener: std::os::unix::net::UnixListener,
    file: SocketFile,
) -> NewEndpoint {
    let mut slot = match &opts.booted_from {
        Some(config) => Slot::attached(
            &opts.vm_name,
            &opts.id,
            &opts.base_dir,
            Some(config.clone()),
        ),
        None => Slot::new(
            &opts.vm_name,
            &opts.id,
            &opts.base_dir,
            serde_json::Map::new(),
        ),
    };
    slot.owns_process = true;
    log::info!("Firecracker API on {}", opts.api_sock.display());
    NewEndpoint {
        listener,
        file,
        slot,
    }
}

/// Whether `name` can name a VM (`[A-Za-z0-9_-]{1,32}`).
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The control socket's `create` with `api_socket`: a Firecracker API
/// socket for a VM of this monitor. A `vm` with a `kernel` is a whole
/// definition, created (and started with `start`) at once, the socket
/// serving it from then on; a `vm` without one is a template (its `name`
/// and Hearth's own settings) for a VM that the socket's client configures
/// and starts with `InstanceStart`.
pub fn create_with_api(
    ctl: &mut dyn Control,
    vm: Value,
    base_dir: &Path,
    start: bool,
    api_socket: &Path,
    waiter: &mut dyn FnMut() -> Waiter,
) -> Result<Answer, String> {
    let registry = ctl
        .firecracker_apis()
        .ok_or("this monitor does not serve Firecracker API sockets")?;
    if crate::sandbox::active() {
        return Err("this monitor runs in its sandbox: it creates no socket after start-up".into());
    }
    let Value::Object(template) = vm else {
        return Err("vm: expected an object (a VM definition or template)".into());
    };
    let name = match template.get("name") {
        Some(Value::String(n)) if valid_name(n) => n.clone(),
        Some(other) => return Err(format!("name: {other} must match [A-Za-z0-9_-]{{1,32}}")),
        None => {
            return Err("name: required with api_socket (the VM's name in this monitor)".into())
        }
    };
    if !api_socket.is_absolute() {
        return Err(format!("api_socket {api_socket:?} is not an absolute path"));
    }
    if ctl.vm_names().contains(&name) || registry.socket_of(&name).is_some() {
        return Err(format!(
            "name: {name:?} is already used by a VM of this monitor (delete it first)"
        ));
    }
    let (listener, file) = bind(api_socket, DEFAULT_MODE, false).map_err(|e| e.to_string())?;
    let whole = template.contains_key("kernel");
    let (slot, answer) = if whole {
        let answer = ctl.create(Value::Object(template), base_dir, start, waiter())?;
        (Slot::attached(&name, &name, base_dir, None), answer)
    } else {
        let slot = Slot::new(&name, &name, base_dir, template);
        let reply = json!({"vm": name, "state": "not started", "api_socket": api_socket});
        (slot, Answer::Now(reply))
    };
    log::info!("{name}: Firecracker API on {}", api_socket.display());
    registry.add(NewEndpoint {
        listener,
        file,
        slot,
    });
    Ok(answer)
}

/// `delete` of a name that is not a VM of the monitor: an API socket whose
/// VM was never started is closed. `None` if there is none.
pub fn delete_unstarted(ctl: &mut dyn Control, name: &str) -> Option<Value> {
    let registry = ctl.firecracker_apis()?;
    registry
        .close(name)
        .then(|| json!({"vm": name, "state": "deleted"}))
}
