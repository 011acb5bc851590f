//! The allocator's runtime: a timerfd tick in the event loop. Each tick it
//! reads every balloon (what the device counted in it and the guest's last
//! statistics), asks the guests for fresh statistics, runs the policy and
//! sets each balloon's target. Without a budget it only keeps fixed
//! balloon sizes and polls statistics.
//!
//! What a VM holds is its RAM less the pages the device saw inflated (not
//! the `actual` the driver claims), so a guest that claims a full balloon
//! while keeping its pages gets no more memory; one that lags its target
//! by more than [`LAG_PAGES`] for [`LAG_TICKS`] ticks is reported as over
//! its target (statistics, control socket, a warning).

use std::io;
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use super::policy::{Decision, Limits, Observation, Params, Policy, VmId};
use crate::bus::try_lock;
use crate::config::MemorySpec;
use crate::config::{HostMemorySpec, DEFAULT_MEMORY_TICK_MS};
use crate::layout::MIB;
use crate::mem::BalloonHandle;
use crate::virtio::balloon::PAGE_SIZE;

/// How far below its target (in pages) a balloon may stay...
pub const LAG_PAGES: u64 = 256;
/// ...for how many ticks before the VM is reported as over its target.
pub const LAG_TICKS: u32 = 10;

/// A VM's balloon figures for the statistics file, in MiB unless named.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BalloonStats {
    /// The balloon size asked of the guest, and what it holds.
    pub balloon_target_mib: u64,
    pub balloon_actual_mib: u64,
    /// RAM less the balloon: what the guest has.
    pub guest_mib: u64,
    /// The allocator's view (with a budget): target allocation, ideal, demand.
    pub alloc_target_mib: Option<u64>,
    pub alloc_ideal_mib: Option<u64>,
    pub demand_mib: Option<u64>,
    /// The guest's own figures, from its last statistics.
    pub guest_free_mib: Option<u64>,
    pub guest_available_mib: Option<u64>,
    pub guest_total_mib: Option<u64>,
    pub stats_updates: u64,
    pub inflated_pages: u64,
    pub deflated_pages: u64,
    pub reported_mib: u64,
    /// What the device counted in the balloon (`balloon_actual_mib` is
    /// the driver's claim).
    pub balloon_held_mib: u64,
    /// The guest has kept more than its target for a while.
    pub over_target: bool,
    pub needs_reset: bool,
    /// Doorbells its device thread took (queue notifications through
    /// ioeventfds, which the access verifier does not see).
    pub notifications: u64,
    pub failures: u64,
    pub last_failure: Option<String>,
}

struct Tracked {
    id: VmId,
    /// Ask for statistics every this many ticks.
    stats_every: u64,
    decision: Option<Decision>,
    /// Consecutive ticks the balloon lagged its target.
    lagging: u32,
    /// What the last tick that could read the balloon saw, for a tick
    /// that finds its lock held.
    last: Option<Observation>,
    /// A balloon size (MiB) decided while the device's lock was held,
    /// set by the next tick that gets it.
    pending_mib: Option<u64>,
    /// The figures of the last `stats` that got the lock.
    figures: std::cell::RefCell<Option<BalloonStats>>,
}

pub struct MemoryManager {
    policy: Option<Policy>,
    timer: TimerFd,
    tick: Duration,
    ticks: u64,
    cost_ns: u64,
    /// Balloons a tick found locked.
    busy: u64,
    vms: Vec<Tracked>,
}

fn pages_to_mib(pages: u32) -> u64 {
    u64::from(pages) * PAGE_SIZE / MIB
}

impl MemoryManager {
    /// An allocator for `host` (a budget), or only the balloons' upkeep.
    pub fn new(host: Option<HostMemorySpec>) -> io::Result<Self> {
        let tick_ms = host.map_or(DEFAULT_MEMORY_TICK_MS, |h| h.tick_ms);
        Ok(MemoryManager {
            policy: host.map(|h| Policy::new(Params::with_budget(h.budget_mib))),
            timer: TimerFd::new().map_err(io::Error::from)?,
            tick: Duration::from_millis(u64::from(tick_ms.max(1))),
            ticks: 0,
            cost_ns: 0,
            busy: 0,
            vms: Vec::new(),
        })
    }

