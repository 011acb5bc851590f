//! The monitor's events: signals, the console's quit request, the
//! scheduler, allocator and statistics ticks, VMs that start stopping,
//! and the life-cycle workers' results.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde_json::json;

use super::workers::{Done, Job, Launch};
use super::{AfterStop, Monitor, VmId, VmState};
use crate::host::signal_name;
use crate::vm::{Vm, VmError, VmReport};

const TAG_SIGNAL: u32 = 0;
const TAG_QUIT: u32 = 1;
const TAG_SCHED: u32 = 2;
const TAG_STATS: u32 = 3;
const TAG_MEM: u32 = 4;
const TAG_EXITS: u32 = 5;
const TAG_WORKERS: u32 = 6;
const TAG_CAP: u32 = 7;
const TAG_IO: u32 = 8;
const TAG_NET: u32 = 9;

/// Finished builds and tear-downs taken in per turn of the loop.
const DONE_PER_EVENT: usize = 16;

impl Monitor {
    /// VMs whose vCPUs stopped (a guest reset, a failure, a stop request):
    /// each goes to a worker to be torn down.
    fn on_exits(&mut self) {
        for id in self.exits.take() {
            self.vm_exited(id);
        }
    }

    fn vm_exited(&mut self, id: VmId) {
        let Some(entry) = self.vms.get_mut(&id) else {
            return;
        };
        if !matches!(entry.state, VmState::Running(_)) {
            return; // a created VM asked to stop is already with a worker
        }
        let Some(VmState::Running(vm)) = entry.transition(VmState::Stopping) else {
            return;
        };
        entry.last_balloon = vm.devices.balloon.as_ref().map(|b| self.mem.stats(id, b));
        entry.last_io = vm
            .devices
            .disks
            .as_ref()
            .map(|d| d.to_json(entry.io_weight, self.io.vm_stats(id)));
        self.io.remove_vm(id);
        self.net.remove_vm(id);
        let throttle_events = self.sched.vm_stats(id).throttle_events;
        self.sched.remove_vm(id);
        self.submit(Job::TearDown {
            id,
            vm,
            throttle_events,
        });
    }

    /// Takes in what the workers finished, at most [`DONE_PER_EVENT`] at a
    /// time: the rest waits for the next turn of the loop, after the ticks
    /// that came due meanwhile (200 VMs stopping at once made one turn of
    /// the loop take 7 ms).
    /// The loop does not wait for a worker that is handing a result in
    /// (it may have preempted it, and a normal thread waits its turn among
    /// busy vCPUs): with the scheduler's ticks, it comes back at the next.
    fn on_workers(&mut self) {
        let _ = self.workers.done_evt.read();
        for _ in 0..DONE_PER_EVENT {
            match self.workers.try_done(!self.host.scheduler) {
                Ok(Some(done)) => self.finished(done),
                Ok(None) => return,
                Err(_busy) => {
                    self.workers_busy = true;
                    return;
                }
            }
        }
        // More may be waiting: come back to them.
        let _ = self.workers.done_evt.write(1);
    }

    /// A worker finished building or tearing down a VM.
    pub(super) fn finished(&mut self, done: Done) {
        match done {
            Done::Built {
                id,
                result,
                output,
                started,
            } => self.built(id, result, output, started),
            Done::TornDown { id, report } => self.torn_down(id, report),
        }
    }

    fn built(
        &mut self,
        id: VmId,
        result: Result<Box<Vm>, VmError>,
        output: Option<std::sync::Arc<crate::output::OutputRing>>,
        started: bool,
    ) {
        let Some(entry) = self.vms.get_mut(&id) else {
            return;
        };
        if output.is_some() {
            entry.output = output;
        }
        let vm = match result {
            Ok(vm) => vm,
            Err(e) => {
                let message = format!("VM {}: {e}", entry.name);
                log::error!("{message}");
                for w in entry.waiting.drain(..) {
                    w.complete(Err(message.clone()));
                }
                if let Some(ring) = &entry.output {
                    self.plan.terminal.remove(ring);
                }
                if entry.from_file {
                    // A VM of the monitor's own file: the run fails.
                    self.fatal.get_or_insert(message);
                    self.vms.remove(&id);
                    self.stop_all("another VM could not be built");
                } else {
                    self.vms.remove(&id);
                }
                return;
            }
        };
        if let Some((console, target)) = &self.console {
            if *console == id {
                *crate::bus::lock(target) = Some(vm.serial.clone());
            }
        }
        let state = if started {
            VmState::Running(vm)
        } else {
            VmState::Created(vm)
        };
        let name = state.name();
        entry.transition(state);
        let waiting: Vec<_> = entry.waiting.drain(..).collect();
        let reply = json!({"vm": entry.name, "state": name});
        if started {
            self.admit(id);
        }
        if self.shutting_down {
            // Built while the monitor stops: stop it at once.
            self.stop_vm(id, "the monitor is shutting down");
        }
        for w in waiting {
            w.complete(Ok(reply.clone()));
        }
    }

