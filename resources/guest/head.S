/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: the three entry points, the switch to the guest's own
 * GDT, page tables, stack and IDT, and the exception handlers.
 *
 *   linux64  0x100000  ELF e_entry; 64-bit Linux boot protocol, rsi = boot_params
 *   bzimage  0x100200  startup_64 of the bzImage; same contract as linux64
 *   pvh      (note)    PVH: 32-bit protected mode, paging off, ebx = hvm_start_info
 */
#include "guest.h"

/* ---------------------------------------------------------------- */
/* 64-bit Linux entries; .head.text is linked first, at 0x100000.    */

	.section .head.text, "ax"
	.code64
	.globl	linux64
linux64:
	cli
	cld
	movb	$ENTRY_LINUX64, boot_entry(%rip)
	jmp	linux_common

	/* A bzImage's 64-bit entry sits 0x200 bytes into the loaded kernel. */
	.org	0x200
	.globl	bzimage
bzimage:
	cli
	cld
	movb	$ENTRY_BZIMAGE, boot_entry(%rip)
	jmp	linux_common

/* ---------------------------------------------------------------- */
/* PVH entry: 32-bit protected mode, paging off, ebx = start info.  */

	.section .text32, "ax"
	.code32
	.globl	pvh
pvh:
	cli
	cld
	movl	%ebx, boot_info_ptr
	movl	$0, boot_info_ptr + 4
	movb	$ENTRY_PVH, boot_entry
	lgdt	gdt_ptr
	ljmp	$SEL_CODE32, $1f
1:	movl	$SEL_DATA, %eax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	BUILD_PAGE_TABLES
	ENTER_LONG_MODE start64

/* The PVH note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18). */
	.section .note.Xen, "a", @note
	.balign	4
	.long	4			/* n_namesz */
	.long	8			/* n_descsz */
	.long	18			/* n_type: XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.balign	4
	/*
	 * 32-bit physical entry address, stored as 8 bytes like Linux does:
	 * rust-vmm linux-loader reads the first 4, QEMU reads 8.
	 */
	.quad	pvh
	.balign	4

/* ---------------------------------------------------------------- */
/* Common 64-bit start-up.                                           */

	.text
	.code64
linux_common:
	/* Still on the VMM's page tables, which identity-map the image. */
	movq	%rsi, boot_info_ptr(%rip)
	BUILD_PAGE_TABLES
	movl	$pml4, %eax
	movq	%rax, %cr3
	/* fall through */

start64:
	leaq	bsp_stack_top(%rip), %rsp
	lgdt	gdt_ptr(%rip)
	pushq	$SEL_CODE64
	leaq	1f(%rip), %rax
	pushq	%rax
	lretq
1:	movl	$SEL_DATA, %eax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	call	idt_init
	call	bootinfo_init
	call	print_boot_line
	call	run_scenario
	jmp	guest_reset

/* hearth-guest: boot entry=<linux64|pvh|bzimage> cmdline="<command line>" */
print_boot_line:
	call	line_begin
	PUTS	"boot entry="
	movzbl	boot_entry(%rip), %eax
	leaq	name_linux64(%rip), %rdi
	leaq	name_pvh(%rip), %rcx
	cmpl	$ENTRY_PVH, %eax
	cmoveq	%rcx, %rdi
	leaq	name_bzimage(%rip), %rcx
	cmpl	$ENTRY_BZIMAGE, %eax
	cmoveq	%rcx, %rdi
	call	puts
	PUTS	" cmdline="
	PUTC	0x22
	leaq	cmdline_buf(%rip), %rdi
	call	puts
	PUTC	0x22
	jmp	line_end

/* Reset through the i8042; if that returns, halt for good. */
	.globl	guest_reset
guest_reset:
	cli
	movb	$I8042_CMD_RESET, %al
	outb	%al, $I8042_COMMAND_PORT
	.globl	halt_forever
halt_forever:
	cli
	hlt
	jmp	halt_forever

/* ---------------------------------------------------------------- */
/* IDT: the 32 exception vectors print what happened and reset.      */

	.globl	idt_init