    pub fn timer(&self) -> &TimerFd {
        &self.timer
    }

    /// Takes charge of a VM's balloon.
    pub fn add_vm(&mut self, id: VmId, b: &BalloonHandle, memory: &MemorySpec) {
        let stats_every = match &self.policy {
            Some(_) => 1,
            None => {
                let ms = u64::from(b.options.stats_interval_s) * 1000;
                (ms / self.tick.as_millis().max(1) as u64).max(1)
            }
        };
        match &mut self.policy {
            Some(policy) => policy.add_vm(
                id,
                Limits {
                    floor: memory.floor_mib,
                    ceiling: memory.ceiling_mib,
                    weight: memory.weight,
                },
                b.size_mib,
            ),
            None => b.set_balloon_mib(b.options.target_mib.unwrap_or(0)),
        }
        self.vms.push(Tracked {
            id,
            stats_every,
            decision: None,
            lagging: 0,
            last: None,
            pending_mib: None,
            figures: Default::default(),
        });
    }

    /// Changes a VM's memory weight and floor (the control socket's
    /// `set-memory`).
    pub fn set_limits(
        &mut self,
        id: VmId,
        weight: Option<u32>,
        floor_mib: Option<u64>,
    ) -> Result<Limits, String> {
        match &mut self.policy {
            Some(policy) => policy.set_limits(id, weight, floor_mib),
            None => Err("not supported: this monitor has no memory budget (host.memory)".into()),
        }
    }

    pub fn remove_vm(&mut self, id: VmId) {
        self.vms.retain(|t| t.id != id);
        if let Some(p) = &mut self.policy {
            p.remove_vm(id);
        }
    }

    /// Arms the periodic tick (VMs with balloons may come at any time; a
    /// tick with none costs next to nothing).
    pub fn start(&mut self) -> io::Result<()> {
        self.timer
            .reset(self.tick, Some(self.tick))
            .map_err(io::Error::from)
    }

