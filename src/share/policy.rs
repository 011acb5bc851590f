//! The share policy, as pure arithmetic: every tick it divides the host's
//! budget for the next tick between the VMs, by weight and work-conserving
//! (weighted max-min fairness, "water-filling"). See docs/shares.md for the
//! formula and the fairness bound.
//!
//! Per resource (bytes, ops), with `B` the budget of one tick:
//! - a VM that was held back during the last tick (it had work waiting for
//!   tokens) is *backlogged*: it wants as much as it can get;
//! - any other VM wants what it used in the last tick, plus an eighth, plus
//!   a *probe* of 1 % of its weighted share of `B` (so that an idle VM's
//!   first request does not wait for a tick);
//! - water-filling: every VM whose want is within its weighted share of
//!   what is left gets its want; what it leaves is shared again among the
//!   others by weight, until the rest all want more than their share and
//!   split what is left by weight;
//! - what nobody wants is handed out by weight to everyone, so the grants
//!   always add up to `B` and a lone VM can use the whole budget.
//!
//! Grants are in milli-tokens (1/1000 of a byte or an op), so that even a
//! budget of a few ops per tick divides by weight without rounding bias.

use std::collections::BTreeMap;

use super::ShareError;
use crate::config::{HostShareSpec, MAX_IO_WEIGHT, MIN_IO_WEIGHT};

/// A VM's identity in the policy (the monitor's VM index).
pub type VmId = usize;

/// Milli-tokens per token.
pub const MILLI: u64 = 1000;

/// The largest budget per tick, in milli-tokens, that the shared buckets
/// can hold with room for debt (2^62).
pub const MAX_TICK_BUDGET_MILLI: u64 = 1 << 62;

/// The probe, as a fraction of a VM's weighted share: 1/PROBE_DIV.
const PROBE_DIV: u128 = 100;

/// Room to grow for a VM that was not held back: 1/HEADROOM_DIV of its use.
const HEADROOM_DIV: u128 = 8;

/// What one VM did in the last tick (whole tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub bytes: u64,
    pub ops: u64,
    /// It was held back: it had work waiting for tokens.
    pub held: bool,
}

/// What one VM may use in the next tick, in milli-tokens; `None`: no limit
/// on that resource (the host budget does not limit it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub vm: VmId,
    pub bytes_milli: Option<u64>,
    pub ops_milli: Option<u64>,
}

/// The policy's state across ticks: the budget and the VMs' weights.
#[derive(Debug, Clone)]
pub struct SharePolicy {
    bytes_per_tick: Option<u64>,
    ops_per_tick: Option<u64>,
    tick_ns: u64,
    weights: BTreeMap<VmId, u32>,
}

/// The budget of one tick in milli-tokens: `per_s × tick_ms` (per second
/// times ms is thousandths per tick).
fn per_tick(
    field: &'static str,
    per_s: Option<u64>,
    tick_ms: u32,
) -> Result<Option<u64>, ShareError> {
    let Some(per_s) = per_s else {
        return Ok(None);
    };
    match per_s.checked_mul(u64::from(tick_ms)) {
        Some(b) if b <= MAX_TICK_BUDGET_MILLI => Ok(Some(b)),
        _ => Err(ShareError::BudgetTooLarge {
            field,
            per_s,
            tick_ms,
        }),
    }
}

impl SharePolicy {
    /// A policy for a host budget (`host.io` or `host.net`).
    pub fn new(spec: &HostShareSpec) -> Result<Self, ShareError> {
        if spec.tick_ms == 0 {
            return Err(ShareError::ZeroTick);
        }
        Ok(SharePolicy {
            bytes_per_tick: per_tick("bytes_per_s", spec.bytes_per_s, spec.tick_ms)?,
            ops_per_tick: per_tick("ops_per_s", spec.ops_per_s, spec.tick_ms)?,
            tick_ns: u64::from(spec.tick_ms) * 1_000_000,
            weights: BTreeMap::new(),
        })
    }

    /// The tick the runtime must run it at, in ns.
    pub fn tick_ns(&self) -> u64 {
        self.tick_ns
    }

    /// Adds a VM (or changes its weight if present); its first grant comes
    /// with the next tick. Weights are clamped to 1..=10000.
    pub fn add_vm(&mut self, vm: VmId, weight: u32) {
        self.weights
            .insert(vm, weight.clamp(MIN_IO_WEIGHT, MAX_IO_WEIGHT));
    }

