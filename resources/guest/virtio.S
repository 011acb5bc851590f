/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: the virtio-mmio transport every driver shares
 * (virtio 1.2, 4.2.2 "MMIO Device Register Layout", Version 2 only):
 * device discovery from the command line, register and config space
 * access, reset, feature negotiation and status.
 *
 * One device at a time is "current" (vio_base): vio_find selects it, and
 * every other function here and in virtq.S works on it. A driver that
 * moves to another device calls vio_find again.
 */
#include "guest.h"
#include "virtio.h"

#define RESET_POLLS			100000
#define GENERATION_TRIES		16

	.text
	.code64

/* vio_rd(off: edi) -> eax: a 32-bit read of register off of the current device. */
	.globl	vio_rd
vio_rd:
	movq	vio_base(%rip), %rax
	movl	%edi, %edi
	movl	(%rax, %rdi), %eax
	ret

/* vio_wr(off: edi, value: esi): a 32-bit write. */
	.globl	vio_wr
vio_wr:
	movq	vio_base(%rip), %rax
	movl	%edi, %edi
	movl	%esi, (%rax, %rdi)
	ret

/* vio_cfg_rd8/16/32(off: edi) -> eax: a read of config space at off, of that width. */
	.globl	vio_cfg_rd8, vio_cfg_rd16, vio_cfg_rd32
vio_cfg_rd8:
	movq	vio_base(%rip), %rax
	movl	%edi, %edi
	movzbl	VIRTIO_MMIO_CONFIG(%rax, %rdi), %eax
	ret
vio_cfg_rd16:
	movq	vio_base(%rip), %rax
	movl	%edi, %edi
	movzwl	VIRTIO_MMIO_CONFIG(%rax, %rdi), %eax
	ret
vio_cfg_rd32:
	movq	vio_base(%rip), %rax
	movl	%edi, %edi
	movl	VIRTIO_MMIO_CONFIG(%rax, %rdi), %eax
	ret

/*
 * vio_cfg_rd64(off: edi) -> rax: a 64-bit config field as two 32-bit reads,
 * retried while ConfigGeneration changes under them (4.2.2.1).
 */
	.globl	vio_cfg_rd64
vio_cfg_rd64:
	movq	vio_base(%rip), %r8
	movl	%edi, %edi
	movl	$GENERATION_TRIES, %r10d
1:	movl	VIRTIO_MMIO_CONFIG_GENERATION(%r8), %r9d
	movl	VIRTIO_MMIO_CONFIG(%r8, %rdi), %eax
	movl	(VIRTIO_MMIO_CONFIG + 4)(%r8, %rdi), %edx
	cmpl	VIRTIO_MMIO_CONFIG_GENERATION(%r8), %r9d
	je	2f
	decl	%r10d
	jnz	1b
2:	shlq	$32, %rdx
	orq	%rdx, %rax
	ret

/* vio_status() -> eax: the Status register. */
	.globl	vio_status
vio_status:
	movl	$VIRTIO_MMIO_STATUS, %edi
	jmp	vio_rd

/* vio_set_status(bits: esi) */
	.globl	vio_set_status
vio_set_status:
	movl	$VIRTIO_MMIO_STATUS, %edi
	jmp	vio_wr

/* vio_add_status(bits: edi): Status |= bits. */
	.globl	vio_add_status
vio_add_status:
	pushq	%rdi
	call	vio_status
	popq	%rsi
	orl	%eax, %esi
	jmp	vio_set_status

/* vio_driver_ok(): set DRIVER_OK after the queues are set up. */
	.globl	vio_driver_ok
vio_driver_ok:
	movl	$VIRTIO_S_DRIVER_OK, %edi
	jmp	vio_add_status

/* vio_ack_interrupts(): write whatever InterruptStatus shows to InterruptACK. */
	.globl	vio_ack_interrupts
vio_ack_interrupts:
	movl	$VIRTIO_MMIO_INTERRUPT_STATUS, %edi
	call	vio_rd
	testl	%eax, %eax
	jz	1f
	movl	%eax, %esi
	movl	$VIRTIO_MMIO_INTERRUPT_ACK, %edi
	jmp	vio_wr
1:	ret

/*
 * vio_reset() -> eax = VIO_OK, or VIO_ERR_RESET if Status does not read
 * back 0 within RESET_POLLS reads.
 */
	.globl	vio_reset
vio_reset:
	pushq	%rbx
	xorl	%esi, %esi
	call	vio_set_status
	movl	$RESET_POLLS, %ebx
1:	call	vio_status
	testl	%eax, %eax
	jz	2f
	pause
	decl	%ebx
	jnz	1b
	movl	$VIO_ERR_RESET, %eax
	jmp	3f