    /// One tick over the running VMs' balloons.
    ///
    /// The loop runs real-time and must not wait for a vCPU thread that
    /// holds a balloon's lock (an MMIO access to its registers) and was
    /// preempted among busy vCPUs: a balloon whose lock is held counts
    /// with what the last tick saw, and a new size for it waits for the
    /// next tick that gets the lock.
    pub fn on_tick<'a>(&mut self, vms: impl Iterator<Item = (VmId, &'a BalloonHandle)>) {
        let start = crate::host::current_thread_cpu_ns();
        let _ = self.timer.wait();
        self.ticks += 1;
        let vms: Vec<(VmId, &BalloonHandle)> = vms.collect();
        let find = |id: VmId| vms.iter().find(|(v, _)| *v == id).map(|(_, b)| *b);
        let mut obs = Vec::with_capacity(vms.len());
        for t in &mut self.vms {
            let Some(b) = find(t.id) else { continue };
            let Some(mut dev) = try_lock(&b.device) else {
                self.busy += 1;
                obs.extend(t.last.map(|o| (t.id, o)));
                continue;
            };
            if let Some(mib) = t.pending_mib.take() {
                dev.set_target_pages(b.pages(mib));
            }
            let balloon = dev.device();
            let held = balloon.held_pages();
            let current = b.size_mib.saturating_sub(held * PAGE_SIZE / MIB);
            // The guest's own figures cannot say it has more to give than it holds.
            let stats = balloon.stats();
            let available = (stats.updates > 0)
                .then(|| stats.available.or(stats.free))
                .flatten()
                .map(|bytes| (bytes / MIB).min(current));
            t.last = Some(Observation { current, available });
            obs.push((t.id, Observation { current, available }));
            track_lag(
                t,
                u64::from(balloon.target_pages()),
                held,
                &dev.state().name,
            );
            if self.ticks % t.stats_every == 0 {
                balloon.request_stats();
            }
        }
        if let Some(policy) = &mut self.policy {
            for d in policy.tick(&obs) {
                let Some(t) = self.vms.iter_mut().find(|t| t.id == d.vm) else {
                    continue;
                };
                t.decision = Some(d);
                if let Some(b) = find(d.vm) {
                    let mib = b.size_mib.saturating_sub(d.target);
                    match try_lock(&b.device) {
                        Some(mut dev) => dev.set_target_pages(b.pages(mib)),
                        None => t.pending_mib = Some(mib),
                    }
                }
            }
        }
        self.cost_ns += crate::host::current_thread_cpu_ns().saturating_sub(start);
    }

    /// Ticks so far and their cost to the event loop, in ns.
    pub fn cost(&self) -> (u64, u64) {
        (self.ticks, self.cost_ns)
    }

    pub fn budget_mib(&self) -> Option<u64> {
        self.policy.as_ref().map(|p| p.params().budget)
    }

    /// Ticks that found a balloon's lock held (and went on without it).
    pub fn busy(&self) -> u64 {
        self.busy
    }

    /// A VM's balloon figures: those of the last call when a vCPU holds
    /// the balloon's lock now (see [`MemoryManager::on_tick`]).
    pub fn stats(&self, id: VmId, b: &BalloonHandle) -> BalloonStats {
        let tracked = self.vms.iter().find(|t| t.id == id);
        let Some(dev) = try_lock(&b.device) else {
            let last = tracked.and_then(|t| t.figures.borrow().clone());
            return last.unwrap_or_default();
        };
        let figures = self.figures(tracked, b, &dev);
        if let Some(t) = tracked {
            *t.figures.borrow_mut() = Some(figures.clone());
        }
        figures
    }

    fn figures(
        &self,
        tracked: Option<&Tracked>,
        b: &BalloonHandle,
        dev: &crate::virtio::mmio::MmioTransport<crate::virtio::balloon::Balloon>,
    ) -> BalloonStats {
        let balloon = dev.device();
        let s = balloon.stats();
        let c = balloon.counters();
        let (failures, last) = dev.state().failures();
        let decision = tracked.and_then(|t| t.decision);
        let actual = pages_to_mib(balloon.actual_pages());
        let held_mib = balloon.held_pages() * PAGE_SIZE / MIB;
        BalloonStats {
            balloon_target_mib: pages_to_mib(balloon.target_pages()),
            balloon_actual_mib: actual,
            guest_mib: b.size_mib.saturating_sub(held_mib),
            balloon_held_mib: held_mib,
            over_target: tracked.is_some_and(|t| t.lagging >= LAG_TICKS),
            alloc_target_mib: decision.map(|d| d.target),
            alloc_ideal_mib: decision.map(|d| d.ideal),
            demand_mib: decision.map(|d| d.demand),
            guest_free_mib: s.free.map(|v| v / MIB),
            guest_available_mib: s.available.map(|v| v / MIB),
            guest_total_mib: s.total.map(|v| v / MIB),
            stats_updates: s.updates,
            inflated_pages: c.inflated_pages,
            deflated_pages: c.deflated_pages,
            reported_mib: c.reported_bytes / MIB,
            needs_reset: dev.state().needs_reset(),
            notifications: dev.state().notifications(),
            failures,
            last_failure: last,
        }
    }
}

/// Counts ticks a balloon lags its target by more than [`LAG_PAGES`];
/// warns once when the lag becomes long enough to report.
fn track_lag(t: &mut Tracked, target_pages: u64, held_pages: u64, name: &str) {
    if target_pages > held_pages + LAG_PAGES {
        t.lagging = t.lagging.saturating_add(1);
        if t.lagging == LAG_TICKS {
            log::warn!(
                "{name}: the guest keeps {} MiB more than its target for {LAG_TICKS} ticks \
                 (asked for a balloon of {} MiB, it holds {} MiB)",
                (target_pages - held_pages) * PAGE_SIZE / MIB,
                target_pages * PAGE_SIZE / MIB,
                held_pages * PAGE_SIZE / MIB
            );
        }
    } else {
        t.lagging = 0;
    }
}
