/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: the hostile scenario. For every virtio_mmio.device=
 * on the command line, whatever its type, for every malformed kind, for
 * every queue the device has (at most VQ_MAX): reset the device, accept
 * every feature it offers but INDIRECT_DESC, RING_PACKED,
 * NOTIFICATION_DATA and ADMIN_VQ (this driver uses split rings and plain
 * notifications), set up all its queues, DRIVER_OK, post the malformed
 * buffer on that one queue, ring its doorbell, and watch:
 *   hearth-guest: HOSTILE round=<r> dev=<i> id=<DeviceID> queue=<q> kind=<kind> needs_reset=<0|1> used=<used elements>
 * A device that cannot be set up:
 *   hearth-guest: HOSTILE round=<r> dev=<i> id=<DeviceID> setup=<what failed>
 * At the end: hearth-guest: HOSTILE-DONE rounds=<n> lines=<HOSTILE lines>
 *
 * The well-formed chain underneath (buffers in the RAM pool, zeroed before
 * each post): descriptor 0 {A, 16 bytes, device-readable, NEXT 1},
 * descriptor 1 {B, 512 bytes, device-writable}, head 0. The kinds:
 *   huge      descriptor 1 is 0xffffffff bytes long
 *   overlap   descriptor 1 is A: the device writes what it reads
 *   loop      descriptor 1 has NEXT back to 0
 *   indirect  descriptor 0 is INDIRECT (not negotiated), a table of both
 *   long      every descriptor of the table chained, the last one's NEXT
 *             naming index queue size (beyond the table)
 *   oob       descriptor 1 at 0xf000000000, far outside RAM
 *   gap       descriptor 1 at 0xe0000000, in the 32-bit MMIO gap
 *   avail     the avail ring's idx is 0x8000 ahead (every slot names head 0)
 *   head      the avail ring names head queue size + 7 (beyond the table)
 */
#include "guest.h"
#include "virtio.h"

#define WAIT_MS_DEFAULT			200
#define OOB_ADDR			0xf000000000
#define GAP_ADDR			0xe0000000
#define HOSTILE_EXCLUDED		((1 << VIRTIO_F_INDIRECT_DESC) + (1 << VIRTIO_F_RING_PACKED) + (1 << VIRTIO_F_NOTIFICATION_DATA) + (1 << VIRTIO_F_ADMIN_VQ))

#define K_HUGE				0
#define K_OVERLAP			1
#define K_LOOP				2
#define K_INDIRECT			3
#define K_LONG				4
#define K_OOB				5
#define K_GAP				6
#define K_AVAIL				7
#define K_HEAD				8
#define K_COUNT				9

	.text
	.code64

/* put_kind(kind: edi): its name inside a line. */
put_kind:
	leaq	kind_names(%rip), %rax
1:	testl	%edi, %edi
	jz	3f
2:	cmpb	$0, (%rax)
	leaq	1(%rax), %rax
	jne	2b
	decl	%edi
	jmp	1b
3:	movq	%rax, %rdi
	jmp	puts

/* line_head(): "HOSTILE round=<r> dev=<i> id=<id>" at the start of a line. */
line_head:
	call	line_begin
	PUTS	"HOSTILE round="
	movq	h_round(%rip), %rdi
	call	put_dec
	PUTS	" dev="
	movq	h_dev(%rip), %rdi
	call	put_dec
	PUTS	" id="
	movl	vio_id(%rip), %edi
	jmp	put_dec

/*
 * h_setup() -> eax = queues set up (>= 1), or 0 after a setup= line.
 * Negotiate, set up every queue the device has, DRIVER_OK.
 */
h_setup:
	pushq	%rbx
	pushq	%r12
	movabsq	$~HOSTILE_EXCLUDED, %rdi
	call	vio_negotiate
	testl	%eax, %eax
	jz	1f
	movl	%eax, %ebx
	call	line_head
	PUTS	" setup="
	movl	%ebx, %edi
	call	vio_put_error
	jmp	4f
1:	xorl	%ebx, %ebx
2:	cmpl	$VQ_MAX, %ebx
	jae	3f
	movl	%ebx, %edi
	movl	$VQ_SIZE_MAX, %esi
	call	vq_setup
	testl	%eax, %eax
	jnz	3f
	incl	%ebx
	jmp	2b
3:	testl	%ebx, %ebx
	jz	5f
	call	vio_driver_ok
	movl	%ebx, %eax
	jmp	6f
5:	call	line_head
	PUTS	" setup=no queue"
4:	call	line_end
	xorl	%eax, %eax
6:	popq	%r12
	popq	%rbx
	ret

