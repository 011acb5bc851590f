//! The monitor: builds every VM, runs the epoll event loop (signals, the
//! console's quit request, each VM's exit eventfd) until the last VM has
//! stopped, and reports how each ended.

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;
use crate::config::{MonitorSpec, SerialOutput, VmSpec};
use crate::console::Console;
use crate::devices::serial::SerialOut;
use crate::host::{signal_name, RawTerminal, Signals};
use crate::lifecycle::VmOutcome;
use crate::vm::{Vm, VmError, VmReport};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot open /dev/kvm: {0} (is KVM available, and may this user use it?)")]
    Kvm(kvm_ioctls::Error),
    #[error("VM {name}: {source}")]
    Vm { name: String, source: VmError },
    #[error("VM {name}: cannot open serial output {path}: {source}")]
    SerialFile {
        name: String,
        path: String,
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Setup {
        what: &'static str,
        source: io::Error,
    },
    #[error("event loop: {0}")]
    EventLoop(event_manager::Error),
}

fn setup_err(what: &'static str) -> impl FnOnce(io::Error) -> MonitorError {
    move |source| MonitorError::Setup { what, source }
}

/// How the monitor's run ended.
#[derive(Debug)]
pub struct MonitorReport {
    pub vms: Vec<VmReport>,
    /// The signal that stopped the monitor, if one did.
    pub signal: Option<i32>,
    pub peak_rss_kib: Option<u64>,
}

/// Serial output that reaches the terminal at once (unbuffered).
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

fn serial_out(spec: &VmSpec) -> Result<SerialOut, MonitorError> {
    Ok(match &spec.serial.output {
        SerialOutput::Stdout => Box::new(Stdout),
        SerialOutput::Off => Box::new(io::sink()),
        SerialOutput::File(path) => {
            Box::new(
                File::create(path).map_err(|source| MonitorError::SerialFile {
                    name: spec.name.clone(),
                    path: path.display().to_string(),
                    source,
                })?,
            )
        }
    })
}

const TAG_SIGNAL: u32 = 0;
const TAG_QUIT: u32 = 1;
const TAG_VM_EXIT: u32 = 16;

/// The event-loop subscriber that owns the VMs and their lifecycle.
struct Monitor {
    vms: Vec<Vm>,
    reports: Vec<Option<VmReport>>,
    signals: Signals,
    quit: EventFd,
    signal: Option<i32>,
}

impl Monitor {
    fn done(&self) -> bool {
        self.reports.iter().all(Option::is_some)
    }

    fn stop_all(&mut self, why: &str) {
        for vm in &self.vms {
            vm.shared.request_stop(VmOutcome::Stopped(why.to_string()));
        }
    }

    fn vm_exited(&mut self, idx: usize, ops: &mut EventOps) {
        let (Some(vm), Some(slot)) = (self.vms.get_mut(idx), self.reports.get_mut(idx)) else {
            return;
        };
        let _ = vm.shared.exit_evt.read();
        if slot.is_some() {
            return;
        }
        let report = vm.finish(VmOutcome::Error("exit event without a reason".into()));
        let _ = ops.remove(Events::with_data(
            &vm.shared.exit_evt,
            TAG_VM_EXIT + idx as u32,
            EventSet::IN,
        ));
        let e = &report.exits;
        let level = if report.outcome.is_clean() {
            log::Level::Info
        } else {
            log::Level::Error
        };
        log::log!(
            level,
            "{}: ran {:.3} s, ended: {} (exits: {} pio-in, {} pio-out, {} mmio-read, {} mmio-write, {} interrupted; unclaimed: {} pio, {} mmio)",
            report.name,
            report.seconds,
            report.outcome,
            e.pio_reads,
            e.pio_writes,
            e.mmio_reads,
            e.mmio_writes,
            e.interrupted,
            report.unclaimed_pio,
            report.unclaimed_mmio
        );
        *slot = Some(report);
    }
}

