/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth's quick test guest: prints its boot line with its first
 * instructions and spins (`hearth-quick.elf`) or halts for good
 * (`hearth-quick-idle.elf`, built with QUICK_IDLE). It stands in for a guest that boots as fast as
 * it would on hardware KVM, where Hearth's density bench otherwise
 * measures mostly this machine's emulation of the full test guest's
 * start-up (about 7 ms of CPU for its page tables, IDT and command line;
 * docs/performance.md). It has the full guest's three entry points
 * (linux64 at 0x100000, the bzImage entry at 0x100200, PVH through its
 * note) and uses the full guest's linker script.
 *
 * The code after each entry is the same bytes in 32-bit protected mode
 * (PVH) and in 64-bit mode (the Linux entries): an operand-size prefixed
 * move of the port, byte moves to AL, OUT to DX, PAUSE (or HLT) and a
 * short jump.
 * It needs no stack, no memory and no page tables of its own.
 *
 *   hearth-guest: quick
 */

	.macro	PUT c
	movb	$\c, %al
	outb	%al, %dx
	.endm

	.macro	QUICK
	cli
	movw	$0x3f8, %dx		/* COM1's data register */
	.irp	c, 'h','e','a','r','t','h','-','g','u','e','s','t',':',' ','q','u','i','c','k','\n'
	PUT	\c
	.endr
#ifdef QUICK_IDLE
1:	hlt				/* interrupts off: halted for good */
#else
1:	pause
#endif
	jmp	1b
	.endm

	.section .head.text, "ax"
	.code64
	.globl	linux64
linux64:
	QUICK

	.org	0x200
	.globl	bzimage
bzimage:
	QUICK

	.section .text32, "ax"
	.code32
	.globl	pvh
pvh:
	QUICK

/* The PVH note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18). */
	.section .note.Xen, "a", @note
	.balign	4
	.long	4			/* n_namesz */
	.long	8			/* n_descsz */
	.long	18			/* n_type: XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.balign	4
	.quad	pvh
	.balign	4
