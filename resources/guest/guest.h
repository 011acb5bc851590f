/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: constants and assembler macros shared by every .S file.
 *
 * The guest is plain GNU assembly using general-purpose registers only: the
 * KVM on the machines Hearth is developed on (kvm_pvm) cannot emulate SSE
 * arithmetic, popcnt, rdtscp, rdrand, cmpxchg16b, xsave/xrstor or int3.
 * tests/guest_image.rs disassembles the image to keep it that way.
 */
#ifndef HEARTH_GUEST_H
#define HEARTH_GUEST_H

/* Physical load address of the image (the ELF is linked here). */
#define GUEST_LOAD_ADDR		0x100000

/* Values of boot_entry: which entry point the VMM used. */
#define ENTRY_LINUX64		1
#define ENTRY_PVH		2
#define ENTRY_BZIMAGE		3

/* Selectors of the guest's own GDT (head.S). */
#define SEL_CODE64		0x08
#define SEL_DATA		0x10
#define SEL_CODE32		0x18
#define GDT_ENTRIES		4

/* Memory the guest reserves in its .bss. */
#define MAX_CPUS		64
#define BSP_STACK_SIZE		0x4000
#define AP_STACK_SIZE		0x1000
#define CMDLINE_MAX		2048
#define IDT_VECTORS		32
#define ISR_STUB_SIZE		16

/*
 * The real-mode AP trampoline is copied to this 4 KiB page below 1 MiB.
 * The VMM's own structures live at 0x500-0x600, 0x6000-0x7fff,
 * 0x9000-0xbfff, 0x20000-0x20fff and 0x9fc00-0x9ffff.
 */
#define TRAMPOLINE_BASE		0x10000
#define SIPI_VECTOR		(TRAMPOLINE_BASE >> 12)

/* Control registers, MSRs, page table bits. */
#define CR0_PE			0x00000001
#define CR0_NW			0x20000000
#define CR0_CD			0x40000000
#define CR0_PG			0x80000000
#define CR4_PAE			0x00000020
#define MSR_EFER		0xc0000080
#define EFER_LME		0x00000100
#define PTE_P			0x001
#define PTE_RW			0x002
#define PTE_PWT			0x008
#define PTE_PCD			0x010
#define PTE_PS			0x080

/* COM1, a 16550. */
#define COM1_BASE		0x3f8
#define UART_LSR		5
#define UART_LSR_THRE		0x20

/* i8042 reset: write 0xfe to the command port. */
#define I8042_COMMAND_PORT	0x64
#define I8042_CMD_RESET		0xfe

/* xAPIC, memory-mapped. */
#define LAPIC_BASE		0xfee00000
#define LAPIC_SVR		0x0f0
#define LAPIC_SVR_ENABLE	0x100
#define LAPIC_ICR_LOW		0x300
#define LAPIC_ICR_HIGH		0x310
#define ICR_DELIVERY_PENDING	0x1000
#define ICR_INIT		0x00004500	/* INIT, level assert */
#define ICR_STARTUP		0x00004600	/* STARTUP (SIPI), level assert */

/*
 * Delays are measured with rdtsc assuming at most this many TSC ticks per
 * millisecond (4 GHz), so they last at least as long as asked on any host
 * up to 4 GHz.
 */
#define TSC_TICKS_PER_MS	4000000
#define INIT_DELAY_MS		10
#define SIPI_DELAY_US		200
#define AP_WAIT_MS		3000

/* struct boot_params (the Linux zero page). */
#define BP_EXT_CMD_LINE_PTR	0x0c8
#define BP_E820_ENTRIES		0x1e8
#define BP_CMD_LINE_PTR		0x228
#define BP_E820_TABLE		0x2d0
#define E820_ENTRY_SIZE		20
#define E820_MAX_ENTRIES	128
#define E820_RAM		1

/* struct hvm_start_info (PVH). */
#define PVH_MAGIC		0x336ec578
#define PVH_MAGIC_OFF		0
#define PVH_VERSION_OFF		4
#define PVH_CMDLINE_OFF		24
#define PVH_MEMMAP_OFF		40
#define PVH_MEMMAP_ENTRIES_OFF	48
#define PVH_MEMMAP_ENTRY_SIZE	24
#define PVH_MEMMAP_MAX_ENTRIES	128

