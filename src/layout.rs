//! The x86_64 guest physical memory layout, in one place.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)           0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH hvm_start_info        0x0000_6040  PVH memory map
//! 0x0000_7000  boot_params (zero page)   0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4   0xa000 PDPT   0xb000-0xefff  4 page directories (identity map, 4 GiB)
//! 0x0002_0000  kernel command line       0x0009_fc00  end of low RAM in the e820 map
//! 0x000f_0000  MP table (BIOS area)      0x0010_0000  kernel (bzImage), ELF at its p_paddr
//! RAM          [0, min(size, 3 GiB)) and [4 GiB, 4 GiB + the rest)
//! 0xc000_0000  - 0xffff_ffff: the 32-bit MMIO gap (virtio-mmio, IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000)
//! ```

/// Start of the GDT the vCPUs boot with.
pub const GDT_ADDR: u64 = 0x500;
/// Start of the (empty) IDT the vCPUs boot with.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH memory map, right after `hvm_start_info`.
pub const PVH_MEMMAP_ADDR: u64 = 0x6040;
/// Linux `boot_params` (the zero page).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 table.
pub const PML4_ADDR: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of four page directories mapping 0..4 GiB with 2 MiB pages.
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// End of the first RAM range in the e820 map (the traditional 639 KiB).
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table lives in the BIOS area that Linux scans (0xf0000-0xfffff).
pub const MPTABLE_ADDR: u64 = 0xf0000;
/// Size of the BIOS area available to the MP table.
pub const MPTABLE_MAX_SIZE: u64 = 0x10000;
/// Where "high" memory starts: kernels load at or above this.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap: RAM never lives in [MMIO_GAP_START, 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Base of the IOAPIC registers.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Base of the local APIC registers.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// The TSS KVM needs on Intel hosts (three pages, inside the MMIO gap).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// Highest address an initrd may end at for the Linux boot protocol (initrd_addr_max default).
pub const INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Size of one MiB.
pub const MIB: u64 = 1 << 20;

/// The guest RAM ranges `(start, len)` for a guest of `mem_bytes`: below the
/// MMIO gap first, then above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    let low = mem_bytes.min(MMIO_GAP_START);
    let mut ranges = vec![(0, low)];
    if mem_bytes > low {
        ranges.push((MMIO_GAP_END, mem_bytes - low));
    }
    ranges
}

/// End (exclusive) of the RAM below the MMIO gap.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_GAP_START)
}

/// One e820 entry: `(start, len, type)`.
pub type E820Entry = (u64, u64, u32);
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// The e820 map the guest sees: RAM below the EBDA, RAM from 1 MiB to the
/// gap, RAM above 4 GiB; the BIOS area holding the MP table is reserved.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (MPTABLE_ADDR, MPTABLE_MAX_SIZE, E820_RESERVED),
    ];
    let low_end = low_ram_end(mem_bytes);
    if low_end > HIMEM_START {
        map.push((HIMEM_START, low_end - HIMEM_START, E820_RAM));
    }
    if mem_bytes > low_end {
        map.push((MMIO_GAP_END, mem_bytes - low_end, E820_RAM));
    }
    map
}

/// Where a virtio-mmio device sits: its 4 KiB window and its IRQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub irq: u32,
}

/// Size of one virtio-mmio window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// First virtio-mmio window, at the start of the part of the MMIO gap
/// Hearth gives to devices (the gap starts at 3 GiB; the IOAPIC, LAPIC and
/// KVM's TSS sit near its top).
pub const MMIO_BASE: u64 = 0xd000_0000;
/// IRQs for virtio-mmio devices: ISA IRQs the MP table routes through the
/// IOAPIC (0-15), skipping the timer, the cascade, the keyboard, COM1/COM2,
/// the RTC and the PS/2 mouse.
pub const MMIO_IRQS: &[u32] = &[5, 6, 7, 9, 10, 11, 14, 15];

/// The `index`th virtio-mmio slot of a VM, if there is one.
pub fn mmio_slot(index: usize) -> Option<MmioSlot> {
    let irq = *MMIO_IRQS.get(index)?;
    Some(MmioSlot {
        base: MMIO_BASE + index as u64 * MMIO_WINDOW,
        irq,
    })
}

/// The kernel command-line token announcing a device in `slot`.
pub fn cmdline_token(slot: MmioSlot) -> String {
    format!("virtio_mmio.device=4K@{:#x}:{}", slot.base, slot.irq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range_below_the_gap() {
        assert_eq!(ram_ranges(256 * MIB), vec![(0, 256 * MIB)]);
        let map = e820_map(256 * MIB);
        let ram: u64 = map.iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
        assert_eq!(ram, 256 * MIB - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let ranges = ram_ranges(4096 * MIB);
        assert_eq!(
            ranges,
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1024 * MIB)]
        );
        let map = e820_map(4096 * MIB);
        for (start, len, _) in &map {
            let end = start + len;
            assert!(
                end <= MMIO_GAP_START || *start >= MMIO_GAP_END,
                "{start:#x}+{len:#x}"
            );
        }
        assert_eq!(map.last(), Some(&(MMIO_GAP_END, 1024 * MIB, E820_RAM)));
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut areas = [
            (GDT_ADDR, 0x20),
            (IDT_ADDR, 0x8),
            (PVH_INFO_ADDR, 0x40),
            (PVH_MEMMAP_ADDR, 0x400),
            (ZERO_PAGE_ADDR, 0x1000),
            (PML4_ADDR, 0x1000),
            (PDPT_ADDR, 0x1000),
            (PD_ADDR, 0x4000),
            (CMDLINE_ADDR, 0x1000),
            (MPTABLE_ADDR, MPTABLE_MAX_SIZE),
            (HIMEM_START, 1),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(
                pair[0].0 + pair[0].1 <= pair[1].0,
                "{:x?} overlaps {:x?}",
                pair[0],
                pair[1]
            );
        }
        const { assert!(BOOT_STACK_POINTER < PML4_ADDR && BOOT_STACK_POINTER > ZERO_PAGE_ADDR + 0x1000) };
    }

    #[test]
    fn slots_are_in_the_gap_with_isa_irqs() {
        let first = mmio_slot(0).expect("a first slot");
        assert_eq!(
            first,
            MmioSlot {
                base: 0xd000_0000,
                irq: 5
            }
        );
        assert_eq!(cmdline_token(first), "virtio_mmio.device=4K@0xd0000000:5");
        for i in 0..MMIO_IRQS.len() {
            let s = mmio_slot(i).expect("slot");
            assert!(s.irq < 16 && s.irq != 4 && s.irq != 8 && s.irq != 12);
            assert!(s.base >= MMIO_GAP_START);
            assert!(s.base + MMIO_WINDOW <= IOAPIC_ADDR);
        }
        assert!(mmio_slot(MMIO_IRQS.len()).is_none());
    }
}
