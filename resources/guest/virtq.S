/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: split virtqueues (virtio 1.2, 2.7) of the current
 * device (virtio.S), driven by polling.
 *
 * Queue q (0 <= q < VQ_MAX) has, unless the driver picks other addresses
 * with vq_setup_at, VQ_AREA_SIZE bytes of .bss: the descriptor table at +0,
 * the available ring at +VQ_AVAIL_OFF, the used ring at +VQ_USED_OFF, for
 * a queue size of up to VQ_SIZE_MAX. The driver chooses which descriptors
 * make a chain (vq_set_desc) and makes its head available (vq_push); one
 * notify (vq_notify) may cover several heads. Completions are taken from
 * the used ring in order (vq_pop_used, vq_wait_used). Interrupts stay off.
 */
#include "guest.h"
#include "virtio.h"

#define STATUS_POLL_EVERY		256	/* used-ring polls between Status reads */

	.text
	.code64

/* vq_num_max(q: edi) -> eax: QueueNumMax of queue q (0: no such queue). */
	.globl	vq_num_max
vq_num_max:
	movl	%edi, %esi
	movl	$VIRTIO_MMIO_QUEUE_SEL, %edi
	call	vio_wr
	movl	$VIRTIO_MMIO_QUEUE_NUM_MAX, %edi
	jmp	vio_rd

/*
 * vq_setup(q: edi, max: esi) -> eax = 0, or 1 if the device has no such
 * queue (or it is already live). The rings go in the queue's own area.
 */
	.globl	vq_setup
vq_setup:
	movl	%edi, %eax
	imulq	$VQ_AREA_SIZE, %rax, %rdx
	leaq	vq_area(%rip), %rax
	addq	%rax, %rdx
	leaq	VQ_AVAIL_OFF(%rdx), %rcx
	leaq	VQ_USED_OFF(%rdx), %r8
	/* fall through */

/*
 * vq_setup_at(q: edi, max: esi, desc: rdx, avail: rcx, used: r8) -> eax
 * QueueSel; QueueReady must read 0 and QueueNumMax be non-zero (else 1 is
 * returned); queue size = the largest power of two <= min(max,
 * VQ_SIZE_MAX, QueueNumMax); the three ring addresses (the driver's
 * memory, zeroed here: 16 * size, 6 + 2 * size and 6 + 8 * size bytes);
 * QueueReady 1. Returns 0.
 */
	.globl	vq_setup_at
vq_setup_at:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movl	%edi, %ebx
	movl	%esi, %r12d
	movq	%rdx, %r13
	movq	%rcx, %r14
	movq	%r8, %r15
	call	vq_num_max
	testl	%eax, %eax
	jz	.Lvqs_fail
	cmpl	%eax, %r12d
	jbe	1f
	movl	%eax, %r12d
1:	testl	%r12d, %r12d
	jz	.Lvqs_fail
	cmpl	$VQ_SIZE_MAX, %r12d
	jbe	2f
	movl	$VQ_SIZE_MAX, %r12d
2:	bsrl	%r12d, %ecx			/* largest power of two <= r12d */
	movl	$1, %r12d
	shll	%cl, %r12d
	movl	$VIRTIO_MMIO_QUEUE_READY, %edi
	call	vio_rd
	testl	%eax, %eax
	jnz	.Lvqs_fail
	movl	$VIRTIO_MMIO_QUEUE_NUM, %edi
	movl	%r12d, %esi
	call	vio_wr
	leaq	vq_num(%rip), %rax
	movl	%r12d, (%rax, %rbx, 4)
	leaq	vq_next_avail(%rip), %rax
	movl	$0, (%rax, %rbx, 4)
	leaq	vq_last_used(%rip), %rax
	movl	$0, (%rax, %rbx, 4)
	leaq	vq_desc_p(%rip), %rax
	movq	%r13, (%rax, %rbx, 8)
	leaq	vq_avail_p(%rip), %rax
	movq	%r14, (%rax, %rbx, 8)
	leaq	vq_used_p(%rip), %rax
	movq	%r15, (%rax, %rbx, 8)
	/* Zero the rings. */
	movq	%r13, %rdi
	movl	%r12d, %ecx
	shll	$4, %ecx
	xorl	%eax, %eax
	rep stosb
	movq	%r14, %rdi
	leal	6(, %r12, 2), %ecx
	rep stosb
	movq	%r15, %rdi
	leal	6(, %r12, 8), %ecx
	rep stosb
	movl	$VIRTIO_MMIO_QUEUE_DESC_LOW, %edi
	movq	%r13, %rsi
	call	vq_write_addr
	movl	$VIRTIO_MMIO_QUEUE_DRIVER_LOW, %edi
	movq	%r14, %rsi
	call	vq_write_addr
	movl	$VIRTIO_MMIO_QUEUE_DEVICE_LOW, %edi
	movq	%r15, %rsi
	call	vq_write_addr
	movl	$VIRTIO_MMIO_QUEUE_READY, %edi
	movl	$1, %esi
	call	vio_wr
	xorl	%eax, %eax
	jmp	.Lvqs_out
