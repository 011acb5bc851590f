/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: the probe scenario, for the device access verifier.
 *
 * It touches ports and MMIO addresses across the whole space, reads and
 * writes of every size (ports 1, 2, 4; MMIO 1, 2, 4, 8), its own devices
 * included, and reports how many accesses of each class it made and how
 * many reads returned all ones, so a test can compare with the verifier's
 * counters:
 *
 * - ports 0, S, 2S, ... up to 0xffff (S = hearth.probe_port_stride,
 *   decimal, default 257 = 0x101), then the list probe_ports below
 *   (COM1, the i8042, the CMOS, 0x80, PCI config 0xcf8/0xcfc, COM3, COM2);
 *   at each port a read and a write (of 0) of 1, 2 and 4 bytes, leaving
 *   out any access that would run past 0xffff, any access that touches a
 *   port KVM handles in the kernel (in_kernel_ports: it never reaches the
 *   VMM), and the writes that touch COM1 (the console) or the i8042 (its
 *   command port resets the VM) (no_write_ports);
 * - MMIO 0xc0000800, +M, +2M, ... while the 8 bytes at the address end
 *   below 0xfec00000 (the IOAPIC and LAPIC pages above are in-kernel):
 *   M = hearth.probe_mmio_stride (decimal, default 16 MiB); at each address
 *   a read of 1, 2, 4, 8 bytes, then a write of 0 of each size.
 */
#include "guest.h"

#define PROBE_PORT_STRIDE_DEFAULT	257		/* 0x101 */
#define PROBE_MMIO_STRIDE_DEFAULT	0x1000000	/* 16 MiB */
#define PROBE_MMIO_START		0xc0000800
#define PROBE_MMIO_END			0xfec00000
#define PROBE_PORT_LAST			0xffff

	.text
	.code64

/*
 * probe:
 *   hearth-guest: probe port_stride=<S> mmio_stride=<M>
 *   hearth-guest: probe ports=<n> port_reads=<n> port_writes=<n> mmio=<n>
 *     mmio_reads=<n> mmio_writes=<n> reads_all_ones=<n> port_all_ones=<n>
 *     mmio_all_ones=<n>
 *   hearth-guest: PROBE DONE
 */
	.globl	scenario_probe
scenario_probe:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	leaq	probe_port_stride_key(%rip), %rdi
	movl	$PROBE_PORT_STRIDE_DEFAULT, %esi
	call	cmdline_get_dec
	testq	%rax, %rax
	jnz	1f
	movl	$PROBE_PORT_STRIDE_DEFAULT, %eax	/* 0 would never end */
1:	movq	%rax, %r12
	leaq	probe_mmio_stride_key(%rip), %rdi
	movl	$PROBE_MMIO_STRIDE_DEFAULT, %esi
	call	cmdline_get_dec
	testq	%rax, %rax
	jnz	2f
	movl	$PROBE_MMIO_STRIDE_DEFAULT, %eax
2:	movq	%rax, %r13

	call	line_begin
	PUTS	"probe port_stride="
	movq	%r12, %rdi
	call	put_dec
	PUTS	" mmio_stride="
	movq	%r13, %rdi
	call	put_dec
	call	line_end

	/* The port walk. */
	xorl	%ebx, %ebx
3:	movl	%ebx, %edi
	call	probe_port
	addq	%r12, %rbx
	cmpq	$PROBE_PORT_LAST, %rbx
	jbe	3b
	/* The listed ports. */
	leaq	probe_ports(%rip), %rbx
4:	leaq	probe_ports_end(%rip), %rax
	cmpq	%rax, %rbx
	jae	5f
	movzwl	(%rbx), %edi
	call	probe_port
	addq	$2, %rbx
	jmp	4b
	/* The MMIO walk. */
5:	movl	$PROBE_MMIO_START, %ebx
6:	leaq	8(%rbx), %rax
	movl	$PROBE_MMIO_END, %ecx
	cmpq	%rcx, %rax
	ja	7f
	movq	%rbx, %rdi
	call	probe_mmio
	addq	%r13, %rbx
	jnc	6b
7:
	call	line_begin
	PUTS	"probe ports="
	movq	probe_port_reads(%rip), %rdi
	addq	probe_port_writes(%rip), %rdi
	call	put_dec
	PUTS	" port_reads="
	movq	probe_port_reads(%rip), %rdi
	call	put_dec
	PUTS	" port_writes="
	movq	probe_port_writes(%rip), %rdi
	call	put_dec
	PUTS	" mmio="
	movq	probe_mmio_reads(%rip), %rdi
	addq	probe_mmio_writes(%rip), %rdi
	call	put_dec
	PUTS	" mmio_reads="
	movq	probe_mmio_reads(%rip), %rdi
	call	put_dec
	PUTS	" mmio_writes="
	movq	probe_mmio_writes(%rip), %rdi
	call	put_dec
	PUTS	" reads_all_ones="
	movq	probe_port_all_ones(%rip), %rdi
	addq	probe_mmio_all_ones(%rip), %rdi
	call	put_dec
	PUTS	" port_all_ones="
	movq	probe_port_all_ones(%rip), %rdi
	call	put_dec
	PUTS	" mmio_all_ones="
	movq	probe_mmio_all_ones(%rip), %rdi
	call	put_dec
	call	line_end

	call	line_begin
	PUTS	"PROBE DONE"
	call	line_end
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/* probe_port(port: edi): read and write it with 1, 2 and 4 bytes. */
probe_port:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	movl	%edi, %ebx			/* port */
	movl	$1, %r12d			/* size */
