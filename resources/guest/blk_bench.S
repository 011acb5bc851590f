/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: the blk-bench scenario. A fixed number of requests of
 * one size, several in flight, between two lines the host times:
 *   hearth-guest: BLK-BENCH-START dev=<n> op=<read|write> mode=<seq|rand> bs=<bytes> qd=<n> ops=<n>
 *   hearth-guest: BLK-BENCH-END ops=<n> bytes=<n> errors=<requests not OK>
 * Request slot i (0 <= i < qd) uses descriptors i * stride onwards
 * (stride = data descriptors + 2) and the buffer at
 * pool_lo + i * (bs rounded up to 4 KiB).
 */
#include "guest.h"
#include "virtio.h"
#include "blk.h"

#define OPS_DEFAULT			1000
#define BS_DEFAULT			4096
#define QD_DEFAULT			1

	.text
	.code64

/* bench_fail(msg: rdi): hearth-guest: BLK-FAIL bench: <msg> */
bench_fail:
	pushq	%rdi
	call	line_begin
	PUTS	"BLK-FAIL bench: "
	popq	%rdi
	call	puts
	jmp	line_end

/*
 * bench_params() -> eax = 0, or 1 after a BLK-FAIL line.
 * Reads and checks hearth.ops, op, mode, bs, qd, seed, start into bn_*.
 */
bench_params:
	leaq	key_ops(%rip), %rdi
	movl	$OPS_DEFAULT, %esi
	call	cmdline_get_num
	movq	%rax, bn_ops(%rip)
	leaq	key_bench_op(%rip), %rdi
	leaq	bench_op_names(%rip), %rsi
	xorl	%edx, %edx
	call	cmdline_choice
	movl	%eax, bn_write(%rip)
	leaq	msg_op(%rip), %rdi
	testl	%eax, %eax
	js	.Lbp_fail
	leaq	key_mode(%rip), %rdi
	leaq	mode_names(%rip), %rsi
	xorl	%edx, %edx
	call	cmdline_choice
	movl	%eax, bn_rand(%rip)
	leaq	msg_mode(%rip), %rdi
	testl	%eax, %eax
	js	.Lbp_fail
	leaq	key_bs(%rip), %rdi
	movl	$BS_DEFAULT, %esi
	call	cmdline_get_num
	movq	%rax, bn_bs(%rip)
	leaq	msg_bs(%rip), %rdi
	testq	%rax, %rax
	jz	.Lbp_fail
	testl	$(SECTOR_SIZE - 1), %eax
	jnz	.Lbp_fail
	pushq	%rax
	call	blk_max_request
	popq	%rcx
	cmpq	%rax, %rcx
	ja	.Lbp_fail
	/* Data descriptors: bs / seg_bytes, rounded up; stride = that + 2. */
	movl	blk_seg_bytes(%rip), %esi
	leaq	-1(%rcx, %rsi), %rax
	xorl	%edx, %edx
	divq	%rsi
	addl	$2, %eax
	movl	%eax, bn_stride(%rip)
	addq	$0xfff, %rcx
	andq	$~0xfff, %rcx
	movq	%rcx, bn_buf_bytes(%rip)
	leaq	key_qd(%rip), %rdi
	movl	$QD_DEFAULT, %esi
	call	cmdline_get_num
	movq	%rax, bn_qd(%rip)
	leaq	msg_qd(%rip), %rdi
	testq	%rax, %rax
	jz	.Lbp_fail
	cmpq	$VQ_SIZE_MAX, %rax
	ja	.Lbp_fail
	movl	bn_stride(%rip), %ecx
	imulq	%rax, %rcx
	pushq	%rcx
	movl	$BLK_QUEUE, %edi
	call	vq_size
	popq	%rcx
	leaq	msg_qd(%rip), %rdi
	cmpq	%rax, %rcx
	ja	.Lbp_fail
	movq	bn_qd(%rip), %rax
	imulq	bn_buf_bytes(%rip), %rax
	pushq	%rax
	call	pool_bytes
	popq	%rcx
	leaq	msg_pool(%rip), %rdi
	cmpq	%rax, %rcx
	ja	.Lbp_fail
	movq	bn_bs(%rip), %rax
	shrq	$9, %rax
	movq	%rax, bn_sectors(%rip)
	leaq	msg_small(%rip), %rdi
	cmpq	blk_capacity(%rip), %rax
	ja	.Lbp_fail
	leaq	key_seed(%rip), %rdi
	movl	$1, %esi
	call	cmdline_get_num
	testq	%rax, %rax
	jnz	1f
	movl	$1, %eax