    /// Removes a VM; its share goes to the others from the next tick.
    pub fn remove_vm(&mut self, vm: VmId) {
        self.weights.remove(&vm);
    }

    /// Changes a VM's weight, from the next tick on.
    pub fn set_weight(&mut self, vm: VmId, weight: u32) {
        if let Some(w) = self.weights.get_mut(&vm) {
            *w = weight.clamp(MIN_IO_WEIGHT, MAX_IO_WEIGHT);
        }
    }

    /// One tick: what each VM did in the last tick (a VM missing from
    /// `usage` counts as idle) in, every VM's grant for the next tick out,
    /// in VM order.
    pub fn tick(&mut self, usage: &[(VmId, Usage)]) -> Vec<Grant> {
        let ids: Vec<VmId> = self.weights.keys().copied().collect();
        let weights: Vec<u32> = self.weights.values().copied().collect();
        let used: Vec<Usage> = ids
            .iter()
            .map(|id| {
                usage
                    .iter()
                    .find(|(vm, _)| vm == id)
                    .map_or(Usage::default(), |(_, u)| *u)
            })
            .collect();
        let bytes = self.bytes_per_tick.map(|b| {
            let wants: Vec<Option<u128>> = used.iter().map(|u| want(u.bytes, u.held)).collect();
            water_fill(b, &weights, &wants)
        });
        let ops = self.ops_per_tick.map(|b| {
            let wants: Vec<Option<u128>> = used.iter().map(|u| want(u.ops, u.held)).collect();
            water_fill(b, &weights, &wants)
        });
        ids.iter()
            .enumerate()
            .map(|(i, vm)| Grant {
                vm: *vm,
                bytes_milli: bytes.as_ref().map(|g| g[i]),
                ops_milli: ops.as_ref().map(|g| g[i]),
            })
            .collect()
    }
}

/// What a VM wants for the next tick, in milli-tokens, before the probe;
/// `None`: all it can get.
fn want(used: u64, held: bool) -> Option<u128> {
    if held {
        return None;
    }
    let used = u128::from(used) * u128::from(MILLI);
    Some(used + used / HEADROOM_DIV)
}

/// Weighted max-min division of `budget` between VMs of `weights` that
/// want `wants` (`None`: unbounded), plus each VM's probe; what is left
/// over goes to all by weight. The grants add up to `budget` (less
/// rounding, under one milli-token per VM).
pub fn water_fill(budget: u64, weights: &[u32], wants: &[Option<u128>]) -> Vec<u64> {
    let n = weights.len();
    let total_w: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    let mut grants = vec![0u128; n];
    if n == 0 || total_w == 0 {
        return Vec::new();
    }
    let budget = u128::from(budget);
    // The probe: 1 % of the VM's weighted share of the whole budget.
    let wants: Vec<Option<u128>> = wants
        .iter()
        .zip(weights)
        .map(|(w, wt)| w.map(|w| w + budget * u128::from(*wt) / total_w / PROBE_DIV))
        .collect();
    let mut open: Vec<usize> = (0..n).collect();
    let mut left = budget;
    // Each round settles at least one VM, so at most n rounds.
    while !open.is_empty() {
        let open_w: u128 = open.iter().map(|i| u128::from(weights[*i])).sum();
        let (settled, rest): (Vec<usize>, Vec<usize>) = open.iter().partition(|i| {
            wants[**i].is_some_and(|d| d * open_w <= left * u128::from(weights[**i]))
        });
        if settled.is_empty() {
            break;
        }
        for i in settled {
            let d = wants[i].unwrap_or(0);
            grants[i] = d;
            left -= d;
        }
        open = rest;
    }
    // The unbounded (or unsatisfied) VMs split what is left by weight; if
    // all were satisfied, everyone shares the slack.
    let takers: Vec<usize> = if open.is_empty() {
        (0..n).collect()
    } else {
        open
    };
    let takers_w: u128 = takers.iter().map(|i| u128::from(weights[*i])).sum();
    for i in takers {
        grants[i] += left * u128::from(weights[i]) / takers_w;
    }
    grants
        .into_iter()
        .map(|g| u64::try_from(g).unwrap_or(u64::MAX))
        .collect()
}
