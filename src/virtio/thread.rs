//! A VM's device thread: one epoll loop (event-manager) that runs the
//! handlers of the VM's active virtio devices. The transport adds a
//! handler when its driver sets DRIVER_OK and removes it (synchronously,
//! so the device never touches a queue after a reset) when the driver
//! resets the device. No device work runs on the monitor's event loop,
//! which every VM shares, or on a vCPU thread.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{
    EventManager, EventOps, EventSet, Events, MutEventSubscriber, RemoteEndpoint, SubscriberId,
};
use vmm_sys_util::eventfd::EventFd;

use super::{QueueHandler, Queues};
use crate::vcpu::ThreadIds;

/// What the device thread runs.
pub type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// The way to the device thread, for the transports of the VM's devices.
#[derive(Clone)]
pub struct DeviceThreadHandle {
    endpoint: RemoteEndpoint<Subscriber>,
}

impl DeviceThreadHandle {
    /// Starts serving `handler` (blocks until the device thread has run
    /// its `start`).
    pub fn add(&self, handler: Subscriber) -> Result<SubscriberId, event_manager::Error> {
        self.endpoint
            .call_blocking(move |ops| Ok::<_, event_manager::Error>(ops.add_subscriber(handler)))
    }

    /// Stops serving a handler and drops it on the device thread; returns
    /// once it is gone.
    pub fn remove(&self, id: SubscriberId) -> Result<(), event_manager::Error> {
        self.endpoint
            .call_blocking(move |ops| ops.remove_subscriber(id).map(drop))
    }
}

/// The device thread of one VM.
pub struct DeviceThread {
    handle: DeviceThreadHandle,
    stop: Arc<AtomicBool>,
    ids: Option<ThreadIds>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Starts the thread, which installs `seccomp` on itself first.
    pub fn spawn(
        name: String,
        seccomp: Option<Arc<seccompiler::BpfProgram>>,
    ) -> io::Result<DeviceThread> {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            // Started by a life-cycle worker: back to the VMs' priority.
            if let Err(e) = crate::host::leave_monitor_priority() {
                log::warn!("device thread: cannot set its priority: {e}");
            }
            let mut em = match EventManager::<Subscriber>::new() {
                Ok(em) => em,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e.to_string())));
                    return;
                }
            };
            let ids = crate::host::current_thread_ids()
                .map(|(tid, cpu_clock)| ThreadIds { tid, cpu_clock });
            if let Some(filter) = &seccomp {
                if let Err(e) = crate::seccomp::apply(filter) {
                    let _ = tx.send(Err(io::Error::other(e.to_string())));
                    return;
                }
            }
            let handle = DeviceThreadHandle {
                endpoint: em.remote_endpoint(),
            };
            if tx.send(Ok((handle, ids))).is_err() {
                return;
            }
            while !stopping.load(Ordering::Acquire) {
                match em.run() {
                    Ok(_) => {}
                    Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
                    Err(e) => {
                        log::error!("device thread: its event loop failed: {e}");
                        break;
                    }
                }
            }
        })?;
        let (handle, ids) = rx
            .recv()
            .map_err(|_| io::Error::other("the device thread ended before it started"))??;
        Ok(DeviceThread {
            handle,
            stop,
            ids,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> DeviceThreadHandle {
        self.handle.clone()
    }

    /// CPU time the thread has used, in ns.
    pub fn cpu_ns(&self) -> u64 {
        self.ids
            .and_then(|ids| crate::host::thread_cpu_ns(ids.cpu_clock))
            .unwrap_or(0)
    }

    /// Stops the thread (dropping every handler on it) and waits for it.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let stop = self.stop.clone();
        let sent = self
            .handle
            .endpoint
            .fire(move |_| stop.store(true, Ordering::Release));
        if sent.is_err() || thread.join().is_err() {
            log::error!("a device thread did not stop cleanly");
        }
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An active device on the device thread: its handler, its queues and
/// their notification eventfds (tags `0..queues`).
pub(crate) struct Active {
    handler: Box<dyn QueueHandler>,
    queues: Queues,
    notify: Arc<Vec<EventFd>>,
    failed: bool,
}

impl Active {
    pub(crate) fn new(
        handler: Box<dyn QueueHandler>,
        queues: Queues,
        notify: Arc<Vec<EventFd>>,
    ) -> Self {
        Active {
            handler,
            queues,
            notify,
            failed: false,
        }
    }

    fn check(&mut self, result: Result<(), super::QueueError>, ops: &mut EventOps) {
        if let Err(e) = result {
            self.queues.state.fail(&e);
            self.failed = true;
            for (tag, evt) in self.notify.iter().enumerate() {
                let _ = ops.remove(Events::with_data(evt, tag as u32, EventSet::IN));
            }
        }
    }
}

impl MutEventSubscriber for Active {
    fn init(&mut self, ops: &mut EventOps) {
        for (tag, evt) in self.notify.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, tag as u32, EventSet::IN)) {
                log::error!(
                    "{}: cannot watch queue {tag}'s notifications: {e}",
                    self.queues.state.name
                );
            }
        }
        let result = self.handler.start(&mut self.queues, ops);
        self.check(result, ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.failed {
            // The device needs a reset: stop listening to whatever woke us
            // (a level-triggered fd would otherwise wake us forever).
            let _ = ops.remove(Events::with_data_raw(
                events.fd(),
                events.data(),
                events.event_set(),
            ));
            return;
        }
        let tag = events.data();
        match self.notify.get(tag as usize) {
            Some(evt) => {
                let _ = evt.read();
                let result = self
                    .handler
                    .queue_ready_ops(tag as usize, &mut self.queues, ops);
                self.check(result, ops);
                self.queues.state.count_notification();
            }
            None => {
                let result = self
                    .handler
                    .event(tag, events.event_set(), &mut self.queues, ops);
                self.check(result, ops);
            }
        }
    }
}
