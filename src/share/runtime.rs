//! The share runtime: the [`SharePolicy`] ticked on the monitor's event
//! loop (a timerfd), fed from and filling the VMs' [`SharedBucket`]s, and
//! waking the devices whose work waited for tokens. One runtime per host
//! budget: `host.io` for the disks (and, later, `host.net` for the network
//! interfaces, which reuse it unchanged).
//!
//! Without a budget there is no policy and no tick: every VM's bucket is
//! filled once with an unlimited grant and never looked at again.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use super::policy::MAX_TICK_BUDGET_MILLI;
use super::{Grant, ShareError, SharePolicy, ShareStats, SharedBucket, VmId};
use crate::config::HostShareSpec;

/// Why a runtime cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Policy(#[from] ShareError),
    #[error("cannot create or arm its timer: {0}")]
    Timer(io::Error),
}

/// A device the tick wakes when its VM's bucket was refilled while work
/// waited for tokens.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// What the runtime keeps of one VM.
struct Member {
    bucket: Arc<SharedBucket>,
    wakers: Vec<Arc<dyn Wake>>,
    weight: u32,
}

/// A host budget shared by weight, at run time.
pub struct ShareRuntime {
    spec: Option<HostShareSpec>,
    policy: Option<SharePolicy>,
    vms: BTreeMap<VmId, Member>,
    timer: TimerFd,
    ticks: u64,
    cost_ns: u64,
    missed: u64,
}

/// The most ticks one late tick makes up for.
const MAX_CATCH_UP: u64 = 10;

impl ShareRuntime {
    /// A runtime for `spec` (`None`: no budget, nothing is limited).
    pub fn new(spec: Option<HostShareSpec>) -> Result<Self, RuntimeError> {
        let policy = spec.as_ref().map(SharePolicy::new).transpose()?;
        let timer = TimerFd::new().map_err(|e| RuntimeError::Timer(e.into()))?;
        Ok(ShareRuntime {
            spec,
            policy,
            vms: BTreeMap::new(),
            timer,
            ticks: 0,
            cost_ns: 0,
            missed: 0,
        })
    }

    pub fn timer(&self) -> &TimerFd {
        &self.timer
    }

    /// The budget, if there is one.
    pub fn budget(&self) -> Option<HostShareSpec> {
        self.spec
    }

    /// Arms the periodic tick (when there is a budget).
    pub fn start(&mut self) -> Result<(), RuntimeError> {
        let Some(policy) = &self.policy else {
            return Ok(());
        };
        let tick = Duration::from_nanos(policy.tick_ns());
        self.timer
            .reset(tick, Some(tick))
            .map_err(|e| RuntimeError::Timer(e.into()))
    }

    /// Adds a VM with its bucket and the devices that take from it. With
    /// a budget, its first grant comes with the next tick (a device that
    /// asks before then waits for it); without, it is unlimited at once.
    pub fn add_vm(
        &mut self,
        id: VmId,
        weight: u32,
        bucket: Arc<SharedBucket>,
        wakers: Vec<Arc<dyn Wake>>,
    ) {
        match &mut self.policy {
            Some(policy) => policy.add_vm(id, weight),
            None => {
                // A device that asked before now (the VM's vCPUs may already
                // run) waits for this fill: wake it.
                let waiting = bucket.fill(&Grant {
                    vm: id,
                    bytes_milli: None,
                    ops_milli: None,
                });
                if waiting {
                    wakers.iter().for_each(|w| w.wake());
                }
            }
        }
        self.vms.insert(
            id,
            Member {
                bucket,
                wakers,
                weight,
            },
        );
    }

    /// Removes a VM: its share goes to the others from the next tick.
    pub fn remove_vm(&mut self, id: VmId) {
        if let Some(policy) = &mut self.policy {
            policy.remove_vm(id);
        }
        self.vms.remove(&id);
    }

    /// Changes a VM's weight (from the next tick). False: no such VM.
    pub fn set_weight(&mut self, id: VmId, weight: u32) -> bool {
        let Some(m) = self.vms.get_mut(&id) else {
            return false;
        };
        m.weight = weight;
        if let Some(policy) = &mut self.policy {
            policy.set_weight(id, weight);
        }
        true
    }

    pub fn weight(&self, id: VmId) -> Option<u32> {
        self.vms.get(&id).map(|m| m.weight)
    }

    /// The VM's bucket counters.
    pub fn vm_stats(&self, id: VmId) -> Option<ShareStats> {
        self.vms.get(&id).map(|m| m.bucket.stats())
    }

    /// The timer fired: one tick.
    pub fn on_timer(&mut self) {
        let start = crate::host::current_thread_cpu_ns();
        // A late loop finds several expirations: the budget of each is
        // handed out now, or the host would lose it (at most 10 ticks' worth).
        let expired = self.timer.wait().unwrap_or(1).clamp(1, MAX_CATCH_UP);
        self.missed += expired - 1;
        self.tick_times(expired);
        self.ticks += 1;
        self.cost_ns += crate::host::current_thread_cpu_ns().saturating_sub(start);
    }