1:	movq	%rax, bn_rng(%rip)
	leaq	key_start(%rip), %rdi
	xorl	%esi, %esi
	call	cmdline_get_num
	movq	%rax, bn_next(%rip)
	xorl	%eax, %eax
	ret
.Lbp_fail:
	call	bench_fail
	movl	$1, %eax
	ret

/*
 * bench_sector() -> rax: the next request's first sector. seq: from
 * hearth.start on, back to 0 when the next request would pass the end.
 * rand: xorshift64 from hearth.seed (default 1), a multiple of bs in
 * [0, capacity - bs].
 */
bench_sector:
	cmpl	$0, bn_rand(%rip)
	jne	2f
	movq	bn_next(%rip), %rax
	movq	bn_sectors(%rip), %rcx
	leaq	(%rax, %rcx), %rdx
	cmpq	blk_capacity(%rip), %rdx
	jbe	1f
	xorl	%eax, %eax
	movq	%rcx, %rdx
1:	movq	%rdx, bn_next(%rip)
	ret
2:	movq	bn_rng(%rip), %rax
	movq	%rax, %rdx
	shlq	$13, %rdx
	xorq	%rdx, %rax
	movq	%rax, %rdx
	shrq	$7, %rdx
	xorq	%rdx, %rax
	movq	%rax, %rdx
	shlq	$17, %rdx
	xorq	%rdx, %rax
	movq	%rax, bn_rng(%rip)
	movq	blk_capacity(%rip), %rax
	xorl	%edx, %edx
	divq	bn_sectors(%rip)		/* rax = positions */
	movq	%rax, %rcx
	movq	bn_rng(%rip), %rax
	xorl	%edx, %edx
	divq	%rcx
	movq	%rdx, %rax
	imulq	bn_sectors(%rip), %rax
	ret

/* bench_submit(slot: edi): the next request in slot (made available, not notified). */
bench_submit:
	pushq	%rbx
	movl	%edi, %ebx
	call	bench_sector
	movq	%rax, %rdx			/* sector */
	movl	%ebx, %edi
	imull	bn_stride(%rip), %edi		/* base */
	movl	bn_write(%rip), %esi		/* VIRTIO_BLK_T_IN 0, OUT 1 */
	movq	bn_buf_bytes(%rip), %rcx
	imulq	%rbx, %rcx
	addq	pool_lo(%rip), %rcx
	movl	bn_bs(%rip), %r8d
	call	blk_submit
	incq	bn_submitted(%rip)
	popq	%rbx
	ret

/* bench_start_line(): BLK-BENCH-START dev=<n> op=<op> mode=<mode> bs=<n> qd=<n> ops=<n> */
bench_start_line:
	call	line_begin
	PUTS	"BLK-BENCH-START"
	call	blk_put_dev
	PUTS	" op="
	cmpl	$0, bn_write(%rip)
	jne	1f
	PUTS	"read"
	jmp	2f
1:	PUTS	"write"
2:	PUTS	" mode="
	cmpl	$0, bn_rand(%rip)
	jne	3f
	PUTS	"seq"
	jmp	4f
3:	PUTS	"rand"
4:	PUTS	" bs="
	movq	bn_bs(%rip), %rdi
	call	put_dec
	PUTS	" qd="
	movq	bn_qd(%rip), %rdi
	call	put_dec
	PUTS	" ops="
	movq	bn_ops(%rip), %rdi
	call	put_dec
	jmp	line_end

	.globl	scenario_blk_bench
scenario_blk_bench:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	call	blk_setup
	testl	%eax, %eax
	jnz	.Lbb_out
	call	bench_params
	testl	%eax, %eax
	jnz	.Lbb_out
	movq	$0, bn_submitted(%rip)
	xorl	%r12d, %r12d			/* completed */
	xorl	%r13d, %r13d			/* errors */
	call	bench_start_line
	xorl	%ebx, %ebx
