/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: the spin scenario, and cmdline_get_dec/parse_dec.
 *
 * The BSP starts the APs (smp_start_aps), then every CPU that joined, the
 * BSP included, counts down hearth.spin_chunk=N iterations of a dec/jnz
 * loop at a time and prints a line after each such chunk, until it has
 * done hearth.spin_chunks=C of them (0: forever). Between its chunks the
 * BSP reads COM1 and stops everything on a 'q'.
 */
#include "guest.h"

#define SPIN_CHUNK_DEFAULT	200000
#define SPIN_CHUNKS_DEFAULT	0		/* never stop */
/* spin_joined: set by the BSP once it has counted the CPUs; late APs halt. */
#define SPIN_CLOSED		0x80000000
#define UART_RBR		0
#define UART_LSR_DR		0x01
#define SPIN_STOP_KEY		0x71		/* 'q' */
#define SPIN_POLL_EVERY		1000

	.text
	.code64

/*
 * cmdline_get_dec(key: rdi, default: rsi) -> rax
 * The value of the command line token key=<decimal>, or default if the key
 * is absent or its value is not a decimal number that fits 64 bits.
 */
	.globl	cmdline_get_dec
cmdline_get_dec:
	pushq	%rbx
	movq	%rsi, %rbx
	call	cmdline_get
	testq	%rax, %rax
	jz	1f
	movq	%rax, %rdi
	movq	%rdx, %rsi
	call	parse_dec
	testl	%edx, %edx
	jz	1f
	popq	%rbx
	ret
1:	movq	%rbx, %rax
	popq	%rbx
	ret

/*
 * parse_dec(s: rdi, len: rsi) -> rax = value, edx = 1
 * Parse len ASCII digits; edx = 0 (and rax = 0) if len is 0, a byte is not
 * a digit or the number does not fit 64 bits.
 */
	.globl	parse_dec
parse_dec:
	xorl	%eax, %eax
	testq	%rsi, %rsi
	jz	.Lparse_dec_bad
	leaq	(%rdi, %rsi), %r8		/* end */
	movl	$10, %r9d
1:	movzbl	(%rdi), %ecx
	subl	$0x30, %ecx			/* '0' */
	cmpl	$9, %ecx
	ja	.Lparse_dec_bad
	mulq	%r9				/* rdx:rax = rax * 10; CF if rdx != 0 */
	jc	.Lparse_dec_bad
	addq	%rcx, %rax
	jc	.Lparse_dec_bad
	incq	%rdi
	cmpq	%r8, %rdi
	jb	1b
	movl	$1, %edx
	ret
.Lparse_dec_bad:
	xorl	%eax, %eax
	xorl	%edx, %edx
	ret

/*
 * spin:
 *   hearth-guest: spin cpus=<CPUs spinning> chunk=<N> chunks=<C>
 *   hearth-guest: spin apic=<id> chunks=<n>      (each CPU, after each chunk)
 *   hearth-guest: SPIN DONE                      (every CPU did C chunks)
 *   hearth-guest: SPIN STOPPED                   ('q' on COM1)
 */
	.globl	scenario_spin
scenario_spin:
	pushq	%rbx
	leaq	spin_chunk_key(%rip), %rdi
	movl	$SPIN_CHUNK_DEFAULT, %esi
	call	cmdline_get_dec
	movq	%rax, spin_chunk(%rip)
	leaq	spin_chunks_key(%rip), %rdi
	movl	$SPIN_CHUNKS_DEFAULT, %esi
	call	cmdline_get_dec
	movq	%rax, spin_chunks(%rip)
	movl	$1, spin_joined(%rip)		/* the BSP */
	movl	$0, spin_done(%rip)
	movl	$0, spin_go(%rip)

	leaq	spin_ap_main(%rip), %rdi
	call	smp_start_aps
	/* Wait (bounded, as smp does) for the started APs to join. */
	leal	1(%rax), %esi			/* + the BSP */
	leaq	spin_joined(%rip), %rdi
	call	smp_wait_count
	/* Close the count: an AP that joins from now on halts at once. */
	movl	$SPIN_CLOSED, %eax
	lock xaddl %eax, spin_joined(%rip)
	movl	%eax, spin_ncpus(%rip)

	call	line_begin
	PUTS	"spin cpus="
	movl	spin_ncpus(%rip), %edi
	call	put_dec
	PUTS	" chunk="
	movq	spin_chunk(%rip), %rdi
	call	put_dec
	PUTS	" chunks="
	movq	spin_chunks(%rip), %rdi
	call	put_dec
	call	line_end

	movl	$1, spin_go(%rip)		/* x86 stores are ordered: the above is visible first */
	movl	$1, %edi
	call	spin_run			/* returns once every CPU is done */
	popq	%rbx
	ret