.Lvqs_fail:
	movl	$1, %eax
.Lvqs_out:
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/* vq_write_addr(low_reg: edi, addr: rsi): the register pair low_reg, low_reg + 4. */
vq_write_addr:
	pushq	%rdi
	pushq	%rsi
	call	vio_wr
	popq	%rsi
	popq	%rdi
	addl	$4, %edi
	shrq	$32, %rsi
	jmp	vio_wr

/* vq_size(q: edi) -> eax: the size vq_setup chose. */
	.globl	vq_size
vq_size:
	movl	%edi, %edi
	leaq	vq_num(%rip), %rax
	movl	(%rax, %rdi, 4), %eax
	ret

/* vq_desc(q: edi, i: esi) -> rax: the address of descriptor i of queue q. */
	.globl	vq_desc
vq_desc:
	movl	%edi, %edi
	movl	%esi, %esi
	leaq	vq_desc_p(%rip), %rax
	movq	(%rax, %rdi, 8), %rax
	shlq	$4, %rsi
	addq	%rsi, %rax
	ret

/*
 * vq_set_desc(q: edi, i: esi, addr: rdx, len: ecx, flags: r8d, next: r9d) -> rax
 * Fill descriptor i of queue q; returns its address.
 */
	.globl	vq_set_desc
vq_set_desc:
	movl	%edi, %edi
	movl	%esi, %esi
	leaq	vq_desc_p(%rip), %rax
	movq	(%rax, %rdi, 8), %rax
	shlq	$4, %rsi
	addq	%rsi, %rax
	movq	%rdx, 0(%rax)
	movl	%ecx, 8(%rax)
	movw	%r8w, 12(%rax)
	movw	%r9w, 14(%rax)
	ret

/*
 * vq_push(q: edi, head: esi): put head in the next slot of the available
 * ring, then advance the ring's idx (the store order the device relies on).
 * The device is not notified.
 */
	.globl	vq_push
vq_push:
	movl	%edi, %edi
	leaq	vq_avail_p(%rip), %rax
	movq	(%rax, %rdi, 8), %r8		/* avail ring */
	leaq	vq_next_avail(%rip), %r9
	movl	(%r9, %rdi, 4), %edx		/* our idx (free-running) */
	leaq	vq_num(%rip), %r10
	movl	(%r10, %rdi, 4), %r11d
	decl	%r11d
	andl	%edx, %r11d			/* ring slot */
	movw	%si, 4(%r8, %r11, 2)
	mfence
	incl	%edx
	movw	%dx, 2(%r8)
	movl	%edx, (%r9, %rdi, 4)
	ret

/* vq_notify(q: edi): mfence, then write q to QueueNotify. */
	.globl	vq_notify
vq_notify:
	mfence
	movl	%edi, %esi
	movl	$VIRTIO_MMIO_QUEUE_NOTIFY, %edi
	jmp	vio_wr

/*
 * vq_post(q: edi, addr: rsi, len: edx, flags: ecx)
 * Descriptor 0 = {addr, len, flags, next 0}, made available and notified:
 * for drivers with at most one single-descriptor buffer in flight.
 */
	.globl	vq_post