/* Intel MultiProcessor Specification 1.4 tables. */
#define MPF_SIGNATURE		0x5f504d5f	/* "_MP_" */
#define MPF_PHYSPTR		4
#define MPF_LENGTH		8		/* in 16-byte units */
#define MPC_SIGNATURE		0x504d4350	/* "PCMP" */
#define MPC_LENGTH		4
#define MPC_HEADER_SIZE		0x2c
#define MP_PROCESSOR		0
#define MP_PROCESSOR_SIZE	20
#define MP_OTHER_ENTRY_SIZE	8
#define MP_PROC_APIC_ID		1
#define MP_PROC_FLAGS		3
#define MP_PROC_ENABLED		0x01

#ifdef __ASSEMBLER__

/*
 * PUTS "text": print a string literal (no double quotes inside; use
 * PUTC 0x22 for those). Clobbers the caller-saved registers.
 */
.macro PUTS str
	.pushsection .rodata.str, "a"
.Lputs_str\@:
	.asciz "\str"
	.popsection
	leaq	.Lputs_str\@(%rip), %rdi
	call	puts
.endm

/* PUTC 0x41: print one byte. Clobbers the caller-saved registers. */
.macro PUTC c
	movl	$\c, %edi
	call	putc
.endm

/*
 * Fill the guest's page tables (pml4, pdpt, pd in head.S) with an identity
 * map of 0..4 GiB in 2 MiB pages; the top GiB (LAPIC, IOAPIC, other MMIO)
 * is uncached. Uses only 32-bit registers and absolute addresses so that
 * it assembles to working code both in .code32 (PVH entry, before paging)
 * and .code64 (Linux entries, under the VMM's identity map).
 * Clobbers eax, ecx, edi.
 */
.macro BUILD_PAGE_TABLES
	movl	$pml4, %edi
	movl	$(2 * 4096 / 4), %ecx
	xorl	%eax, %eax
.Lbpt_zero\@:
	movl	%eax, (%edi)
	addl	$4, %edi
	decl	%ecx
	jnz	.Lbpt_zero\@
	movl	$(pdpt + PTE_P + PTE_RW), pml4
	movl	$(pd + 0x0000 + PTE_P + PTE_RW), pdpt
	movl	$(pd + 0x1000 + PTE_P + PTE_RW), pdpt + 8
	movl	$(pd + 0x2000 + PTE_P + PTE_RW), pdpt + 16
	movl	$(pd + 0x3000 + PTE_P + PTE_RW), pdpt + 24
	movl	$pd, %edi
	movl	$(PTE_P + PTE_RW + PTE_PS), %eax
	movl	$2048, %ecx
.Lbpt_pd\@:
	movl	%eax, (%edi)
	movl	$0, 4(%edi)
	addl	$0x200000, %eax
	addl	$8, %edi
	decl	%ecx
	jnz	.Lbpt_pd\@
	movl	$(pd + 0x3000), %edi
	movl	$512, %ecx
.Lbpt_uc\@:
	orl	$(PTE_PWT + PTE_PCD), (%edi)
	addl	$8, %edi
	decl	%ecx
	jnz	.Lbpt_uc\@
.endm

/*
 * From 32-bit protected mode with flat segments and the guest's GDT loaded:
 * enable PAE, load the guest's page tables, set EFER.LME, turn paging on and
 * far-jump to the 64-bit code at \target. Clobbers eax, ecx, edx.
 */
.macro ENTER_LONG_MODE target
	movl	%cr4, %eax
	orl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	andl	$~(CR0_CD + CR0_NW), %eax
	orl	$(CR0_PG + CR0_PE), %eax
	movl	%eax, %cr0
	ljmp	$SEL_CODE64, $\target
.endm

/*
 * SCENARIO name, function: one row of the scenario table (scenarios.S).
 * The function takes no arguments and returns; the guest then resets.
 */
.macro SCENARIO name, func
	.pushsection .rodata.str, "a"
.Lscenario_name\@:
	.asciz "\name"
	.popsection
	.quad	.Lscenario_name\@, \func
.endm

#endif /* __ASSEMBLER__ */
#endif /* HEARTH_GUEST_H */