    /// One tick: usage in, grants out, waiting devices woken.
    pub fn tick(&mut self) {
        self.tick_times(1);
    }

    /// A tick standing for `n` ticks of time: each grant times `n`.
    fn tick_times(&mut self, n: u64) {
        let Some(policy) = &mut self.policy else {
            return;
        };
        let tick_ns = policy.tick_ns();
        let usage: Vec<_> = self
            .vms
            .iter()
            .map(|(id, m)| (*id, m.bucket.usage(tick_ns)))
            .collect();
        for mut grant in policy.tick(&usage) {
            let scale = |g: Option<u64>| g.map(|g| g.saturating_mul(n).min(MAX_TICK_BUDGET_MILLI));
            grant.bytes_milli = scale(grant.bytes_milli);
            grant.ops_milli = scale(grant.ops_milli);
            if let Some(m) = self.vms.get(&grant.vm) {
                if m.bucket.fill(&grant) {
                    m.wakers.iter().for_each(|w| w.wake());
                }
            }
        }
    }

    /// Ticks so far and the CPU time they cost the event loop, in ns.
    pub fn cost(&self) -> (u64, u64) {
        (self.ticks, self.cost_ns)
    }

    /// Timer expirations the loop was too late for (caught up in a later tick).
    pub fn missed_ticks(&self) -> u64 {
        self.missed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[derive(Default)]
    struct Count(AtomicU64);

    impl Wake for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn budget(bytes_per_s: u64) -> Option<HostShareSpec> {
        Some(HostShareSpec {
            bytes_per_s: Some(bytes_per_s),
            ops_per_s: None,
            tick_ms: 10,
        })
    }

    /// Two greedy devices taking 4 KiB requests until refused, tick after
    /// tick: what each got.
    fn contend(rt: &mut ShareRuntime, a: &SharedBucket, b: &SharedBucket, ticks: u32) -> [u64; 2] {
        let mut got = [0u64; 2];
        for _ in 0..ticks {
            for (i, bucket) in [a, b].into_iter().enumerate() {
                while bucket.try_take(4096, 1) {
                    got[i] += 4096;
                }
            }
            rt.tick();
        }
        got
    }

    #[test]
    fn contending_vms_get_the_budget_by_weight_and_waiting_ones_are_woken() {
        let mut rt = ShareRuntime::new(budget(100 << 20)).expect("runtime");
        let (a, b) = (Arc::new(SharedBucket::new()), Arc::new(SharedBucket::new()));
        let (wa, wb) = (Arc::new(Count::default()), Arc::new(Count::default()));
        rt.add_vm(0, 100, a.clone(), vec![wa.clone()]);
        rt.add_vm(1, 300, b.clone(), vec![wb.clone()]);
        rt.tick();
        let got = contend(&mut rt, &a, &b, 200);
        let ratio = got[1] as f64 / got[0] as f64;
        assert!((ratio - 3.0).abs() < 0.3, "got {got:?}, ratio {ratio}");
        // 200 ticks of 10 ms at 100 MiB/s: about 200 MiB between them.
        let total = (got[0] + got[1]) as f64 / f64::from(100 << 20) / 2.0;
        assert!((total - 1.0).abs() < 0.05, "total {total} of the budget");
        assert!(wa.0.load(Ordering::SeqCst) > 100, "a was woken");
        assert!(wb.0.load(Ordering::SeqCst) > 100, "b was woken");
        assert!(rt.vm_stats(0).expect("stats").throttle_events > 0);
        // A new weight applies from the next tick.
        assert!(rt.set_weight(0, 300));
        let got = contend(&mut rt, &a, &b, 200);
        let ratio = got[1] as f64 / got[0] as f64;
        assert!((ratio - 1.0).abs() < 0.1, "got {got:?}, ratio {ratio}");
    }

    #[test]
    fn a_lone_vm_uses_the_whole_budget_and_no_budget_means_no_limit() {
        let mut rt = ShareRuntime::new(budget(100 << 20)).expect("runtime");
        let (a, b) = (Arc::new(SharedBucket::new()), Arc::new(SharedBucket::new()));
        rt.add_vm(0, 100, a.clone(), Vec::new());
        rt.add_vm(1, 10_000, b.clone(), Vec::new());
        rt.tick();
        let mut got = 0;
        for _ in 0..100 {
            while a.try_take(4096, 1) {
                got += 4096;
            }
            rt.tick();
        }
        let share = got as f64 / f64::from(100 << 20);
        assert!(share > 0.95 && share < 1.05, "idle b: a got {share} of 1 s");
        let mut free = ShareRuntime::new(None).expect("runtime");
        let c = Arc::new(SharedBucket::new());
        free.add_vm(0, 1, c.clone(), Vec::new());
        assert!((0..10_000).all(|_| c.try_take(1 << 20, 1)), "unlimited");
        free.start().expect("no timer to arm");
    }
}