idt_init:
	leaq	idt_table(%rip), %rdi
	leaq	isr_stubs(%rip), %rsi
	xorl	%ecx, %ecx
1:	movq	%rsi, %rax
	movw	%ax, (%rdi)			/* offset 15:0 */
	movw	$SEL_CODE64, 2(%rdi)
	movw	$0x8e00, 4(%rdi)		/* present, DPL 0, interrupt gate */
	shrq	$16, %rax
	movw	%ax, 6(%rdi)			/* offset 31:16 */
	shrq	$16, %rax
	movl	%eax, 8(%rdi)			/* offset 63:32 */
	movl	$0, 12(%rdi)
	addq	$16, %rdi
	addq	$ISR_STUB_SIZE, %rsi
	incl	%ecx
	cmpl	$IDT_VECTORS, %ecx
	jb	1b
	lidt	idt_ptr(%rip)
	ret

	.balign	ISR_STUB_SIZE
isr_stubs:
	.set	vector, 0
	.rept	IDT_VECTORS
	.balign	ISR_STUB_SIZE
	/* Vectors 8, 10-14, 17, 21, 29 and 30 push an error code. */
	.if (vector == 8) || ((vector >= 10) && (vector <= 14)) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
	pushq	$vector
	.else
	pushq	$0
	pushq	$vector
	.endif
	jmp	isr_common
	.set	vector, vector + 1
	.endr

/* Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS. */
isr_common:
	movq	0(%rsp), %r12
	movq	8(%rsp), %r13
	movq	16(%rsp), %r14
	movq	%cr2, %r15
	/* Take the console lock, but steal it if its holder is the one that faulted. */
	movl	$1000000, %ebx
2:	movl	$1, %eax
	xchgl	%eax, console_lock_word(%rip)
	testl	%eax, %eax
	jz	3f
	pause
	decl	%ebx
	jnz	2b
3:	PUTS	"hearth-guest: exception vector="
	movq	%r12, %rdi
	call	put_dec
	PUTS	" error="
	movq	%r13, %rdi
	call	put_hex
	PUTS	" rip="
	movq	%r14, %rdi
	call	put_hex
	PUTS	" cr2="
	movq	%r15, %rdi
	call	put_hex
	call	line_end
	jmp	guest_reset

/* ---------------------------------------------------------------- */

	.section .rodata
name_linux64:	.asciz "linux64"
name_pvh:	.asciz "pvh"
name_bzimage:	.asciz "bzimage"

	.data
	.balign	8
	.globl	boot_info_ptr, boot_entry
/* Physical address of boot_params (Linux entries) or hvm_start_info (PVH). */
boot_info_ptr:	.quad	0
/* ENTRY_LINUX64, ENTRY_PVH or ENTRY_BZIMAGE. */
boot_entry:	.byte	0

	.balign	16
	.globl	gdt
gdt:
	.quad	0
	.quad	0x00af9a000000ffff		/* 0x08: 64-bit code */
	.quad	0x00cf92000000ffff		/* 0x10: flat data */
	.quad	0x00cf9a000000ffff		/* 0x18: flat 32-bit code */
gdt_end:
	.if (gdt_end - gdt) != (GDT_ENTRIES * 8)
	.error "GDT_ENTRIES does not match the GDT"
	.endif

	.balign	8
	/* 6 bytes for 32-bit lgdt, 10 for 64-bit; the base is below 4 GiB. */
gdt_ptr:
	.word	GDT_ENTRIES * 8 - 1
	.quad	gdt
	.balign	8
	.globl	idt_ptr
idt_ptr:
	.word	IDT_VECTORS * 16 - 1
	.quad	idt_table

	.bss
	.balign	4096
	.globl	pml4, pdpt, pd
pml4:	.skip	4096
pdpt:	.skip	4096
pd:	.skip	4 * 4096			/* 4 x 512 2 MiB pages: 0..4 GiB */
	.balign	16
bsp_stack:
	.skip	BSP_STACK_SIZE
bsp_stack_top:
	.balign	16
idt_table:
	.skip	IDT_VECTORS * 16