vq_post:
	pushq	%rdi
	movl	%ecx, %r8d
	movl	%edx, %ecx
	movq	%rsi, %rdx
	xorl	%esi, %esi
	xorl	%r9d, %r9d
	call	vq_set_desc
	movq	(%rsp), %rdi
	xorl	%esi, %esi
	call	vq_push
	popq	%rdi
	jmp	vq_notify

/*
 * vq_pop_used(q: edi) -> eax = id of the next used element, edx = its len;
 * eax = VQ_TIMEOUT (-1) if the device has used nothing new.
 */
	.globl	vq_pop_used
vq_pop_used:
	movl	%edi, %edi
	leaq	vq_used_p(%rip), %rax
	movq	(%rax, %rdi, 8), %r8		/* used ring */
	leaq	vq_last_used(%rip), %r9
	movl	(%r9, %rdi, 4), %ecx
	movzwl	2(%r8), %eax
	cmpw	%cx, %ax
	je	1f
	leaq	vq_num(%rip), %r10
	movl	(%r10, %rdi, 4), %r11d
	decl	%r11d
	andl	%ecx, %r11d
	movl	4(%r8, %r11, 8), %eax		/* id */
	movl	8(%r8, %r11, 8), %edx		/* len */
	incl	%ecx
	movl	%ecx, (%r9, %rdi, 4)
	ret
1:	movl	$VQ_TIMEOUT, %eax
	xorl	%edx, %edx
	ret

/*
 * vq_wait_used(q: edi, ms: esi) -> eax = id, edx = len of the next used
 * element; VQ_TIMEOUT after at least ms milliseconds (TSC at <= 4 GHz), or
 * VQ_NEEDS_RESET once Status shows DEVICE_NEEDS_RESET. Status is read, and
 * InterruptStatus acknowledged, every STATUS_POLL_EVERY polls.
 */
	.globl	vq_wait_used
vq_wait_used:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	movl	%edi, %r12d
	movl	%esi, %edi
	call	tsc_deadline
	movq	%rax, %rbx
	movl	$STATUS_POLL_EVERY, %r13d
1:	movl	%r12d, %edi
	call	vq_pop_used
	cmpl	$VQ_TIMEOUT, %eax
	jne	.Lvw_out
	decl	%r13d
	jnz	2f
	movl	$STATUS_POLL_EVERY, %r13d
	call	vio_ack_interrupts
	call	vio_status
	testl	$VIRTIO_S_NEEDS_RESET, %eax
	movl	$VQ_NEEDS_RESET, %eax
	jnz	.Lvw_out
2:	pause
	movq	%rbx, %rdi
	call	tsc_passed
	testl	%eax, %eax
	jz	1b
	movl	%r12d, %edi			/* one last look */
	call	vq_pop_used
.Lvw_out:
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/*
 * vio_wait_needs_reset(ms: edi) -> eax: the Status register once it shows
 * DEVICE_NEEDS_RESET, or as it reads after at least ms milliseconds.
 */
	.globl	vio_wait_needs_reset
vio_wait_needs_reset:
	pushq	%rbx
	pushq	%r12
	call	tsc_deadline
	movq	%rax, %rbx
1:	call	vio_status
	movl	%eax, %r12d
	testl	$VIRTIO_S_NEEDS_RESET, %eax
	jnz	2f
	movl	$1000, %edi
	call	delay
	movq	%rbx, %rdi
	call	tsc_passed
	testl	%eax, %eax
	jz	1b
2:	movl	%r12d, %eax
	popq	%r12
	popq	%rbx
	ret

	.data
	.balign	8
	.globl	vq_desc_p, vq_avail_p, vq_used_p, vq_num
vq_desc_p:	.fill	VQ_MAX, 8, 0	/* ring addresses of each queue */
vq_avail_p:	.fill	VQ_MAX, 8, 0
vq_used_p:	.fill	VQ_MAX, 8, 0
vq_num:		.fill	VQ_MAX, 4, 0	/* queue sizes */
vq_next_avail:	.fill	VQ_MAX, 4, 0	/* our avail idx (low 16 bits count) */
vq_last_used:	.fill	VQ_MAX, 4, 0	/* used idx we have consumed up to */

	.bss
	.balign	4096
	.globl	vq_area
vq_area:	.skip	VQ_MAX * VQ_AREA_SIZE
