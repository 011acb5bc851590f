//! The ballooning allocator's policy: pure arithmetic, no devices, no
//! clocks. See `docs/memory.md` for the formula and a worked example.
//!
//! Every tick: each VM's **demand** is estimated from its guest's
//! statistics (used memory plus headroom, within its floor and ceiling);
//! the **ideal** allocations divide the budget (floor first, then a
//! weighted share of what remains, with a tax on idle memory); each VM's
//! **target** then moves toward its ideal in bounded steps, with
//! hysteresis, never letting the targets' total pass the budget.

/// A VM's place in the policy (the monitor's VM index).
pub type VmId = usize;

/// A VM's memory policy, in MiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub floor: u64,
    pub ceiling: u64,
    pub weight: u32,
}

/// What the monitor saw of a VM this tick, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Memory the guest holds now: its RAM less its balloon.
    pub current: u64,
    /// Memory the guest reports it could give up at once (`AVAIL`, else
    /// `MEMFREE`); `None` before its first statistics.
    pub available: Option<u64>,
}

/// Tunables of the allocator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub budget: u64,
    /// Headroom above used memory: this percentage of it, at least `headroom_min`.
    pub headroom_pct: u64,
    pub headroom_min: u64,
    /// The idle memory tax rate τ in [0, 1): memory beyond a VM's demand is
    /// charged 1 / (1 - τ) times as much when dividing.
    pub idle_tax: f64,
    /// The most a target moves in one tick.
    pub max_step: u64,
    /// Differences smaller than this leave a target where it is.
    pub hysteresis: u64,
}

impl Params {
    pub fn with_budget(budget: u64) -> Self {
        Params {
            budget,
            headroom_pct: 10,
            headroom_min: 16,
            idle_tax: 0.75,
            max_step: 64,
            hysteresis: 4,
        }
    }
}

/// A VM's estimated demand: used memory plus headroom, within its floor
/// and ceiling. Without statistics it is the ceiling (no idle tax until
/// the guest says what it uses).
pub fn demand(obs: Observation, limits: Limits, p: &Params) -> u64 {
    let Some(available) = obs.available else {
        return limits.ceiling;
    };
    let used = obs.current.saturating_sub(available);
    let headroom = (used * p.headroom_pct / 100).max(p.headroom_min);
    (used + headroom).clamp(limits.floor, limits.ceiling)
}

/// One VM's input to [`allocate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Claim {
    pub limits: Limits,
    pub demand: u64,
}

/// Divides `budget` MiB: every VM gets its floor, then the rest `R` is
/// shared so that each VM's weight per unit of *cost* is equal, where
/// memory up to its demand costs 1 and memory beyond it (idle memory)
/// costs `k = 1/(1 - tax)`; no VM gets more than its ceiling. With no tax
/// (or every demand met) this is `floor_i + R * w_i / sum(w)`, capped by
/// the ceilings (water-filling). The floors must fit the budget (checked
/// when the config is validated); if they do not, every VM gets its floor.
pub fn allocate(budget: u64, claims: &[Claim], tax: f64) -> Vec<u64> {
    let floors: u64 = claims.iter().map(|c| c.limits.floor).sum();
    let rest = budget.saturating_sub(floors) as f64;
    let k = 1.0 / (1.0 - tax.clamp(0.0, 0.99));
    let caps: Vec<f64> = claims
        .iter()
        .map(|c| c.limits.ceiling.saturating_sub(c.limits.floor) as f64)
        .collect();
    let active: Vec<f64> = claims
        .iter()
        .zip(&caps)
        .map(|(c, cap)| (c.demand.saturating_sub(c.limits.floor) as f64).min(*cap))
        .collect();
    // x_i(t): what VM i gets at price level t, where its cost reaches w_i * t.
    let share = |i: usize, t: f64| -> f64 {
        let c = f64::from(claims[i].limits.weight.max(1)) * t;
        let x = if c <= active[i] {
            c
        } else {
            active[i] + (c - active[i]) / k
        };
        x.min(caps[i])
    };
    let total_caps: f64 = caps.iter().sum();
    let extra: Vec<f64> = if total_caps <= rest {
        caps.clone()
    } else {
        // The highest price anyone needs to reach its cap.
        let mut hi = 0.0f64;
        for (i, c) in claims.iter().enumerate() {
            let cost = active[i] + (caps[i] - active[i]) * k;
            hi = hi.max(cost / f64::from(c.limits.weight.max(1)));
        }
        let mut lo = 0.0;
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            let sum: f64 = (0..claims.len()).map(|i| share(i, mid)).sum();
            if sum > rest {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        (0..claims.len()).map(|i| share(i, lo)).collect()
    };
    // Whole MiB; what rounding leaves goes to the largest remainders.
    let mut out: Vec<u64> = extra.iter().map(|x| x.floor() as u64).collect();
    let budget_rest = budget.saturating_sub(floors);
    let mut left = budget_rest.saturating_sub(out.iter().sum());
    let mut order: Vec<usize> = (0..claims.len()).collect();
    order.sort_by(|&a, &b| {
        let fa = extra[a] - extra[a].floor();
        let fb = extra[b] - extra[b].floor();
        fb.total_cmp(&fa)
    });
    for &i in &order {
        if left == 0 {
            break;
        }
        if (out[i] as f64) < caps[i] {
            out[i] += 1;
            left -= 1;
        }
    }
    out.iter()
        .zip(claims)
        .map(|(x, c)| (c.limits.floor + x).min(c.limits.ceiling))
        .collect()
}

/// A VM as the policy tracks it.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    id: VmId,
    limits: Limits,
    /// The allocation the VM is being asked to hold, in MiB.
    target: u64,
    ideal: u64,
    demand: u64,
}

