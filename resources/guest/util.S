/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: helpers the device drivers share. Numbers and choices
 * from the command line, TSC deadlines, COM1 input, FNV-1a, and the RAM
 * pool (the memory above the image that drivers use for buffers).
 * System V calling convention, like console.S.
 */
#include "guest.h"

#define UART_RBR			0
#define UART_LSR_DR			0x01
#define STOP_KEY			0x71		/* 'q' */
#define PAGE_SIZE			4096
#define POOL_FLOOR			0x200000	/* never use RAM below 2 MiB */
#define FNV_PRIME			0x100000001b3

	.text
	.code64

/*
 * parse_num(p: rdi) -> rax = value, rdx = first byte after it, ecx = digits
 * A decimal number, or hexadecimal after "0x"/"0X" (64 bits, wrapping).
 */
	.globl	parse_num
parse_num:
	xorl	%eax, %eax
	xorl	%ecx, %ecx
	movq	%rdi, %rdx
	cmpb	$0x30, (%rdx)			/* '0' */
	jne	.Lpn_dec
	movzbl	1(%rdx), %r8d
	orl	$0x20, %r8d
	cmpl	$0x78, %r8d			/* 'x' */
	jne	.Lpn_dec
	addq	$2, %rdx
.Lpn_hex:
	movzbl	(%rdx), %r8d
	leal	-0x30(%r8), %r9d
	cmpl	$9, %r9d
	jbe	1f
	orl	$0x20, %r8d
	leal	-0x61(%r8), %r9d		/* 'a' */
	cmpl	$5, %r9d
	ja	.Lpn_done
	addl	$10, %r9d
1:	shlq	$4, %rax
	addq	%r9, %rax
	incl	%ecx
	incq	%rdx
	jmp	.Lpn_hex
.Lpn_dec:
	movzbl	(%rdx), %r8d
	subl	$0x30, %r8d
	cmpl	$9, %r8d
	ja	.Lpn_done
	imulq	$10, %rax, %rax
	addq	%r8, %rax
	incl	%ecx
	incq	%rdx
	jmp	.Lpn_dec
.Lpn_done:
	ret

/*
 * cmdline_get_num(key: rdi, default: rsi) -> rax
 * The value of the token key=<n>, n decimal or 0x hex, or default if the key
 * is absent or its value is not such a number as a whole.
 */
	.globl	cmdline_get_num
cmdline_get_num:
	pushq	%rbx
	pushq	%r12
	movq	%rsi, %rbx
	call	cmdline_get
	testq	%rax, %rax
	jz	1f
	leaq	(%rax, %rdx), %r12		/* end of the value */
	movq	%rax, %rdi
	call	parse_num
	testl	%ecx, %ecx
	jz	1f
	cmpq	%r12, %rdx
	jne	1f
	movq	%rax, %rbx
1:	movq	%rbx, %rax
	popq	%r12
	popq	%rbx
	ret

/*
 * cmdline_choice(key: rdi, names: rsi, default: edx) -> eax
 * names: NUL-terminated strings one after the other, ended by an empty one.
 * Returns the index of the name the token key=<name> gives, default if the
 * key is absent, -1 if its value is none of the names.
 */
	.globl	cmdline_choice
cmdline_choice:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movq	%rsi, %rbx
	movl	%edx, %r15d
	call	cmdline_get
	testq	%rax, %rax
	jz	.Lcc_out
	movq	%rax, %r12			/* value */
	movq	%rdx, %r13			/* its length */
	xorl	%r14d, %r14d			/* index */
1:	cmpb	$0, (%rbx)
	je	.Lcc_unknown
	movq	%rbx, %rdi
	movq	%r12, %rsi
	movq	%r13, %rdx
	call	name_equals
	testl	%eax, %eax
	jnz	.Lcc_found
2:	cmpb	$0, (%rbx)			/* skip to the next name */
	leaq	1(%rbx), %rbx
	jne	2b
	incl	%r14d
	jmp	1b
.Lcc_found:
	movl	%r14d, %r15d
	jmp	.Lcc_out
.Lcc_unknown:
	movl	$-1, %r15d
.Lcc_out:
	movl	%r15d, %eax
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/* rdtsc64() -> rax */
	.globl	rdtsc64
rdtsc64:
	rdtsc
	shlq	$32, %rdx
	orq	%rdx, %rax
	ret