/* h_post(q: edi, kind: esi): build the kind's chain on queue q and ring the doorbell. */
h_post:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	movl	%edi, %ebx
	movl	%esi, %ebp
	movq	pool_lo(%rip), %rdi		/* A and B, zeroed */
	movl	$0x2000, %ecx
	xorl	%eax, %eax
	rep stosb
	movl	%ebx, %edi			/* descriptor 0: A, 16, NEXT 1 */
	xorl	%esi, %esi
	movq	pool_lo(%rip), %rdx
	movl	$16, %ecx
	movl	$VRING_DESC_F_NEXT, %r8d
	movl	$1, %r9d
	call	vq_set_desc
	movq	%rax, %r12			/* descriptor 0's address */
	movl	%ebx, %edi			/* descriptor 1: B, 512, WRITE */
	movl	$1, %esi
	movq	pool_lo(%rip), %rdx
	addq	$0x1000, %rdx
	movl	$512, %ecx
	movl	$VRING_DESC_F_WRITE, %r8d
	xorl	%r9d, %r9d
	call	vq_set_desc
	movl	%ebx, %edi
	call	vq_size
	movl	%eax, %r13d			/* queue size */
	leaq	kind_jumps(%rip), %rax
	movslq	(%rax, %rbp, 4), %rcx
	addq	%rcx, %rax
	jmp	*%rax
.Lk_huge:
	movl	$0xffffffff, (16 + 8)(%r12)
	jmp	.Lk_push
.Lk_overlap:
	movq	pool_lo(%rip), %rax
	movq	%rax, (16 + 0)(%r12)
	jmp	.Lk_push
.Lk_loop:
	movw	$(VRING_DESC_F_WRITE + VRING_DESC_F_NEXT), (16 + 12)(%r12)
	movw	$0, (16 + 14)(%r12)
	jmp	.Lk_push
.Lk_indirect:
	movq	pool_lo(%rip), %rdi		/* the table, after A's 16 bytes */
	addq	$0x800, %rdi
	movq	%r12, %rsi
	movl	$(2 * VRING_DESC_SIZE), %ecx
	rep movsb
	movq	pool_lo(%rip), %rax
	addq	$0x800, %rax
	movq	%rax, 0(%r12)
	movl	$(2 * VRING_DESC_SIZE), 8(%r12)
	movw	$VRING_DESC_F_INDIRECT, 12(%r12)
	movw	$0, 14(%r12)
	jmp	.Lk_push
.Lk_long:
	xorl	%ecx, %ecx
	movq	pool_lo(%rip), %rdx
1:	movq	%rcx, %rax
	shlq	$4, %rax
	movq	%rdx, 0(%r12, %rax)
	movl	$16, 8(%r12, %rax)
	movw	$VRING_DESC_F_NEXT, 12(%r12, %rax)
	leal	1(%rcx), %r8d
	movw	%r8w, 14(%r12, %rax)
	incl	%ecx
	cmpl	%r13d, %ecx
	jb	1b
	jmp	.Lk_push
.Lk_oob:
	movabsq	$OOB_ADDR, %rax
	movq	%rax, (16 + 0)(%r12)
	jmp	.Lk_push
.Lk_gap:
	movl	$GAP_ADDR, %eax			/* zero-extended */
	movq	%rax, (16 + 0)(%r12)
	jmp	.Lk_push
.Lk_avail:
	leaq	vq_avail_p(%rip), %rax
	movq	(%rax, %rbx, 8), %rdi
	movw	$0x8000, 2(%rdi)		/* ring slots are all 0: head 0 */
	jmp	.Lk_notify
.Lk_head:
	movl	%ebx, %edi
	leal	7(%r13), %esi
	call	vq_push
	jmp	.Lk_notify
.Lk_push:
	movl	%ebx, %edi
	xorl	%esi, %esi
	call	vq_push
.Lk_notify:
	movl	%ebx, %edi
	call	vq_notify
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

/*
 * h_watch(q: edi) -> eax = used elements seen, edx = 1 if the Status showed
 * NEEDS_RESET. Reads Status every millisecond until NEEDS_RESET, a used
 * element, or hearth.wait_ms.
 */
h_watch:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	movl	%edi, %r12d
	xorl	%r13d, %r13d			/* used */
	movq	h_wait_ms(%rip), %rdi
	call	tsc_deadline
	movq	%rax, %rbx
1:	movl	%r12d, %edi			/* bounded: at most a queue's worth */
	call	vq_pop_used
	testl	%eax, %eax
	js	2f
	incl	%r13d
	cmpl	$VQ_SIZE_MAX, %r13d
	jb	1b
2:	call	vio_status
	testl	$VIRTIO_S_NEEDS_RESET, %eax
	jnz	3f
	testl	%r13d, %r13d
	jnz	4f
	movq	%rbx, %rdi
	call	tsc_passed
	testl	%eax, %eax
	jnz	4f
	movl	$TSC_TICKS_PER_MS, %edi
	call	delay_tsc
	jmp	1b
3:	movl	$1, %edx
	jmp	5f