/// One VM's result of a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub vm: VmId,
    /// Memory the VM should hold (its balloon = RAM - target).
    pub target: u64,
    pub ideal: u64,
    pub demand: u64,
}

/// The allocator's state across ticks.
#[derive(Debug, Clone)]
pub struct Policy {
    params: Params,
    vms: Vec<Entry>,
}

impl Policy {
    pub fn new(params: Params) -> Self {
        Policy {
            params,
            vms: Vec::new(),
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Adds a VM that holds `current` MiB now (its whole RAM at boot).
    pub fn add_vm(&mut self, id: VmId, limits: Limits, current: u64) {
        self.vms.push(Entry {
            id,
            limits,
            target: current.clamp(limits.floor, limits.ceiling),
            ideal: current,
            demand: limits.ceiling,
        });
    }

    /// A VM that stopped gives its memory back to the others.
    pub fn remove_vm(&mut self, id: VmId) {
        self.vms.retain(|e| e.id != id);
    }

    /// Changes a VM's weight and floor at run time. The floor must lie
    /// within its ceiling and the floors together within the budget (the
    /// admission rule), or nothing changes and the reason is returned.
    pub fn set_limits(
        &mut self,
        id: VmId,
        weight: Option<u32>,
        floor: Option<u64>,
    ) -> Result<Limits, String> {
        let others: u64 = self
            .vms
            .iter()
            .filter(|e| e.id != id)
            .map(|e| e.limits.floor)
            .sum();
        let budget = self.params.budget;
        let entry = self
            .vms
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or_else(|| "the VM has no balloon under the allocator".to_string())?;
        let mut limits = entry.limits;
        if let Some(w) = weight {
            limits.weight = w;
        }
        if let Some(f) = floor {
            if f > limits.ceiling {
                return Err(format!(
                    "floor {f} MiB exceeds the VM's ceiling of {} MiB",
                    limits.ceiling
                ));
            }
            if others + f > budget {
                return Err(format!(
                    "floor {f} MiB does not fit: the other VMs' floors take {others} MiB of the {budget} MiB budget"
                ));
            }
            limits.floor = f;
        }
        entry.limits = limits;
        entry.target = entry.target.max(limits.floor);
        Ok(limits)
    }

    /// One tick. `obs` has one observation per VM (VMs without one keep
    /// their target and hold what they hold).
    pub fn tick(&mut self, obs: &[(VmId, Observation)]) -> Vec<Decision> {
        let p = self.params;
        let seen = |id: VmId| obs.iter().find(|(v, _)| *v == id).map(|(_, o)| *o);
        let claims: Vec<Claim> = self
            .vms
            .iter()
            .map(|e| Claim {
                limits: e.limits,
                demand: seen(e.id).map_or(e.limits.ceiling, |o| demand(o, e.limits, &p)),
            })
            .collect();
        let ideals = allocate(p.budget, &claims, p.idle_tax);
        // What each VM holds now or is about to hold: a VM asked to shrink
        // still holds its memory until its balloon has inflated.
        let held = |e: &Entry| seen(e.id).map_or(e.target, |o| o.current.max(e.target));
        for (e, (ideal, claim)) in self.vms.iter_mut().zip(ideals.iter().zip(&claims)) {
            e.ideal = *ideal;
            e.demand = claim.demand;
            if e.ideal + p.hysteresis <= e.target {
                e.target -= (e.target - e.ideal).min(p.max_step);
            }
        }
        // Growth only into room the budget has now, neediest first.
        let mut committed: u64 = self.vms.iter().map(held).sum();
        let mut order: Vec<usize> = (0..self.vms.len()).collect();
        order.sort_by_key(|&i| {
            std::cmp::Reverse(self.vms[i].ideal.saturating_sub(self.vms[i].target))
        });
        for i in order {
            let e = &self.vms[i];
            if e.target + p.hysteresis > e.ideal {
                continue;
            }
            let now = held(e);
            let room = p.budget.saturating_sub(committed);
            let step = (e.ideal - e.target).min(p.max_step);
            // Growing within what it already holds costs the budget nothing.
            let grow = step.min(room + now.saturating_sub(e.target));
            let e = &mut self.vms[i];
            let new = e.target + grow;
            committed = committed + new.max(now) - now;
            e.target = new;
        }
        self.vms
            .iter()
            .map(|e| Decision {
                vm: e.id,
                target: e.target,
                ideal: e.ideal,
                demand: e.demand,
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