/* spin_ap_main(): an AP of the spin scenario. */
spin_ap_main:
	movl	$1, %eax
	lock xaddl %eax, spin_joined(%rip)
	testl	$SPIN_CLOSED, %eax
	jnz	halt_forever			/* too late: not counted */
1:	pause
	cmpl	$0, spin_go(%rip)
	je	1b
	xorl	%edi, %edi
	jmp	spin_run			/* never returns on an AP */

/*
 * spin_run(is_bsp: edi): run chunks until spin_chunks (if not 0), then count
 * this CPU in spin_done. An AP then halts; the BSP waits for all spin_ncpus
 * CPUs, prints SPIN DONE and returns. The BSP polls COM1 for 'q' before
 * every chunk and while it waits.
 */
spin_run:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movl	%edi, %ebp			/* is_bsp */
	movl	$1, %eax
	cpuid
	shrl	$24, %ebx
	movl	%ebx, %r12d			/* APIC ID */
	xorl	%r13d, %r13d			/* chunks done */
	movq	spin_chunk(%rip), %r14
	movq	spin_chunks(%rip), %r15
.Lspin_next:
	testl	%ebp, %ebp
	jz	1f
	call	spin_poll_stop
1:	movq	%r14, %rcx
	testq	%rcx, %rcx
	jz	3f
2:	decq	%rcx				/* the chunk */
	jnz	2b
3:	incq	%r13
	call	line_begin
	PUTS	"spin apic="
	movl	%r12d, %edi
	call	put_dec
	PUTS	" chunks="
	movq	%r13, %rdi
	call	put_dec
	call	line_end
	testq	%r15, %r15
	jz	.Lspin_next
	cmpq	%r15, %r13
	jb	.Lspin_next

	movl	$1, %eax
	lock xaddl %eax, spin_done(%rip)
	testl	%ebp, %ebp
	jz	halt_forever
	/* Wait for the others; poll COM1 only every SPIN_POLL_EVERY rounds (an exit each). */
4:	call	spin_poll_stop
	movl	$SPIN_POLL_EVERY, %ecx
6:	movl	spin_done(%rip), %eax
	cmpl	spin_ncpus(%rip), %eax
	jae	5f
	pause
	decl	%ecx
	jnz	6b
	jmp	4b
5:	call	line_begin
	PUTS	"SPIN DONE"
	call	line_end
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

/* spin_poll_stop(): if COM1 has received a 'q', print SPIN STOPPED and reset. */
spin_poll_stop:
	movw	$(COM1_BASE + UART_LSR), %dx
	inb	%dx, %al
	testb	$UART_LSR_DR, %al
	jz	1f
	movw	$(COM1_BASE + UART_RBR), %dx
	inb	%dx, %al
	cmpb	$SPIN_STOP_KEY, %al
	je	2f
1:	ret
2:	call	line_begin
	PUTS	"SPIN STOPPED"
	call	line_end
	jmp	guest_reset

	.section .rodata
spin_chunk_key:
	.asciz	"hearth.spin_chunk"
spin_chunks_key:
	.asciz	"hearth.spin_chunks"

	.data
	.balign	8
/* Loop iterations per chunk, and chunks per CPU (0: no limit). */
spin_chunk:	.quad	0
spin_chunks:	.quad	0
/* CPUs that joined (BSP + APs), | SPIN_CLOSED once counted. */
spin_joined:	.long	0
/* CPUs spinning: spin_joined when the BSP closed it. */
spin_ncpus:	.long	0
/* Set by the BSP after the spin cpus= line: start spinning. */
spin_go:	.long	0
/* CPUs that did all their chunks (lock xadd). */
spin_done:	.long	0