1:	leal	-1(%rbx, %r12), %eax		/* its last port */
	cmpl	$PROBE_PORT_LAST, %eax
	ja	.Lpp_next
	movl	%ebx, %edi
	movl	%r12d, %esi
	leaq	in_kernel_ports(%rip), %rdx
	call	overlaps
	testl	%eax, %eax
	jnz	.Lpp_next
	movl	%ebx, %edi
	movl	%r12d, %esi
	call	port_read
	incq	probe_port_reads(%rip)
	addq	%rax, probe_port_all_ones(%rip)
	movl	%ebx, %edi
	movl	%r12d, %esi
	leaq	no_write_ports(%rip), %rdx
	call	overlaps
	testl	%eax, %eax
	jnz	.Lpp_next
	movl	%ebx, %edi
	movl	%r12d, %esi
	call	port_write
	incq	probe_port_writes(%rip)
.Lpp_next:
	shll	$1, %r12d
	cmpl	$4, %r12d
	jbe	1b
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/* port_read(port: edi, size: esi) -> rax = 1 if the read returned all ones. */
port_read:
	movl	%edi, %edx
	cmpl	$1, %esi
	je	1f
	cmpl	$2, %esi
	je	2f
	inl	%dx, %eax
	cmpl	$0xffffffff, %eax
	jmp	3f
1:	inb	%dx, %al
	cmpb	$0xff, %al
	jmp	3f
2:	inw	%dx, %ax
	cmpw	$0xffff, %ax
3:	sete	%al
	movzbl	%al, %eax
	ret

/* port_write(port: edi, size: esi): write 0. */
port_write:
	movl	%edi, %edx
	xorl	%eax, %eax
	cmpl	$1, %esi
	je	1f
	cmpl	$2, %esi
	je	2f
	outl	%eax, %dx
	ret
1:	outb	%al, %dx
	ret
2:	outw	%ax, %dx
	ret

/*
 * overlaps(port: edi, size: esi, table: rdx) -> eax = 1 if ports
 * port..port+size-1 touch a range of the table (.word first, last pairs,
 * ended by a pair with first > last).
 */
overlaps:
	leal	-1(%rdi, %rsi), %ecx		/* last port of the access */
1:	movzwl	(%rdx), %eax			/* range first */
	movzwl	2(%rdx), %r8d			/* range last */
	cmpl	%r8d, %eax
	ja	2f
	addq	$4, %rdx
	cmpl	%r8d, %edi
	ja	1b
	cmpl	%eax, %ecx
	jb	1b
	movl	$1, %eax
	ret
2:	xorl	%eax, %eax
	ret

/* probe_mmio(addr: rdi): read 1, 2, 4, 8 bytes there, then write 0 with each. */
probe_mmio:
	xorl	%ecx, %ecx			/* reads that returned all ones */
	movzbl	(%rdi), %eax
	cmpl	$0xff, %eax
	jne	1f
	incl	%ecx
1:	movzwl	(%rdi), %eax
	cmpl	$0xffff, %eax
	jne	2f
	incl	%ecx
2:	movl	(%rdi), %eax
	cmpl	$0xffffffff, %eax
	jne	3f
	incl	%ecx
3:	movq	(%rdi), %rax
	cmpq	$-1, %rax
	jne	4f
	incl	%ecx
4:	addq	%rcx, probe_mmio_all_ones(%rip)
	addq	$4, probe_mmio_reads(%rip)
	movb	$0, (%rdi)
	movw	$0, (%rdi)
	movl	$0, (%rdi)
	movq	$0, (%rdi)
	addq	$4, probe_mmio_writes(%rip)
	ret

	.section .rodata
probe_port_stride_key:
	.asciz	"hearth.probe_port_stride"
probe_mmio_stride_key:
	.asciz	"hearth.probe_mmio_stride"
	.balign	2
/* Ports KVM emulates in the kernel (PIC, PIT, speaker, PIC, ELCR). */
in_kernel_ports:
	.word	0x20, 0x21
	.word	0x40, 0x43
	.word	0x61, 0x61
	.word	0xa0, 0xa1
	.word	0x4d0, 0x4d1
	.word	1, 0
/* Never written: COM1 (the console) and the i8042 (0xfe to 0x64 resets). */
no_write_ports:
	.word	0x3f8, 0x3ff
	.word	0x60, 0x64
	.word	1, 0
/* Probed after the walk. */
probe_ports:
	.word	0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff
	.word	0x60, 0x64, 0x70, 0x71, 0x80, 0xcf8, 0xcfc, 0x3e8, 0x2f8
probe_ports_end:

	.data
	.balign	8
probe_port_reads:	.quad	0
probe_port_writes:	.quad	0
probe_port_all_ones:	.quad	0
probe_mmio_reads:	.quad	0
probe_mmio_writes:	.quad	0
probe_mmio_all_ones:	.quad	0
