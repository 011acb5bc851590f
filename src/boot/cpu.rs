//! Per-vCPU boot state: page tables, GDT, segment and control registers,
//! general registers, FPU, MSRs, CPUID and the local APIC.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs,
    KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{BOOT_STACK_POINTER, GDT_ADDR, IDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR};

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot write boot structures to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("KVM refused the vCPU's {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot build the {0} list for KVM")]
    Fam(&'static str),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Kvm { what, source }
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// 64-bit Linux boot protocol: long mode, paging on, `rsi` = boot_params.
    Linux64 { rip: u64, boot_params: u64 },
    /// PVH: 32-bit protected mode, paging off, `ebx` = hvm_start_info.
    Pvh { rip: u64, start_info: u64 },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT descriptor from its flags (granularity, size, type), base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM segment a GDT descriptor describes.
fn segment(entry: u64, index: u16) -> kvm_segment {
    let bits = |shift: u64, mask: u64| ((entry >> shift) & mask) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = bits(55, 1);
    kvm_segment {
        base,
        // With 4 KiB granularity KVM wants the limit in bytes.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: bits(40, 0xf),
        present: bits(47, 1),
        dpl: bits(45, 0x3),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g,
        avl: bits(52, 1),
        unusable: u8::from(bits(47, 1) == 0),
        padding: 0,
    }
}

/// Identity-maps the first 4 GiB with 2 MiB pages (PML4 -> PDPT -> 4 PDs).
pub fn setup_page_tables(mem: &GuestMemoryMmap) -> Result<(), CpuError> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    mem.write_obj(PDPT_ADDR | PRESENT_RW, GuestAddress(PML4_ADDR))?;
    for gib in 0..4u64 {
        let pd = PD_ADDR + gib * 0x1000;
        mem.write_obj(pd | PRESENT_RW, GuestAddress(PDPT_ADDR + gib * 8))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((gib << 30) + (i << 21)) | PRESENT_RW | HUGE).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))?;
    }
    Ok(())
}

/// Sets segment and control registers for `entry`, writing the GDT it uses.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    vcpu: &VcpuFd,
    entry: EntryPoint,
) -> Result<(), CpuError> {
    // Null, code, data, TSS. The code segment is 64-bit for the Linux
    // protocol and 32-bit for PVH.
    let code = match entry {
        EntryPoint::Linux64 { .. } => gdt_entry(0xa09b, 0, 0xfffff),
        EntryPoint::Pvh { .. } => gdt_entry(0xc09b, 0, 0xfffff),
    };
    let gdt = [
        gdt_entry(0, 0, 0),
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;

    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("segment registers"))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let data = segment(gdt[2], 2);
    sregs.cs = segment(gdt[1], 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], 3);

    match entry {
        EntryPoint::Linux64 { .. } => {
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryPoint::Pvh { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("segment registers"))
}

/// General registers at the kernel's entry.
pub fn setup_regs(vcpu: &VcpuFd, entry: EntryPoint) -> Result<(), CpuError> {
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        EntryPoint::Linux64 { rip, boot_params } => {
            regs.rip = rip;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = boot_params;
        }
        EntryPoint::Pvh { rip, start_info } => {
            regs.rip = rip;
            regs.rbx = start_info;
        }
    }
    vcpu.set_regs(&regs).map_err(kvm("general registers"))
}

/// x87 and SSE control words at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU state"))
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The MSR values every vCPU starts with.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

/// Writes the boot MSRs. KVM may refuse some (it stops at the first one it
/// cannot set); those are logged and skipped, not fatal.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let mut pending = boot_msrs();
    while !pending.is_empty() {
        let entries: Vec<kvm_msr_entry> = pending
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::Fam("MSR"))?;
        let written = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
        if written >= pending.len() {
            break;
        }
        let (index, _) = pending[written];
        log::debug!("KVM did not accept MSR {index:#x}; skipping it");
        pending.drain(..=written);
    }
    Ok(())
}

/// Local APIC: LINT0 delivers ExtINT (the PIC), LINT1 delivers NMI.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), CpuError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const MODE_NMI: u32 = 0x4;
    const MODE_EXTINT: u32 = 0x7;
    let mut lapic = vcpu.get_lapic().map_err(kvm("local APIC"))?;
    for (reg, mode) in [(APIC_LVT0, MODE_EXTINT), (APIC_LVT1, MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let value = u32::from_le_bytes(bytes);
        let value = (value & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as std::os::raw::c_char;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("local APIC"))
}

/// CPUID for vCPU `id` of `count`: KVM's supported set, with this vCPU's
/// APIC ID and the topology of `count` single-threaded cores in one socket.
pub fn vcpu_cpuid(supported: &CpuId, id: u8, count: u8) -> Result<CpuId, CpuError> {
    let apic_id = u32::from(id);
    let count = u32::from(count);
    // Bits of the APIC ID that number the cores of the package.
    let core_bits = 32 - (count.max(1) - 1).leading_zeros();
    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| e.function != 0xb)
        .copied()
        .collect();
    for e in &mut entries {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
                e.ecx |= 1 << 31; // running under a hypervisor
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: more than one logical CPU per package
                }
            }
            0x4 => {
                // Cores per package - 1 in EAX[31:26]; each cache serves one core.
                e.eax = (e.eax & 0x3ff) | ((count - 1) << 26);
            }
            _ => {}
        }
    }
    // Extended topology (leaf 0xB): level 0 is SMT (one thread per core),
    // level 1 the cores of the package, then the terminating invalid level.
    let leaf_b = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function: 0xb,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    entries.push(leaf_b(0, 0, 1, 1));
    entries.push(leaf_b(1, core_bits, count, 2));
    entries.push(leaf_b(2, 0, 0, 0));
    CpuId::from_entries(&entries).map_err(|_| CpuError::Fam("CPUID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code64 = segment(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(
            (code64.l, code64.db, code64.g, code64.present),
            (1, 0, 1, 1)
        );
        assert_eq!((code64.selector, code64.type_, code64.s), (8, 0xb, 1));
        assert_eq!(code64.limit, 0xffff_ffff);
        let code32 = segment(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db), (0, 1));
        let null = segment(gdt_entry(0, 0, 0), 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn cpuid_carries_each_vcpus_apic_id_and_the_cpu_count() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xaa00_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        let supported = CpuId::from_entries(&entries).unwrap();
        let c = vcpu_cpuid(&supported, 3, 4).unwrap();
        let leaf1 = c.as_slice()[0];
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_eq!(leaf1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(leaf1.ecx & (1 << 31), 0);
        let leafb: Vec<_> = c.as_slice().iter().filter(|e| e.function == 0xb).collect();
        assert_eq!(leafb.len(), 3, "SMT, core and terminating levels");
        assert_eq!((leafb[1].eax, leafb[1].ebx, leafb[1].edx), (2, 4, 3));
        assert_eq!(leafb[1].ecx, 0x201);
        assert_eq!(leafb[2].ecx >> 8, 0, "level type 0 ends the list");
    }

    #[test]
    fn boot_msrs_enable_fast_strings_and_mtrrs() {
        let msrs = boot_msrs();
        assert!(msrs.contains(&(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING)));
        assert!(msrs.contains(&(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB)));
    }
}