impl MutEventSubscriber for Monitor {
    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |ev: Events| {
            if let Err(e) = ops.add(ev) {
                log::error!("monitor: cannot watch an fd: {e}");
            }
        };
        add(Events::with_data(&self.signals, TAG_SIGNAL, EventSet::IN));
        add(Events::with_data(&self.quit, TAG_QUIT, EventSet::IN));
        for (i, vm) in self.vms.iter().enumerate() {
            add(Events::with_data(
                &vm.shared.exit_evt,
                TAG_VM_EXIT + i as u32,
                EventSet::IN,
            ));
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TAG_SIGNAL => {
                while let Some(sig) = self.signals.read() {
                    log::info!("received {}, stopping every VM", signal_name(sig));
                    self.signal.get_or_insert(sig);
                    self.stop_all(&format!("monitor received {}", signal_name(sig)));
                }
            }
            TAG_QUIT => {
                let _ = self.quit.read();
                log::info!("console: quit requested, stopping every VM");
                self.stop_all("quit from the console");
            }
            tag if tag >= TAG_VM_EXIT => self.vm_exited((tag - TAG_VM_EXIT) as usize, ops),
            other => log::warn!("monitor: unexpected event tag {other}"),
        }
    }
}

/// Runs every VM of `spec` until the last one stops.
pub fn run(spec: &MonitorSpec) -> Result<MonitorReport, MonitorError> {
    // Before any thread exists, so every thread inherits the blocked mask.
    let signals = Signals::block_and_open().map_err(setup_err("signalfd"))?;
    crate::vcpu::install_kick_handler().map_err(|e| MonitorError::Setup {
        what: "install the vCPU kick handler",
        source: io::Error::from_raw_os_error(e.errno()),
    })?;
    let kvm = Kvm::new().map_err(MonitorError::Kvm)?;

    let mut vms = Vec::with_capacity(spec.vms.len());
    for vm_spec in &spec.vms {
        let out = serial_out(vm_spec)?;
        let vm = Vm::build(&kvm, vm_spec, out).map_err(|source| MonitorError::Vm {
            name: vm_spec.name.clone(),
            source,
        })?;
        vms.push(vm);
    }

    let quit = EventFd::new(libc::EFD_NONBLOCK).map_err(setup_err("quit eventfd"))?;
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(MonitorError::EventLoop)?;
    let console_vm = spec.vms.iter().position(|v| v.serial.stdin);
    let _raw_terminal = match console_vm {
        Some(_) => {
            RawTerminal::enter(libc::STDIN_FILENO).map_err(setup_err("terminal raw mode"))?
        }
        None => None,
    };
    if let Some(idx) = console_vm {
        let console = Console::new(
            vms[idx].serial.clone(),
            quit.try_clone().map_err(setup_err("quit eventfd"))?,
        )
        .map_err(setup_err("console"))?;
        em.add_subscriber(Arc::new(Mutex::new(console)));
    }

    let count = vms.len();
    let monitor = Arc::new(Mutex::new(Monitor {
        vms,
        reports: vec![None; count],
        signals,
        quit,
        signal: None,
    }));
    em.add_subscriber(monitor.clone());

    {
        let mut m = lock(&monitor);
        for i in 0..m.vms.len() {
            let name = m.vms[i].name.clone();
            m.vms[i]
                .start()
                .map_err(|source| MonitorError::Vm { name, source })?;
        }
    }

    while !lock(&monitor).done() {
        match em.run() {
            Ok(_) => {}
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
            Err(e) => {
                let mut m = lock(&monitor);
                m.stop_all("event loop failed");
                for vm in &mut m.vms {
                    vm.finish(VmOutcome::Stopped("event loop failed".into()));
                }
                return Err(MonitorError::EventLoop(e));
            }
        }
    }

    let mut m = lock(&monitor);
    let vms = m.reports.iter_mut().filter_map(Option::take).collect();
    Ok(MonitorReport {
        vms,
        signal: m.signal,
        peak_rss_kib: crate::host::peak_rss_kib(),
    })
}