2:	xorl	%eax, %eax
3:	popq	%rbx
	ret

/*
 * vio_negotiate(wanted: rdi) -> eax = VIO_OK or a VIO_ERR_*
 * The initialisation of 3.1.1 up to FEATURES_OK: Version must be 2; reset;
 * ACKNOWLEDGE, DRIVER; DeviceFeatures (64 bits) into vio_offered; accept
 * offered & wanted into vio_features (VERSION_1 required); FEATURES_OK,
 * read back. On a refusal FAILED is set. The caller then sets up its
 * queues and calls vio_driver_ok.
 */
	.globl	vio_negotiate
vio_negotiate:
	pushq	%rbx
	pushq	%r12
	movq	%rdi, %r12
	movl	$VIRTIO_MMIO_VERSION, %edi
	call	vio_rd
	cmpl	$2, %eax
	je	1f
	movl	$VIO_ERR_VERSION, %eax
	jmp	.Lvn_out
1:	call	vio_reset
	testl	%eax, %eax
	jnz	.Lvn_out
	movl	$VIRTIO_S_ACKNOWLEDGE, %esi
	call	vio_set_status
	movl	$(VIRTIO_S_ACKNOWLEDGE + VIRTIO_S_DRIVER), %esi
	call	vio_set_status
	movl	$VIRTIO_MMIO_DEVICE_FEATURES_SEL, %edi
	movl	$1, %esi
	call	vio_wr
	movl	$VIRTIO_MMIO_DEVICE_FEATURES, %edi
	call	vio_rd
	movl	%eax, %ebx
	shlq	$32, %rbx
	movl	$VIRTIO_MMIO_DEVICE_FEATURES_SEL, %edi
	xorl	%esi, %esi
	call	vio_wr
	movl	$VIRTIO_MMIO_DEVICE_FEATURES, %edi
	call	vio_rd
	orq	%rax, %rbx
	movq	%rbx, vio_offered(%rip)
	andq	%r12, %rbx
	movq	%rbx, vio_features(%rip)
	btq	$VIRTIO_F_VERSION_1, %rbx
	jc	2f
	movl	$VIRTIO_S_FAILED, %edi
	call	vio_add_status
	movl	$VIO_ERR_NO_VERSION_1, %eax
	jmp	.Lvn_out
2:	movl	$VIRTIO_MMIO_DRIVER_FEATURES_SEL, %edi
	xorl	%esi, %esi
	call	vio_wr
	movl	$VIRTIO_MMIO_DRIVER_FEATURES, %edi
	movl	%ebx, %esi
	call	vio_wr
	movl	$VIRTIO_MMIO_DRIVER_FEATURES_SEL, %edi
	movl	$1, %esi
	call	vio_wr
	movl	$VIRTIO_MMIO_DRIVER_FEATURES, %edi
	movq	%rbx, %rsi
	shrq	$32, %rsi
	call	vio_wr
	movl	$(VIRTIO_S_ACKNOWLEDGE + VIRTIO_S_DRIVER + VIRTIO_S_FEATURES_OK), %esi
	call	vio_set_status
	call	vio_status
	testl	$VIRTIO_S_FEATURES_OK, %eax
	jnz	3f
	movl	$VIRTIO_S_FAILED, %edi
	call	vio_add_status
	movl	$VIO_ERR_FEATURES_OK, %eax
	jmp	.Lvn_out
3:	xorl	%eax, %eax
.Lvn_out:
	popq	%r12
	popq	%rbx
	ret

/*
 * vio_put_error(code: edi): print what a VIO_ERR_* means, inside a line:
 * "version=<n>", "device does not reset", "device does not offer
 * VERSION_1" or "FEATURES_OK not accepted".
 */
	.globl	vio_put_error
vio_put_error:
	cmpl	$VIO_ERR_VERSION, %edi
	jne	1f
	PUTS	"version="
	movl	$VIRTIO_MMIO_VERSION, %edi
	call	vio_rd
	movl	%eax, %edi
	jmp	put_dec
1:	leaq	msg_no_reset(%rip), %rax
	cmpl	$VIO_ERR_RESET, %edi
	je	2f
	leaq	msg_no_version1(%rip), %rax
	cmpl	$VIO_ERR_NO_VERSION_1, %edi
	je	2f
	leaq	msg_features_refused(%rip), %rax
2:	movq	%rax, %rdi
	jmp	puts

/*
 * vio_find(id: edi, index: esi) -> rax
 * Walk the command line tokens virtio_mmio.device=<size>[KMG]@<base>:<irq>
 * (size decimal or 0x hex, base decimal or 0x hex, irq decimal) in order
 * and make current the index-th (from 0) device whose registers lie below
 * 4 GiB, whose MagicValue is "virt" and whose DeviceID is id (id 0: any
 * DeviceID but 0). Sets vio_base, vio_size, vio_irq and vio_id; returns
 * the base, or 0 if there is no such device (vio_base is then unchanged).
 */
	.globl	vio_find
