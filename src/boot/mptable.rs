//! Intel MultiProcessor Specification 1.4 table, so that a guest without
//! ACPI finds every vCPU, the IOAPIC and the ISA interrupt routing.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR, MPTABLE_MAX_SIZE};

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit in an MP table (at most 254)")]
    TooManyCpus(usize),
    #[error("the MP table needs {0} bytes, more than the {MPTABLE_MAX_SIZE} reserved for it")]
    TooLarge(usize),
    #[error("cannot write the MP table to guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6 signature and the FPU + APIC feature flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ISA_IRQS: u8 = 16;

/// Sum of bytes, wrapping.
fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// Builds the table (floating pointer followed by the configuration table)
/// as it will sit at `base`.
pub fn build(num_cpus: usize, base: u64) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 || num_cpus > 254 {
        return Err(MpTableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus as u8;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;

    for cpu in 0..num_cpus {
        let mut e = [0u8; 20];
        e[0] = 0; // processor
        e[1] = cpu as u8;
        e[2] = APIC_VERSION;
        e[3] = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&e);
        count += 1;
    }
    // Bus 0: ISA.
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    // The IOAPIC.
    let mut ioapic = [2u8, ioapic_id, IOAPIC_VERSION, 1, 0, 0, 0, 0];
    ioapic[4..8].copy_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    entries.extend_from_slice(&ioapic);
    count += 1;
    // ISA IRQ n -> IOAPIC pin n (type INT, polarity/trigger conforming to the bus).
    for irq in 0..ISA_IRQS {
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 = ExtINT, LINT1 = NMI on every local APIC.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    const FLOATING_LEN: usize = 16;
    const HEADER_LEN: usize = 44;
    let table_addr = base + FLOATING_LEN as u64;
    let table_len = HEADER_LEN + entries.len();
    let total = FLOATING_LEN + table_len;
    if total as u64 > MPTABLE_MAX_SIZE {
        return Err(MpTableError::TooLarge(total));
    }

    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(b"PCMP");
    header[4..6].copy_from_slice(&(table_len as u16).to_le_bytes());
    header[6] = 4; // spec revision 1.4
    header[8..16].copy_from_slice(b"HEARTH  ");
    header[16..28].copy_from_slice(b"MICROVM     ");
    header[34..36].copy_from_slice(&count.to_le_bytes());
    header[36..40].copy_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    let checksum = sum(&header).wrapping_add(sum(&entries));
    header[7] = 0u8.wrapping_sub(checksum);

    let mut floating = [0u8; FLOATING_LEN];
    floating[0..4].copy_from_slice(b"_MP_");
    floating[4..8].copy_from_slice(&(table_addr as u32).to_le_bytes());
    floating[8] = 1; // length in 16-byte units
    floating[9] = 4; // spec revision 1.4
    floating[10] = 0u8.wrapping_sub(sum(&floating));

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&floating);
    out.extend_from_slice(&header);
    out.extend_from_slice(&entries);
    Ok(out)
}

/// Writes the MP table for `num_cpus` vCPUs into guest memory.
pub fn setup(mem: &GuestMemoryMmap, num_cpus: usize) -> Result<(), MpTableError> {
    let table = build(num_cpus, MPTABLE_ADDR)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processors(table: &[u8]) -> Vec<(u8, u8)> {
        let mut cpus = Vec::new();
        let count = u16::from_le_bytes([table[16 + 34], table[16 + 35]]);
        let mut off = 16 + 44;
        for _ in 0..count {
            match table[off] {
                0 => {
                    cpus.push((table[off + 1], table[off + 3]));
                    off += 20;
                }
                _ => off += 8,
            }
        }
        cpus
    }

    #[test]
    fn checksums_add_up_to_zero() {
        for n in [1, 2, 8, 254] {
            let t = build(n, MPTABLE_ADDR).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0);
            let len = u16::from_le_bytes([t[20], t[21]]) as usize;
            assert_eq!(16 + len, t.len());
            assert_eq!(sum(&t[16..16 + len]), 0);
            let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64;
            assert_eq!(ptr, MPTABLE_ADDR + 16);
        }
    }

    #[test]
    fn lists_every_cpu_once_with_the_first_as_bsp() {
        let t = build(4, MPTABLE_ADDR).unwrap();
        assert_eq!(
            processors(&t),
            vec![(0, 3), (1, 1), (2, 1), (3, 1)],
            "(apic id, flags)"
        );
    }

    #[test]
    fn refuses_impossible_cpu_counts() {
        assert!(matches!(build(0, 0), Err(MpTableError::TooManyCpus(0))));
        assert!(matches!(build(255, 0), Err(MpTableError::TooManyCpus(255))));
    }
}
