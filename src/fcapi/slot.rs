//! One Firecracker API socket's VM: configured through pre-boot requests,
//! then (after `InstanceStart`) a VM of the monitor, which the post-boot
//! requests act on through the same [`Control`] operations as the control
//! socket. Each [`Action`] becomes a response here, or an answer later
//! (`InstanceStart` waits for the VM to be built and started).

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::http::Response;
use super::preboot::Preboot;
use super::routes::{Action, List, MetricsConfig};
use crate::api::{Answer, Control, Ticket, Waiter};
use crate::metrics::{sink::Written, FcMetrics, MetricsSink};

const MIB: u64 = 1 << 20;
const PAGES_PER_MIB: u64 = MIB / 4096;

/// Firecracker's answers to requests made at the wrong time.
pub const NOT_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";
pub const NOT_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
const STARTING: &str = "The microVM is starting (InstanceStart is in progress); try again.";
const NO_BALLOON: &str = "Balloon config error: No balloon device found.";
/// A sandboxed monitor opens no file after start-up: it checks no kernel
/// or drive, opens no metrics or log file.
const SANDBOXED: &str = "this monitor runs in its sandbox: it opens no file after start-up, so \
     it configures no VM through the API (give the VM in its config file instead)";

/// Where the socket's VM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Being configured.
    Config,
    /// `InstanceStart` was accepted; the VM is being built.
    Starting,
    /// A VM of the monitor (by the slot's name); it may be building,
    /// created, running, paused.
    Attached,
}

/// What a request gets.
#[derive(Debug)]
pub enum Reply {
    Now(Response),
    Later(Ticket),
}

/// One API socket's VM.
pub struct Slot {
    /// The VM's name in the monitor.
    pub name: String,
    /// What `GET /` reports as `id`.
    pub id: String,
    preboot: Preboot,
    /// Hearth's own settings for the VM (`name`, `serial`, `cpu.weight`,
    /// `memory.floor_mib`, ...), merged into the definition at start.
    template: Map<String, Value>,
    phase: Phase,
    metrics_config: Option<MetricsConfig>,
    sink: Option<MetricsSink>,
    metrics: FcMetrics,
    pub last_flush: Instant,
    /// The process is this VM's alone (`hearth firecracker`): `PUT
    /// /logger` may set the process's log file and level.
    pub owns_process: bool,
    logger: Option<Value>,
}

fn fault(message: impl Into<String>) -> Reply {
    Reply::Now(Response::fault(400, message))
}

fn done() -> Reply {
    Reply::Now(Response::no_content())
}

impl Slot {
    /// A VM to be configured through the API.
    pub fn new(name: &str, id: &str, base_dir: &Path, template: Map<String, Value>) -> Slot {
        Slot {
            name: name.to_string(),
            id: id.to_string(),
            preboot: Preboot::new(base_dir),
            template,
            phase: Phase::Config,
            metrics_config: None,
            sink: None,
            metrics: FcMetrics::default(),
            last_flush: Instant::now(),
            owns_process: false,
            logger: None,
        }
    }

