//! The monitor's events: signals, the console's quit request, the
//! scheduler, allocator and statistics ticks, each VM's exit eventfd, and
//! tear-down threads finishing.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::{Monitor, VmId, VmState};
use crate::host::signal_name;
use crate::lifecycle::VmOutcome;
use crate::vm::{Vm, VmReport};

pub(super) const TAG_SIGNAL: u32 = 0;
pub(super) const TAG_QUIT: u32 = 1;
pub(super) const TAG_SCHED: u32 = 2;
pub(super) const TAG_STATS: u32 = 3;
pub(super) const TAG_MEM: u32 = 4;
pub(super) const TAG_REAPED: u32 = 5;
pub(super) const TAG_IO: u32 = 6;
/// A VM's exit eventfd: `TAG_VM_EXIT + id`.
pub(super) const TAG_VM_EXIT: u32 = 16;

fn vm_exit_events(vm: &Vm, id: VmId) -> Events {
    Events::with_data(&vm.shared.exit_evt, TAG_VM_EXIT + id as u32, EventSet::IN)
}

/// Stopping one VM and freeing what it held, then telling the loop.
struct TearDown {
    id: VmId,
    throttle_events: u64,
    tx: std::sync::mpsc::Sender<(VmId, VmReport)>,
    done: Option<vmm_sys_util::eventfd::EventFd>,
}

impl TearDown {
    fn run(self, vm: Box<Vm>) {
        // `finish` consumes the VM: memory and fds are gone when it returns.
        let mut report = (*vm).finish(VmOutcome::Error("exit event without a reason".into()));
        report.throttle_events = self.throttle_events;
        let _ = self.tx.send((self.id, report));
        if let Some(evt) = &self.done {
            let _ = evt.write(1);
        }
    }
}

impl Monitor {
    /// A VM's exit eventfd fired: hand the VM to a tear-down thread.
    fn vm_exited(&mut self, id: VmId, ops: &mut EventOps) {
        let Some(entry) = self.vms.get_mut(&id) else {
            return;
        };
        let Some(VmState::Running(vm)) = entry.transition(VmState::Stopping) else {
            return;
        };
        let _ = vm.shared.exit_evt.read();
        let _ = ops.remove(vm_exit_events(&vm, id));
        entry.last_balloon = vm.devices.balloon.as_ref().map(|b| self.mem.stats(id, b));
        entry.last_io = vm
            .devices
            .disks
            .as_ref()
            .map(|d| d.to_json(entry.io_weight, self.io.vm_stats(id)));
        self.io.remove_vm(id);
        let job = TearDown {
            id,
            throttle_events: self.sched.vm_stats(id).throttle_events,
            tx: self.reap_tx.clone(),
            done: self.reaped_evt.try_clone().ok(),
        };
        self.sched.remove_vm(id);
        // The tear-down (joining vCPU threads, unmapping guest memory,
        // closing fds) can take a while; it must not hold up the loop.
        let (hand_over, receive) = std::sync::mpsc::channel::<(Box<Vm>, TearDown)>();
        let spawned = std::thread::Builder::new()
            .name(crate::builder::thread_name(&entry.name, "-end"))
            .spawn(move || {
                if let Ok((vm, job)) = receive.recv() {
                    job.run(vm);
                }
            });
        match spawned {
            Ok(_) => {
                let _ = hand_over.send((vm, job));
            }
            Err(e) => {
                log::warn!("{}: tearing down on the event loop ({e})", entry.name);
                job.run(vm);
            }
        }
    }

    /// Tear-downs finished: the VMs are gone; release their memory share.
    fn reaped(&mut self) {
        let _ = self.reaped_evt.read();
        while let Ok((id, report)) = self.reaped.try_recv() {
            self.mem.remove_vm(id);
            log_report(&report);
            if let Some(entry) = self.vms.get_mut(&id) {
                entry.transition(VmState::Stopped(Box::new(report)));
            }
        }
        if self.done() {
            self.write_stats();
        }
    }

    fn on_sched_tick(&mut self) {
        let running = self
            .vms
            .iter()
            .filter_map(|(id, e)| e.running().map(|vm| (*id, vm)));
        self.sched.on_tick(running);
    }

    fn on_mem_tick(&mut self) {
        let balloons = self.vms.iter().filter_map(|(id, e)| {
            let b = e.running()?.devices.balloon.as_ref()?;
            Some((*id, b))
        });
        self.mem.on_tick(balloons);
    }
}

fn log_report(report: &VmReport) {
    let e = &report.exits;
    let level = if report.outcome.is_clean() {
        log::Level::Info
    } else {
        log::Level::Error
    };
    log::log!(
        level,
        "{}: ran {:.3} s, ended: {} (CPU {:.3} s, throttled {} times; exits: {} pio-in, {} pio-out, {} mmio-read, {} mmio-write, {} interrupted; unclaimed: {} pio, {} mmio; acl denied: {} pio-in, {} pio-out, {} mmio-read, {} mmio-write, {} violations)",
        report.name,
        report.seconds,
        report.outcome,
        report.cpu_ns as f64 / 1e9,
        report.throttle_events,
        e.pio_reads,
        e.pio_writes,
        e.mmio_reads,
        e.mmio_writes,
        e.interrupted,
        report.unclaimed_pio,
        report.unclaimed_mmio,
        report.acl.denied[0],
        report.acl.denied[1],
        report.acl.denied[2],
        report.acl.denied[3],
        report.acl.violations
    );
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
        add(Events::with_data(
            self.sched.timer(),
            TAG_SCHED,
            EventSet::IN,
        ));
        add(Events::with_data(self.mem.timer(), TAG_MEM, EventSet::IN));
        if self.io.budget().is_some() {
            add(Events::with_data(self.io.timer(), TAG_IO, EventSet::IN));
        }
        add(Events::with_data(
            &self.reaped_evt,
            TAG_REAPED,
            EventSet::IN,
        ));
        if self.stats_file.is_some() {
            add(Events::with_data(
                &self.stats_timer,
                TAG_STATS,
                EventSet::IN,
            ));
        }
        for (id, e) in &self.vms {
            if let Some(vm) = e.running() {
                add(vm_exit_events(vm, *id));
            }
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
            TAG_SCHED => self.on_sched_tick(),
            TAG_STATS => {
                let _ = self.stats_timer.wait();
                self.write_stats();
            }
            TAG_MEM => self.on_mem_tick(),
            TAG_REAPED => self.reaped(),
            TAG_IO => self.io.on_timer(),
            tag if tag >= TAG_VM_EXIT => self.vm_exited((tag - TAG_VM_EXIT) as VmId, ops),
            other => log::warn!("monitor: unexpected event tag {other}"),
        }
    }
}