    /// A VM that runs now joins the CPU scheduler and the memory budget.
    pub(super) fn admit(&mut self, id: VmId) {
        let Some(e) = self.vms.get(&id) else { return };
        let VmState::Running(vm) = &e.state else {
            return;
        };
        self.sched.add_vm(id, vm, &e.cpu);
        if let Some(b) = &vm.devices.balloon {
            self.mem.add_vm(id, b, &e.memory);
        }
        if let Some(d) = &vm.devices.disks {
            self.io.add_vm(id, e.io_weight, d.share.clone(), d.wakers());
        }
        // Interfaces go under the VM's share of host.net when there is one
        // (without a budget they are left unlimited).
        if self.net.budget().is_some() && !vm.devices.net.is_empty() {
            let bucket = std::sync::Arc::new(crate::share::SharedBucket::new());
            let mut wakers: Vec<std::sync::Arc<dyn crate::share::Wake>> = Vec::new();
            for n in &vm.devices.net {
                n.shared.set_share(bucket.clone());
                wakers.push(n.shared.clone());
            }
            self.net.add_vm(id, e.net_weight, bucket, wakers);
        }
    }

    /// A worker tore a VM down: it is gone, and its share of the memory
    /// budget goes to the others only now.
    fn torn_down(&mut self, id: VmId, report: Box<VmReport>) {
        self.mem.remove_vm(id);
        log_report(&report);
        let Some(entry) = self.vms.get_mut(&id) else {
            return;
        };
        entry.paused = false;
        entry.last_net = report.net.clone();
        entry.last_vsock = report.vsock.clone();
        entry.transition(VmState::Stopped(report));
        match entry.after_stop {
            AfterStop::Keep => {
                for w in entry.waiting.drain(..) {
                    w.complete(Ok(json!({"vm": entry.name, "state": "stopped"})));
                }
            }
            AfterStop::Delete => {
                if let Some(mut e) = self.vms.remove(&id) {
                    if let Some(ring) = &e.output {
                        self.plan.terminal.remove(ring);
                    }
                    for w in e.waiting.drain(..) {
                        w.complete(Ok(json!({"vm": e.name, "state": "deleted"})));
                    }
                }
            }
            AfterStop::Restart => {
                entry.after_stop = AfterStop::Keep;
                entry.last_balloon = None;
                entry.last_net.clear();
                entry.last_vsock = None;
                entry.last_io = None;
                if let Some(ring) = entry.output.take() {
                    self.plan.terminal.remove(&ring);
                }
                entry.transition(VmState::Building);
                self.build(id, Launch::Now);
            }
        }
        if self.done() {
            self.write_stats(true);
        }
    }

    fn on_sched_tick(&mut self) {
        let running = self
            .vms
            .iter()
            .filter_map(|(id, e)| e.running().map(|vm| (*id, vm)));
        self.sched.on_tick(running);
        if std::mem::take(&mut self.workers_busy) {
            let _ = self.workers.done_evt.write(1);
        }
        let vms = &self.vms;
        self.retries.retry(|id, req| {
            let devices = &vms.get(&id)?.running()?.devices;
            Some(super::retry::deliver(devices, req, false))
        });
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
        if self.net.budget().is_some() {
            add(Events::with_data(self.net.timer(), TAG_NET, EventSet::IN));
        }
        if self.io.budget().is_some() {
            add(Events::with_data(self.io.timer(), TAG_IO, EventSet::IN));
        }
        add(Events::with_data(
            self.sched.cap_timer(),
            TAG_CAP,
            EventSet::IN,
        ));
        add(Events::with_data(
            self.exits.eventfd(),
            TAG_EXITS,
            EventSet::IN,
        ));
        add(Events::with_data(
            &self.workers.done_evt,
            TAG_WORKERS,
            EventSet::IN,
        ));
        if self.stats_file.is_some() {
            add(Events::with_data(
                &self.stats_timer,
                TAG_STATS,
                EventSet::IN,
            ));
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
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
            TAG_CAP => {
                let running = self
                    .vms
                    .iter()
                    .filter_map(|(id, e)| e.running().map(|vm| (*id, vm)));
                self.sched.on_cap_timer(running);
            }
            TAG_STATS => {
                let _ = self.stats_timer.wait();
                self.write_stats(false);
            }
            TAG_MEM => self.on_mem_tick(),
            TAG_IO => self.io.on_timer(),
            TAG_NET => self.net.on_timer(),
            TAG_EXITS => self.on_exits(),
            TAG_WORKERS => self.on_workers(),
            other => log::warn!("monitor: unexpected event tag {other}"),
        }
    }
}
