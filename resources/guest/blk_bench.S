/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: the block load generators: blk-loop (at the end of
 * this file) and blk-bench. blk-bench: a fixed number of requests of
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
#define EVERY_MIB_DEFAULT		16

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

/*
 * blk-loop: read the whole disk over and over, hearth.bs bytes per request,
 * from sector 0, wrapping at the capacity:
 *   hearth-guest: BLK-PROGRESS mib=<MiB read so far>   every hearth.every_mib MiB (default 16)
 *   hearth-guest: BLK-STOPPED mib=<n>                  on a 'q' on COM1
 * or BLK-FAIL read sector=<s> status=<status> if a request fails.
 */
	.globl	scenario_blk_loop
scenario_blk_loop:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	call	blk_setup
	testl	%eax, %eax
	jnz	.Lbl_out
	cmpq	$0, blk_capacity(%rip)
	jne	1f
	leaq	msg_empty(%rip), %rdi
	call	blk_fail_line
	jmp	.Lbl_out
1:	leaq	key_every(%rip), %rdi
	movl	$EVERY_MIB_DEFAULT, %esi
	call	cmdline_get_num
	shlq	$20, %rax
	jnz	2f
	movl	$0x100000, %eax
2:	movq	%rax, %rbp			/* bytes between progress lines */
	movq	%rax, %r15			/* the next progress line at */
	call	blk_request_sectors
	movq	%rax, %r14
	xorl	%r12d, %r12d			/* sector */
	xorl	%r13d, %r13d			/* bytes read */
.Lbl_loop:
	call	serial_got_stop
	testl	%eax, %eax
	jnz	.Lbl_stop
	movq	blk_capacity(%rip), %rbx
	subq	%r12, %rbx
	cmpq	%r14, %rbx
	cmova	%r14, %rbx
	movl	$VIRTIO_BLK_T_IN, %edi
	movq	%r12, %rsi
	movq	pool_lo(%rip), %rdx
	movl	%ebx, %ecx
	shll	$9, %ecx
	call	blk_do
	testl	%eax, %eax
	jz	3f
	leaq	name_read(%rip), %rdi
	movq	%r12, %rsi
	movl	%eax, %edx
	call	blk_fail_io
	jmp	.Lbl_out
3:	addq	%rbx, %r12
	cmpq	blk_capacity(%rip), %r12
	jb	4f
	xorl	%r12d, %r12d
4:	shlq	$9, %rbx
	addq	%rbx, %r13
	cmpq	%r15, %r13
	jb	.Lbl_loop
	addq	%rbp, %r15
	call	line_begin
	PUTS	"BLK-PROGRESS mib="
	movq	%r13, %rdi
	shrq	$20, %rdi
	call	put_dec
	call	line_end
	jmp	.Lbl_loop
.Lbl_stop:
	call	line_begin
	PUTS	"BLK-STOPPED mib="
	movq	%r13, %rdi
	shrq	$20, %rdi
	call	put_dec
	call	line_end
.Lbl_out:
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

	.section .rodata
key_every:	.asciz	"hearth.every_mib"
msg_empty:	.asciz	"the disk is empty"
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