/*
 * tsc_deadline(ms: rdi) -> rax: the TSC value at least ms milliseconds from
 * now on any TSC up to 4 GHz (TSC_TICKS_PER_MS).
 */
	.globl	tsc_deadline
tsc_deadline:
	imulq	$TSC_TICKS_PER_MS, %rdi, %rcx
	rdtsc
	shlq	$32, %rdx
	orq	%rdx, %rax
	addq	%rcx, %rax
	ret

/* tsc_passed(deadline: rdi) -> eax = 1 once rdtsc has reached it. */
	.globl	tsc_passed
tsc_passed:
	rdtsc
	shlq	$32, %rdx
	orq	%rdx, %rax
	cmpq	%rdi, %rax
	setae	%al
	movzbl	%al, %eax
	ret

/* delay(iterations: rdi): a dec/jnz busy loop. */
	.globl	delay
delay:
	testq	%rdi, %rdi
	jz	2f
1:	decq	%rdi
	jnz	1b
2:	ret

/* serial_got_stop() -> eax = 1 if a 'q' has arrived on COM1 (other bytes are dropped). */
	.globl	serial_got_stop
serial_got_stop:
	xorl	%ecx, %ecx
	movw	$(COM1_BASE + UART_LSR), %dx
	inb	%dx, %al
	testb	$UART_LSR_DR, %al
	jz	1f
	movw	$(COM1_BASE + UART_RBR), %dx
	inb	%dx, %al
	cmpb	$STOP_KEY, %al
	jne	1f
	movl	$1, %ecx
1:	movl	%ecx, %eax
	ret

/*
 * fnv1a64(hash: rdi, buf: rsi, len: rdx) -> rax
 * FNV-1a 64 over len bytes, continuing from hash (start with FNV_OFFSET).
 */
	.globl	fnv1a64
fnv1a64:
	movq	%rdi, %rax
	movabsq	$FNV_PRIME, %r8
	testq	%rdx, %rdx
	jz	2f
1:	movzbl	(%rsi), %ecx
	xorq	%rcx, %rax
	imulq	%r8, %rax
	incq	%rsi
	decq	%rdx
	jnz	1b
2:	ret

/* ---------------------------------------------------------------- */
/* The RAM pool: the largest RAM region, above the image and 2 MiB.   */

/* pool_region(addr: rdi, size: rsi, type: edx): memmap_foreach callback. */
pool_region:
	cmpl	$E820_RAM, %edx
	jne	3f
	addq	%rdi, %rsi			/* end */
	movl	$(__bss_end + PAGE_SIZE - 1), %eax
	andl	$~(PAGE_SIZE - 1), %eax
	cmpl	$POOL_FLOOR, %eax
	jae	1f
	movl	$POOL_FLOOR, %eax
1:	cmpq	%rax, %rdi
	jae	2f
	movq	%rax, %rdi
2:	movabsq	$0x100000000, %rax		/* the guest maps 0..4 GiB */
	cmpq	%rax, %rsi
	jbe	4f
	movq	%rax, %rsi
4:	addq	$(PAGE_SIZE - 1), %rdi
	andq	$~(PAGE_SIZE - 1), %rdi
	andq	$~(PAGE_SIZE - 1), %rsi
	cmpq	%rdi, %rsi
	jbe	3f
	movq	%rsi, %rax
	subq	%rdi, %rax
	movq	pool_hi(%rip), %rcx
	subq	pool_lo(%rip), %rcx
	cmpq	%rcx, %rax
	jbe	3f
	movq	%rdi, pool_lo(%rip)
	movq	%rsi, pool_hi(%rip)
3:	ret

/*
 * pool_init(): ram_total_bytes (memmap_ram_summary) and the pool
 * [pool_lo, pool_hi): the largest RAM region of the memory map, clipped to
 * [max(2 MiB, end of .bss), 4 GiB), in whole pages.
 */
	.globl	pool_init
pool_init:
	call	memmap_ram_summary
	movq	$0, pool_lo(%rip)
	movq	$0, pool_hi(%rip)
	leaq	pool_region(%rip), %rdi
	jmp	memmap_foreach

/* pool_bytes() -> rax */
	.globl	pool_bytes
pool_bytes:
	movq	pool_hi(%rip), %rax
	subq	pool_lo(%rip), %rax
	ret

	.data
	.balign	8
	.globl	pool_lo, pool_hi
pool_lo:	.quad	0
pool_hi:	.quad	0
