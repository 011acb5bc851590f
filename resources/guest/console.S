/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: serial console on COM1 and print helpers.
 *
 * Every helper follows the System V x86-64 calling convention: arguments in
 * rdi, rsi, rdx; rbx, rbp and r12-r15 are preserved, everything else may be
 * clobbered. A line is printed between line_begin (takes the console lock and
 * prints "hearth-guest: ") and line_end (prints "\n", drops the lock), so
 * lines from several CPUs never interleave.
 */
#include "guest.h"

	.text
	.code64

/* putc(c: dil): wait for the transmitter to be empty, then send one byte. */
	.globl	putc
putc:
	movl	$1000000, %ecx			/* bounded: a missing UART reads 0xff */
1:	movw	$(COM1_BASE + UART_LSR), %dx
	inb	%dx, %al
	testb	$UART_LSR_THRE, %al
	jnz	2f
	pause
	decl	%ecx
	jnz	1b
2:	movw	$COM1_BASE, %dx
	movl	%edi, %eax
	outb	%al, %dx
	ret

/* puts(s: rdi): print a NUL-terminated string. */
	.globl	puts
puts:
	pushq	%rbx
	movq	%rdi, %rbx
1:	movzbl	(%rbx), %edi
	testl	%edi, %edi
	jz	2f
	call	putc
	incq	%rbx
	jmp	1b
2:	popq	%rbx
	ret

/* putsn(s: rdi, len: rsi): print len bytes. */
	.globl	putsn
putsn:
	pushq	%rbx
	pushq	%r12
	movq	%rdi, %rbx
	leaq	(%rdi, %rsi), %r12
1:	cmpq	%r12, %rbx
	jae	2f
	movzbl	(%rbx), %edi
	call	putc
	incq	%rbx
	jmp	1b
2:	popq	%r12
	popq	%rbx
	ret

/* put_dec(n: rdi): print an unsigned 64-bit number in decimal. */
	.globl	put_dec
put_dec:
	subq	$32, %rsp
	leaq	31(%rsp), %rsi
	movb	$0, (%rsi)
	movq	%rdi, %rax
	movl	$10, %ecx
1:	xorl	%edx, %edx
	divq	%rcx
	addb	$0x30, %dl			/* '0' */
	decq	%rsi
	movb	%dl, (%rsi)
	testq	%rax, %rax
	jnz	1b
	movq	%rsi, %rdi
	call	puts
	addq	$32, %rsp
	ret

/* put_hex(n: rdi): print an unsigned 64-bit number as 0x<hex>, no leading zeros. */
	.globl	put_hex
put_hex:
	subq	$32, %rsp
	leaq	31(%rsp), %rsi
	movb	$0, (%rsi)
	movq	%rdi, %rax
1:	movl	%eax, %edx
	andl	$0xf, %edx
	leaq	hex_digits(%rip), %rcx
	movb	(%rcx, %rdx), %dl
	decq	%rsi
	movb	%dl, (%rsi)
	shrq	$4, %rax
	jnz	1b
	decq	%rsi
	movb	$0x78, (%rsi)			/* 'x' */
	decq	%rsi
	movb	$0x30, (%rsi)			/* '0' */
	movq	%rsi, %rdi
	call	puts
	addq	$32, %rsp
	ret

/*
 * put_hex_digits(n: rdi, digits: esi): print the low digits (1-16) hex
 * digits of n, with leading zeros and no 0x (put_hex16: all 16).
 */
	.globl	put_hex16, put_hex_digits
put_hex16:
	movl	$16, %esi
put_hex_digits:
	subq	$32, %rsp
	leaq	31(%rsp), %r8
	movb	$0, (%r8)
	leaq	hex_digits(%rip), %rcx
1:	movl	%edi, %edx
	andl	$0xf, %edx
	movb	(%rcx, %rdx), %dl
	decq	%r8
	movb	%dl, (%r8)
	shrq	$4, %rdi
	decl	%esi
	jg	1b
	movq	%r8, %rdi
	call	puts
	addq	$32, %rsp
	ret

/* console_lock(): spin (xchg) until this CPU owns the console. */
	.globl	console_lock
console_lock:
1:	movl	$1, %eax
	xchgl	%eax, console_lock_word(%rip)
	testl	%eax, %eax
	jz	3f
2:	pause
	cmpl	$0, console_lock_word(%rip)
	jne	2b
	jmp	1b
3:	ret

/* console_unlock(): a plain store releases the lock on x86. */
	.globl	console_unlock
console_unlock:
	movl	$0, console_lock_word(%rip)
	ret

/* line_begin(): take the console lock and print "hearth-guest: ". */
	.globl	line_begin
line_begin:
	call	console_lock
	PUTS	"hearth-guest: "
	ret

/* line_end(): finish the line with "\n" and release the console lock. */
	.globl	line_end
line_end:
	PUTC	0x0a
	jmp	console_unlock

	.section .rodata
hex_digits:
	.ascii	"0123456789abcdef"

	.data
	.balign	4
	.globl	console_lock_word
console_lock_word:
	.long	0