vio_find:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movl	%edi, %ebp			/* id */
	movl	%esi, %r15d			/* matches still to skip */
	leaq	cmdline_buf(%rip), %rbx
.Lvf_token:
	movzbl	(%rbx), %eax
	testl	%eax, %eax
	jz	.Lvf_none
	cmpl	$0x20, %eax
	je	.Lvf_ws
	cmpl	$0x09, %eax
	je	.Lvf_ws
	leaq	vio_key(%rip), %rsi
	movq	%rbx, %rdi
1:	movzbl	(%rsi), %ecx
	testl	%ecx, %ecx
	jz	.Lvf_match
	cmpb	(%rdi), %cl
	jne	.Lvf_skip
	incq	%rsi
	incq	%rdi
	jmp	1b
.Lvf_match:
	call	parse_num			/* size */
	testl	%ecx, %ecx
	jz	.Lvf_skip
	movq	%rax, %r12
	movzbl	(%rdx), %ecx
	orl	$0x20, %ecx
	cmpl	$0x6b, %ecx			/* 'k' */
	jne	2f
	shlq	$10, %r12
	incq	%rdx
	jmp	4f
2:	cmpl	$0x6d, %ecx			/* 'm' */
	jne	3f
	shlq	$20, %r12
	incq	%rdx
	jmp	4f
3:	cmpl	$0x67, %ecx			/* 'g' */
	jne	4f
	shlq	$30, %r12
	incq	%rdx
4:	cmpb	$0x40, (%rdx)			/* '@' */
	jne	.Lvf_skip
	leaq	1(%rdx), %rdi
	call	parse_num			/* base */
	testl	%ecx, %ecx
	jz	.Lvf_skip
	movq	%rax, %r13
	cmpb	$0x3a, (%rdx)			/* ':' */
	jne	.Lvf_skip
	leaq	1(%rdx), %rdi
	call	parse_num			/* irq */
	testl	%ecx, %ecx
	jz	.Lvf_skip
	movq	%rax, %r14
	/* Only what the guest maps: the registers must end below 4 GiB. */
	testq	%r13, %r13
	jz	.Lvf_skip
	testl	$3, %r13d
	jnz	.Lvf_skip
	leaq	(VIRTIO_MMIO_CONFIG + 8)(%r13), %rax
	movabsq	$0x100000000, %rcx
	cmpq	%rcx, %rax
	ja	.Lvf_skip
	cmpl	$VIRTIO_MMIO_MAGIC, VIRTIO_MMIO_MAGIC_VALUE(%r13)
	jne	.Lvf_skip
	movl	VIRTIO_MMIO_DEVICE_ID(%r13), %eax
	testl	%ebp, %ebp
	jnz	5f
	testl	%eax, %eax			/* any device: not a placeholder */
	jz	.Lvf_skip
	jmp	6f
5:	cmpl	%ebp, %eax
	jne	.Lvf_skip
6:	subl	$1, %r15d
	jae	.Lvf_skip			/* not yet the index-th */
	movq	%r13, vio_base(%rip)
	movq	%r12, vio_size(%rip)
	movq	%r14, vio_irq(%rip)
	movl	%eax, vio_id(%rip)
	movq	%r13, %rax
	jmp	.Lvf_out
.Lvf_skip:
	movzbl	(%rbx), %eax
	testl	%eax, %eax
	jz	.Lvf_none
	cmpl	$0x20, %eax
	je	.Lvf_token
	cmpl	$0x09, %eax
	je	.Lvf_token
	incq	%rbx
	jmp	.Lvf_skip
.Lvf_ws:
	incq	%rbx
	jmp	.Lvf_token
.Lvf_none:
	xorl	%eax, %eax
.Lvf_out:
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

	.section .rodata
vio_key:		.asciz	"virtio_mmio.device="
msg_no_reset:		.asciz	"device does not reset"
msg_no_version1:	.asciz	"device does not offer VERSION_1"
msg_features_refused:	.asciz	"FEATURES_OK not accepted"

	.data
	.balign	8
	.globl	vio_base, vio_size, vio_irq, vio_id, vio_offered, vio_features
vio_base:	.quad	0		/* the current device's registers */
vio_size:	.quad	0
vio_irq:	.quad	0
vio_offered:	.quad	0		/* DeviceFeatures, 64 bits */
vio_features:	.quad	0		/* what the driver accepted */
vio_id:		.long	0		/* its DeviceID */
