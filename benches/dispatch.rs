//! The user-space half of an exit alone: `hearth::bus::Bus` finding the
//! device for an address and calling it, with 4, 32 and 256 devices
//! registered. No KVM. The device is trivial (it counts), so what is
//! measured is the binary search, the device's mutex and the dynamic call.
//!
//! `cargo bench --bench dispatch`; see docs/performance.md.

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hearth::bus::{AddressSpace, Bus, BusDevice};

/// Counts accesses; reads return the low byte of the count.
#[derive(Default)]
struct Counter(u64);

impl BusDevice for Counter {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        self.0 += 1;
        data.fill(self.0 as u8);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        self.0 += 1;
    }
}

/// A port bus with `n` 8-port devices, 16 ports apart from 0x1000.
fn bus_with(n: u64) -> Bus {
    let mut bus = Bus::new(AddressSpace::Pio);
    for i in 0..n {
        bus.insert(
            &format!("dev{i}"),
            0x1000 + i * 16,
            8,
            Arc::new(Mutex::new(Counter::default())),
        )
        .expect("non-overlapping ranges");
    }
    bus
}

/// Addresses that cycle over every device (each at offset 3), so the
/// search takes every path rather than one the branch predictor learns.
fn addresses(n: u64) -> Vec<u64> {
    // A stride coprime with n visits the devices in a scrambled order.
    let stride = if n > 1 { 7 } else { 1 };
    (0..n)
        .map(|i| 0x1000 + ((i * stride) % n) * 16 + 3)
        .collect()
}

fn dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    for n in [4u64, 32, 256] {
        let bus = bus_with(n);
        let addrs = addresses(n);
        group.bench_with_input(BenchmarkId::new("write", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                let addr = addrs[i];
                i = if i + 1 == addrs.len() { 0 } else { i + 1 };
                black_box(bus.write(black_box(addr), black_box(&[0x5a])))
            })
        });
        group.bench_with_input(BenchmarkId::new("read", n), &n, |b, _| {
            let mut i = 0;
            let mut data = [0u8; 1];
            b.iter(|| {
                let addr = addrs[i];
                i = if i + 1 == addrs.len() { 0 } else { i + 1 };
                black_box(bus.read(black_box(addr), black_box(&mut data)))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