    /// The API of a VM the monitor already has (created from a config
    /// file or a whole definition); `config` is its Firecracker file, when
    /// it came from one (`GET /vm/config` shows it).
    pub fn attached(name: &str, id: &str, base_dir: &Path, config: Option<Value>) -> Slot {
        let mut slot = Slot::new(name, id, base_dir, Map::new());
        if let Some(Value::Object(map)) = config {
            slot.preboot = Preboot::from_map(map, base_dir);
        }
        slot.phase = Phase::Attached;
        slot
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn has_metrics(&self) -> bool {
        self.sink.is_some()
    }

    /// Carries out one request.
    pub fn handle(
        &mut self,
        action: Action,
        ctl: &mut dyn Control,
        waiter: &mut dyn FnMut() -> Waiter,
    ) -> Reply {
        // Counted first, so that a FlushMetrics line counts itself.
        let counted = counter(&action);
        if let Some((group, what)) = counted {
            self.metrics.count(group, what, false);
        }
        let reply = self.act(action, ctl, waiter);
        if let (Some((group, what)), Reply::Now(r)) = (counted, &reply) {
            if r.status >= 400 {
                self.metrics.fail(group, what);
            }
        }
        reply
    }

    fn act(
        &mut self,
        action: Action,
        ctl: &mut dyn Control,
        waiter: &mut dyn FnMut() -> Waiter,
    ) -> Reply {
        match action {
            Action::GetInstanceInfo => Reply::Now(Response::json(&self.instance_info(ctl))),
            Action::GetVersion => Reply::Now(Response::json(
                &json!({ "firecracker_version": env!("CARGO_PKG_VERSION") }),
            )),
            Action::GetVmConfig => {
                let metrics = self.metrics_config.as_ref().map(|m| json!(m));
                let mut config = self.preboot.vm_config(metrics);
                if let Some(logger) = &self.logger {
                    config["logger"] = logger.clone();
                }
                Reply::Now(Response::json(&config))
            }
            Action::GetMachineConfig => Reply::Now(Response::json(&self.preboot.machine_config())),
            Action::GetBalloon => match self.balloon() {
                Some(b) => Reply::Now(Response::json(&b)),
                None => fault(NO_BALLOON),
            },
            Action::GetBalloonStats => self.balloon_stats(ctl),
            Action::PutSection("logger", body) => self.put_logger(body),
            Action::PutSection(key, body) => self.configure(|p| p.put_section(key, body)),
            Action::PatchMachineConfig(body) => self.configure(|p| p.patch_machine_config(body)),
            Action::PutEntry(list, id, body) => self.configure(|p| p.put_entry(list, &id, body)),
            Action::PutMetrics(config) => self.put_metrics(config),
            Action::Start => self.start(ctl, waiter),
            Action::FlushMetrics => match self.flush_metrics(&ctl.stats_json()) {
                true => done(),
                false => fault("Metrics error: no metrics destination (PUT /metrics first)."),
            },
            Action::SendCtrlAltDel => match self.running(ctl) {
                Ok(idx) => match ctl.send_ctrl_alt_del(idx) {
                    Ok(()) => done(),
                    Err(e) => fault(e),
                },
                Err(r) => r,
            },
            Action::Pause | Action::Resume => match self.running(ctl) {
                Ok(idx) => {
                    ctl.set_paused(idx, action == Action::Pause);
                    done()
                }
                Err(r) => r,
            },
            Action::PatchBalloon(mib) => self.patch_balloon(ctl, mib),
            Action::PatchDrive(..) | Action::PatchNetwork(..) => match self.running(ctl) {
                Ok(_) => fault(format!(
                    "changing a {} of a running VM is not supported by Hearth yet",
                    if matches!(action, Action::PatchDrive(..)) {
                        "drive"
                    } else {
                        "network interface"
                    }
                )),
                Err(r) => r,
            },
            Action::Unsupported(what) => fault(what),
        }
    }

    /// A pre-boot change, refused once the VM is starting or started.
    fn configure(&mut self, change: impl FnOnce(&mut Preboot) -> Result<(), String>) -> Reply {
        if crate::sandbox::active() {
            return fault(SANDBOXED);
        }
        match self.phase {
            Phase::Config => match change(&mut self.preboot) {
                Ok(()) => done(),
                Err(e) => fault(e),
            },
            Phase::Starting => fault(STARTING),
            Phase::Attached => fault(NOT_AFTER_START),
        }
    }

    /// `PUT /logger`: with the process to itself, its log file and level;
    /// in a shared monitor only what asks for nothing (the monitor's log
    /// is every VM's).
    fn put_logger(&mut self, body: Value) -> Reply {
        if self.phase != Phase::Config {
            return fault(NOT_AFTER_START);
        }
        let (log_path, level) = match super::logger::parse(&body) {
            Ok(parsed) => parsed,
            Err(e) => return fault(format!("Logger error: {e}")),
        };
        let asks = log_path.is_some() || level.is_some();
        if asks && !self.owns_process {
            return fault(
                "Logger error: this VM shares its monitor's log (stderr, --log-level); \
                 give neither \"log_path\" nor \"level\"",
            );
        }
        if log_path.is_some() && crate::sandbox::active() {
            return fault(SANDBOXED);
        }
        if let Some(path) = &log_path {
            match MetricsSink::open_raw(path) {
                Ok(file) => crate::logger::log_to_file(file),
                Err(e) => return fault(format!("Logger error: logger.log_path: {e}")),
            }
        }
        if let Some(level) = level {
            log::set_max_level(level);
        }
        self.logger = Some(body);
        done()
    }

    fn put_metrics(&mut self, config: MetricsConfig) -> Reply {
        if self.phase != Phase::Config {
            return fault(NOT_AFTER_START);
        }
        if crate::sandbox::active() {
            return fault(SANDBOXED);
        }
        match MetricsSink::open(&config.metrics_path) {
            Ok(sink) => {
                self.sink = Some(sink);
                self.metrics_config = Some(config);
                done()
            }
            Err(e) => fault(format!("Metrics error: {e}")),
        }
    }

    /// `InstanceStart`: the configuration checked whole and handed to the
    /// monitor as a VM definition, created and started as the control
    /// socket's `create` with `start: true` does.
    fn start(&mut self, ctl: &mut dyn Control, waiter: &mut dyn FnMut() -> Waiter) -> Reply {
        match self.phase {
            Phase::Starting => return fault(STARTING),
            Phase::Attached => return self.start_created(ctl, waiter),
            Phase::Config => {}
        }
        let mut definition = match self.preboot.definition() {
            Ok(d) => d,
            Err(e) => return fault(format!("Start microvm error: {e}")),
        };
        super::template::merge_template(&mut definition, &self.name, &self.template);
        let base = self.preboot.base_dir().to_path_buf();
        let w = waiter();
        let ticket = w.ticket;
        match ctl.create(definition, &base, true, w) {
            Ok(Answer::Later) => {
                self.phase = Phase::Starting;
                Reply::Later(ticket)
            }
            Ok(Answer::Now(_)) => {
                self.phase = Phase::Attached;
                done()
            }
            Err(e) => fault(format!("Start microvm error: {e}")),
        }
    }

    /// `InstanceStart` on a VM created but not started (`create` with a
    /// whole definition and `start: false`).
    fn start_created(
        &mut self,
        ctl: &mut dyn Control,
        waiter: &mut dyn FnMut() -> Waiter,
    ) -> Reply {
        let (Some(idx), Some(state)) = (index(ctl, &self.name), vm_state(ctl, &self.name)) else {
            return fault(format!("vm {} is gone", self.name));
        };
        if state != "created" {
            return fault(NOT_AFTER_START);
        }
        let w = waiter();
        let ticket = w.ticket;
        match ctl.start(idx, w) {
            Ok(Answer::Later) => Reply::Later(ticket),
            Ok(Answer::Now(_)) => done(),
            Err(e) => fault(format!("Start microvm error: {e}")),
        }
    }

    /// The answer to a deferred `InstanceStart`.
    pub fn started(&mut self, answer: Result<Value, String>) -> Response {
        match answer {
            Ok(_) => {
                self.phase = Phase::Attached;
                Response::no_content()
            }
            Err(e) => {
                if self.phase == Phase::Starting {
                    self.phase = Phase::Config;
                }
                Response::fault(400, format!("Start microvm error: {e}"))
            }
        }
    }

    /// The VM's index, when it has started and still runs.
    fn running(&self, ctl: &dyn Control) -> Result<usize, Reply> {
        match self.phase {
            Phase::Config => return Err(fault(NOT_BEFORE_START)),
            Phase::Starting => return Err(fault(STARTING)),
            Phase::Attached => {}
        }
        match index(ctl, &self.name) {
            Some(idx) if ctl.is_running(idx) => Ok(idx),
            Some(_) => Err(fault(format!("vm {} is not running", self.name))),
            None => Err(fault(format!("vm {} is gone", self.name))),
        }
    }

    fn instance_info(&self, ctl: &dyn Control) -> Value {
        let state = match self.phase {
            Phase::Config | Phase::Starting => "Not started",
            Phase::Attached => match vm_state(ctl, &self.name).as_deref() {
                Some("running") => "Running",
                Some("paused") => "Paused",
                _ => "Not started",
            },
        };
        json!({
            "id": self.id,
            "state": state,
            "vmm_version": env!("CARGO_PKG_VERSION"),
            "app_name": "Hearth",
        })
    }

    /// The balloon's configuration with Firecracker's defaults, if it has one.
    fn balloon(&self) -> Option<Value> {
        let given = self.preboot.section("balloon")?.as_object()?;
        let mut b = json!({"amount_mib": 0, "deflate_on_oom": false,
                           "stats_polling_interval_s": 0, "free_page_reporting": false});
        if let Some(map) = b.as_object_mut() {
            map.extend(given.clone());
        }
        Some(b)
    }

    fn balloon_stats(&self, ctl: &dyn Control) -> Reply {
        if let Err(r) = self.running(ctl) {
            return r;
        }
        let Some(config) = self.balloon() else {
            return fault(NO_BALLOON);
        };
        if config["stats_polling_interval_s"].as_u64().unwrap_or(0) == 0 {
            return fault(
                "Balloon config error: Statistics for the balloon device are not enabled.",
            );
        }
        let entry = vm_entry(ctl, &self.name).unwrap_or(Value::Null);
        let m = &entry["memory"];
        let mib = |k: &str| m[k].as_u64();
        let (target, actual) = (
            mib("balloon_target_mib").unwrap_or(0),
            mib("balloon_actual_mib").unwrap_or(0),
        );
        let mut out = json!({
            "target_pages": target * PAGES_PER_MIB,
            "actual_pages": actual * PAGES_PER_MIB,
            "target_mib": target,
            "actual_mib": actual,
        });
        for (theirs, ours) in [
            ("free_memory", "guest_free_mib"),
            ("available_memory", "guest_available_mib"),
            ("total_memory", "guest_total_mib"),
        ] {
            if let Some(v) = mib(ours) {
                out[theirs] = json!(v * MIB);
            }
        }
        Reply::Now(Response::json(&out))
    }

    fn patch_balloon(&mut self, ctl: &mut dyn Control, mib: u64) -> Reply {
        let idx = match self.running(ctl) {
            Ok(idx) => idx,
            Err(r) => return r,
        };
        if self.balloon().is_none() {
            return fault(NO_BALLOON);
        }
        match ctl.set_balloon(idx, mib) {
            Ok(_) => {
                self.preboot.set_field("balloon", "amount_mib", json!(mib));
                done()
            }
            Err(e) => fault(format!("Balloon update error: {e}")),
        }
    }

    /// Writes one metrics line now from `doc` (the statistics document);
    /// `false` without a destination.
    pub fn flush_metrics(&mut self, doc: &Value) -> bool {
        let Some(sink) = &mut self.sink else {
            return false;
        };
        let entry = match self.phase {
            Phase::Attached => entry_in(doc, &self.name),
            _ => None,
        };
        let now = crate::metrics::firecracker::utc_now_ms();
        let line = self
            .metrics
            .line(now, entry.as_ref(), (sink.dropped(), sink.failures()));
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        if sink.write_line(&bytes) == Written::Dropped {
            log::debug!(
                "{}: a metrics line was dropped (its reader is behind)",
                self.name
            );
        }
        self.last_flush = Instant::now();
        true
    }
}

/// Which request counter an action feeds (Firecracker's metrics groups).
fn counter(action: &Action) -> Option<(&'static str, &'static str)> {
    Some(match action {
        Action::GetInstanceInfo => ("get_api_requests", "instance_info"),
        Action::GetMachineConfig => ("get_api_requests", "machine_cfg"),
        Action::GetVersion => ("get_api_requests", "vmm_version"),
        Action::PutSection(key, _) => (
            "put_api_requests",
            match *key {
                "boot-source" => "boot_source",
                "machine-config" => "machine_cfg",
                "vsock" => "vsock",
                "logger" => "logger",
                _ => return None,
            },
        ),
        Action::PutEntry(List::Drives, ..) => ("put_api_requests", "drive"),
        Action::PutEntry(List::Interfaces, ..) => ("put_api_requests", "network"),
        Action::PutMetrics(_) => ("put_api_requests", "metrics"),
        Action::Start | Action::SendCtrlAltDel | Action::FlushMetrics => {
            ("put_api_requests", "actions")
        }
        Action::PatchMachineConfig(_) => ("patch_api_requests", "machine_cfg"),
        Action::PatchDrive(..) => ("patch_api_requests", "drive"),
        Action::PatchNetwork(..) => ("patch_api_requests", "network"),
        _ => return None,
    })
}

/// The VM's position among the monitor's VMs.
pub fn index(ctl: &dyn Control, name: &str) -> Option<usize> {
    ctl.vm_names().iter().position(|n| n == name)
}

/// The VM's entry of the statistics document.
pub fn vm_entry(ctl: &dyn Control, name: &str) -> Option<Value> {
    entry_in(&ctl.stats_json(), name)
}

/// The entry of the VM `name` in the statistics document `doc`.
pub fn entry_in(doc: &Value, name: &str) -> Option<Value> {
    doc["vms"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
}

/// "building", "created", "running", "paused", "stopping" or how it ended.
pub fn vm_state(ctl: &dyn Control, name: &str) -> Option<String> {
    vm_entry(ctl, name).and_then(|v| v["state"].as_str().map(str::to_string))
}