1:	cmpq	bn_qd(%rip), %rbx
	jae	2f
	cmpq	bn_ops(%rip), %rbx
	jae	2f
	movl	%ebx, %edi
	call	bench_submit
	incl	%ebx
	jmp	1b
2:	movl	$BLK_QUEUE, %edi
	call	vq_notify
.Lbb_loop:
	cmpq	bn_ops(%rip), %r12
	jae	.Lbb_done
	movl	$BLK_QUEUE, %edi
	movl	$BLK_WAIT_MS, %esi
	call	vq_wait_used
	testl	%eax, %eax
	js	.Lbb_stuck
	xorl	%ebx, %ebx			/* pushed since the last notify */
.Lbb_used:
	movl	%eax, %edi
	pushq	%rdi
	call	blk_status_of
	popq	%rdi
	testl	%eax, %eax
	jz	3f
	incq	%r13
3:	incq	%r12
	movl	%edi, %eax			/* slot = id / stride, checked */
	xorl	%edx, %edx
	divl	bn_stride(%rip)
	testl	%edx, %edx
	jnz	.Lbb_bad_id
	cmpq	bn_qd(%rip), %rax
	jae	.Lbb_bad_id
	movq	bn_submitted(%rip), %rcx
	cmpq	bn_ops(%rip), %rcx
	jae	4f
	movl	%eax, %edi
	call	bench_submit
	movl	$1, %ebx
4:	movl	$BLK_QUEUE, %edi		/* more completions already there? */
	call	vq_pop_used
	testl	%eax, %eax
	jns	.Lbb_used
	testl	%ebx, %ebx
	jz	.Lbb_loop
	movl	$BLK_QUEUE, %edi
	call	vq_notify
	jmp	.Lbb_loop
.Lbb_done:
	call	line_begin
	PUTS	"BLK-BENCH-END ops="
	movq	%r12, %rdi
	call	put_dec
	PUTS	" bytes="
	movq	%r12, %rdi
	imulq	bn_bs(%rip), %rdi
	call	put_dec
	PUTS	" errors="
	movq	%r13, %rdi
	call	put_dec
	call	line_end
	jmp	.Lbb_out
.Lbb_stuck:
	movl	%eax, %ebx
	call	line_begin
	PUTS	"BLK-FAIL bench: "
	movl	%ebx, %edi
	call	blk_put_status
	PUTS	" after ops="
	movq	%r12, %rdi
	call	put_dec
	call	line_end
	jmp	.Lbb_out
.Lbb_bad_id:
	leaq	msg_bad_id(%rip), %rdi
	call	bench_fail
.Lbb_out:
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

	.section .rodata
key_ops:	.asciz	"hearth.ops"
key_bench_op:	.asciz	"hearth.op"
key_mode:	.asciz	"hearth.mode"
key_qd:		.asciz	"hearth.qd"
bench_op_names:	.asciz	"read"
		.asciz	"write"
		.byte	0
mode_names:	.asciz	"seq"
		.asciz	"rand"
		.byte	0
msg_op:		.asciz	"hearth.op must be read or write"
msg_mode:	.asciz	"hearth.mode must be seq or rand"
msg_bs:		.asciz	"hearth.bs must be a non-zero multiple of 512 up to segs * seg_bytes"
msg_qd:		.asciz	"hearth.qd must be at least 1 and qd * (data descriptors + 2) at most the queue size"
msg_pool:	.asciz	"qd * bs does not fit the RAM pool"
msg_small:	.asciz	"the disk is smaller than bs"
msg_bad_id:	.asciz	"the device returned an id that is no request's head"

	.data
	.balign	8
bn_ops:		.quad	0
bn_bs:		.quad	0		/* bytes per request */
bn_sectors:	.quad	0		/* sectors per request */
bn_qd:		.quad	0
bn_buf_bytes:	.quad	0		/* bs rounded up to 4 KiB */
bn_rng:		.quad	1		/* xorshift64 state */
bn_next:	.quad	0		/* seq: the next sector */
bn_submitted:	.quad	0
bn_write:	.long	0		/* 0 read, 1 write */
bn_rand:	.long	0		/* 0 seq, 1 rand */
bn_stride:	.long	3