4:	xorl	%edx, %edx
5:	movl	%r13d, %eax
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/* h_device() -> eax = 0, or 1 if the device cannot be used any more. Every kind on every queue of the current device. */
h_device:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	xorl	%ebp, %ebp			/* kind */
.Lhd_kind:
	cmpl	$K_COUNT, %ebp
	jae	.Lhd_done
	cmpl	$0, h_kind(%rip)
	js	1f
	cmpl	h_kind(%rip), %ebp
	jne	.Lhd_next_kind
1:	xorl	%ebx, %ebx			/* queue */
.Lhd_queue:
	call	h_setup
	testl	%eax, %eax
	jz	.Lhd_failed
	cmpl	%eax, %ebx
	jae	.Lhd_reset_next_kind
	movl	%ebx, %edi
	movl	%ebp, %esi
	call	h_post
	movl	%ebx, %edi
	call	h_watch
	movl	%eax, %r12d
	movl	%edx, %r13d
	call	line_head
	PUTS	" queue="
	movl	%ebx, %edi
	call	put_dec
	PUTS	" kind="
	movl	%ebp, %edi
	call	put_kind
	PUTS	" needs_reset="
	movl	%r13d, %edi
	call	put_dec
	PUTS	" used="
	movl	%r12d, %edi
	call	put_dec
	call	line_end
	incq	h_lines(%rip)
	call	vio_reset
	testl	%eax, %eax
	jnz	.Lhd_stuck
	incl	%ebx
	jmp	.Lhd_queue
.Lhd_reset_next_kind:
	call	vio_reset
	testl	%eax, %eax
	jnz	.Lhd_stuck
.Lhd_next_kind:
	incl	%ebp
	jmp	.Lhd_kind
.Lhd_stuck:
	call	line_head
	PUTS	" setup=device does not reset"
	call	line_end
.Lhd_failed:
	movl	$1, %eax
	jmp	.Lhd_out
.Lhd_done:
	xorl	%eax, %eax
.Lhd_out:
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

/*
 * hostile: hearth.rounds (default 1) rounds over every device;
 * hearth.wait_ms (default 200) per post; hearth.kind=<one kind> to post
 * only that one.
 */
	.globl	scenario_hostile
scenario_hostile:
	pushq	%rbx
	pushq	%r12
	call	pool_init
	leaq	key_rounds(%rip), %rdi
	movl	$1, %esi
	call	cmdline_get_num
	movq	%rax, %r12
	leaq	key_wait_ms(%rip), %rdi
	movl	$WAIT_MS_DEFAULT, %esi
	call	cmdline_get_num
	movq	%rax, h_wait_ms(%rip)
	leaq	key_kind(%rip), %rdi
	leaq	kind_names(%rip), %rsi
	movl	$-2, %edx			/* absent: every kind */
	call	cmdline_choice
	movl	%eax, h_kind(%rip)
	cmpl	$-1, %eax
	jne	1f
	call	line_begin
	PUTS	"HOSTILE-FAIL unknown hearth.kind (huge, overlap, loop, indirect, long, oob, gap, avail, head)"
	call	line_end
	jmp	4f
1:	movq	$0, h_lines(%rip)
	movq	$1, h_round(%rip)
2:	cmpq	%r12, h_round(%rip)
	ja	3f
	xorl	%ebx, %ebx
5:	movq	%rbx, h_dev(%rip)
	xorl	%edi, %edi			/* any device */
	movl	%ebx, %esi
	call	vio_find
	testq	%rax, %rax
	jz	6f
	call	h_device
	incl	%ebx
	jmp	5b
6:	incq	h_round(%rip)
	jmp	2b
3:	call	line_begin
	PUTS	"HOSTILE-DONE rounds="
	movq	%r12, %rdi
	call	put_dec
	PUTS	" lines="
	movq	h_lines(%rip), %rdi
	call	put_dec
	call	line_end
4:	popq	%r12
	popq	%rbx
	ret

	.section .rodata
	.balign	4
kind_jumps:
	.long	.Lk_huge - kind_jumps, .Lk_overlap - kind_jumps, .Lk_loop - kind_jumps
	.long	.Lk_indirect - kind_jumps, .Lk_long - kind_jumps, .Lk_oob - kind_jumps
	.long	.Lk_gap - kind_jumps, .Lk_avail - kind_jumps, .Lk_head - kind_jumps
key_rounds:	.asciz	"hearth.rounds"
key_wait_ms:	.asciz	"hearth.wait_ms"
key_kind:	.asciz	"hearth.kind"
kind_names:	.asciz	"huge"
		.asciz	"overlap"
		.asciz	"loop"
		.asciz	"indirect"
		.asciz	"long"
		.asciz	"oob"
		.asciz	"gap"
		.asciz	"avail"
		.asciz	"head"
		.byte	0

	.data
	.balign	8
h_round:	.quad	0
h_dev:		.quad	0
h_lines:	.quad	0
h_wait_ms:	.quad	WAIT_MS_DEFAULT
h_kind:		.long	-2		/* -2: every kind */
