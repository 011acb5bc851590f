/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: the block scenarios that move data one request at a
 * time (blk.S's blk_do): blk-read, blk-write, blk-err and blk-loop.
 *
 * Data buffers live in the RAM pool: requests read into or write from
 * pool_lo; blk-write reads back into pool_lo + BLK_MAX_REQ.
 */
#include "guest.h"
#include "virtio.h"
#include "blk.h"

#define FNV_OFFSET			0xcbf29ce484222325
#define PATTERN_K			0x9e3779b97f4a7c15
#define WRITE_COUNT_DEFAULT		8
#define EVERY_MIB_DEFAULT		16

#define OP_READ				0
#define OP_WRITE			1
#define OP_FLUSH			2
#define OP_UNKNOWN			3
#define BLK_T_UNKNOWN			0xff

	.text
	.code64

/*
 * blk_request_sectors() -> rax: sectors per request, hearth.bs=<bytes>
 * (default and maximum blk_max_request) rounded down to whole sectors,
 * at least one.
 */
blk_request_sectors:
	call	blk_max_request
	pushq	%rax
	leaq	key_bs(%rip), %rdi
	movl	%eax, %esi
	call	cmdline_get_num
	popq	%rcx
	cmpq	%rcx, %rax
	cmova	%rcx, %rax
	shrq	$9, %rax
	jnz	1f
	movl	$1, %eax
1:	ret

/* blk_fail_io(what: rdi, sector: rsi, status: edx): BLK-FAIL <what> sector=<s> status=<name> */
blk_fail_io:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	movq	%rdi, %rbx
	movq	%rsi, %r12
	movl	%edx, %r13d
	call	line_begin
	PUTS	"BLK-FAIL "
	movq	%rbx, %rdi
	call	puts
	PUTS	" sector="
	movq	%r12, %rdi
	call	put_dec
	PUTS	" status="
	movl	%r13d, %edi
	call	blk_put_status
	call	line_end
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/*
 * blk_pattern(buf: rdi, sector: rsi, sectors: rdx, seed: rcx)
 * The blk-write pattern: the 8-byte little-endian word at byte offset o of
 * sector s holds ((512 * s + o) * 0x9e3779b97f4a7c15 mod 2^64) XOR seed.
 */
	.globl	blk_pattern
blk_pattern:
	shlq	$9, %rsi			/* disk byte address of the first word */
	shlq	$6, %rdx			/* words */
	jz	2f
	movabsq	$PATTERN_K, %r8
1:	movq	%rsi, %rax
	imulq	%r8, %rax
	xorq	%rcx, %rax
	movq	%rax, (%rdi)
	addq	$8, %rdi
	addq	$8, %rsi
	decq	%rdx
	jnz	1b
2:	ret

/* blk_count_bad(a: rdi, b: rsi, sectors: rdx) -> rax: the sectors in which a and b differ. */
blk_count_bad:
	xorl	%eax, %eax
	testq	%rdx, %rdx
	jz	4f
1:	movl	$(SECTOR_SIZE / 8), %ecx
2:	movq	(%rdi), %r8
	cmpq	(%rsi), %r8
	jne	3f
	addq	$8, %rdi
	addq	$8, %rsi
	decl	%ecx
	jnz	2b
	jmp	5f
3:	incq	%rax				/* skip the rest of this sector */
	leaq	(%rdi, %rcx, 8), %rdi
	leaq	(%rsi, %rcx, 8), %rsi
5:	decq	%rdx
	jnz	1b
4:	ret

/*
 * blk-read: read hearth.count sectors (default: to the end of the disk)
 * from hearth.start (default 0), hearth.bs bytes per request at most.
 *   hearth-guest: BLK-READ dev=<n> start=<s> sectors=<n> fnv=<16 hex digits>
 * or on a failed request: BLK-FAIL read sector=<first sector> status=<status>
 */
	.globl	scenario_blk_read
scenario_blk_read:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	call	blk_setup
	testl	%eax, %eax
	jnz	.Lbr_out
	leaq	key_start(%rip), %rdi
	xorl	%esi, %esi
	call	cmdline_get_num
	movq	%rax, %r12			/* start */
	movq	blk_capacity(%rip), %rsi
	subq	%rax, %rsi
	jae	1f
	xorl	%esi, %esi
1:	leaq	key_count(%rip), %rdi
	call	cmdline_get_num
	movq	%rax, %r13			/* count */
	call	blk_request_sectors
	movq	%rax, %r14			/* sectors per request */
	movabsq	$FNV_OFFSET, %rbp
	xorl	%r15d, %r15d			/* sectors done */
.Lbr_loop:
	movq	%r13, %rbx
	subq	%r15, %rbx
	jbe	.Lbr_done
	cmpq	%r14, %rbx
	cmova	%r14, %rbx
	movl	$VIRTIO_BLK_T_IN, %edi
	leaq	(%r12, %r15), %rsi
	movq	pool_lo(%rip), %rdx
	movl	%ebx, %ecx
	shll	$9, %ecx
	call	blk_do
	testl	%eax, %eax
	jz	2f
	leaq	name_read(%rip), %rdi
	leaq	(%r12, %r15), %rsi
	movl	%eax, %edx
	call	blk_fail_io
	jmp	.Lbr_out
2:	movq	%rbp, %rdi
	movq	pool_lo(%rip), %rsi
	movq	%rbx, %rdx
	shlq	$9, %rdx
	call	fnv1a64
	movq	%rax, %rbp
	addq	%rbx, %r15
	jmp	.Lbr_loop
.Lbr_done:
	call	line_begin
	PUTS	"BLK-READ"
	call	blk_put_dev
	PUTS	" start="
	movq	%r12, %rdi
	call	put_dec
	PUTS	" sectors="
	movq	%r13, %rdi
	call	put_dec
	PUTS	" fnv="
	movq	%rbp, %rdi
	call	put_hex16
	call	line_end
.Lbr_out:
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

/*
 * blk_write_range(start: rdi, count: rsi, seed: rdx) -> eax: the status of
 * the first request that was not OK, else 0. Writes the pattern, one
 * request of at most blk_request_sectors at a time.
 */
blk_write_range:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movq	%rdi, %r12
	movq	%rsi, %r13
	movq	%rdx, %rbp
	call	blk_request_sectors
	movq	%rax, %r14
	xorl	%r15d, %r15d
1:	movq	%r13, %rbx
	subq	%r15, %rbx
	jbe	2f
	cmpq	%r14, %rbx
	cmova	%r14, %rbx
	movq	pool_lo(%rip), %rdi
	leaq	(%r12, %r15), %rsi
	movq	%rbx, %rdx
	movq	%rbp, %rcx
	call	blk_pattern
	movl	$VIRTIO_BLK_T_OUT, %edi
	leaq	(%r12, %r15), %rsi
	movq	pool_lo(%rip), %rdx
	movl	%ebx, %ecx
	shll	$9, %ecx
	call	blk_do
	testl	%eax, %eax
	jnz	3f
	addq	%rbx, %r15
	jmp	1b
2:	xorl	%eax, %eax
3:	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

/*
 * blk_verify_range(start: rdi, count: rsi, seed: rdx) -> rax = sectors that
 * differ from the pattern, rdx = FNV-1a 64 of what was read; rax = -1 (and
 * a BLK-FAIL line) if a read failed.
 */
blk_verify_range:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	subq	$24, %rsp
	movq	%rdi, %r12
	movq	%rsi, %r13
	movq	%rdx, 0(%rsp)			/* seed */
	movq	$0, 8(%rsp)			/* bad sectors */
	movabsq	$FNV_OFFSET, %rax
	movq	%rax, 16(%rsp)			/* hash */
	call	blk_request_sectors
	movq	%rax, %r14
	movq	pool_lo(%rip), %rbp
	addq	$BLK_MAX_REQ, %rbp		/* read-back buffer */
	xorl	%r15d, %r15d
1:	movq	%r13, %rbx
	subq	%r15, %rbx
	jbe	3f
	cmpq	%r14, %rbx
	cmova	%r14, %rbx
	movl	$VIRTIO_BLK_T_IN, %edi
	leaq	(%r12, %r15), %rsi
	movq	%rbp, %rdx
	movl	%ebx, %ecx
	shll	$9, %ecx
	call	blk_do
	testl	%eax, %eax
	jz	2f
	leaq	name_verify(%rip), %rdi
	leaq	(%r12, %r15), %rsi
	movl	%eax, %edx
	call	blk_fail_io
	movq	$-1, %rax
	jmp	4f
2:	movq	16(%rsp), %rdi
	movq	%rbp, %rsi
	movq	%rbx, %rdx
	shlq	$9, %rdx
	call	fnv1a64
	movq	%rax, 16(%rsp)
	movq	pool_lo(%rip), %rdi
	leaq	(%r12, %r15), %rsi
	movq	%rbx, %rdx
	movq	0(%rsp), %rcx
	call	blk_pattern
	movq	pool_lo(%rip), %rdi
	movq	%rbp, %rsi
	movq	%rbx, %rdx
	call	blk_count_bad
	addq	%rax, 8(%rsp)
	addq	%rbx, %r15
	jmp	1b
3:	movq	8(%rsp), %rax
	movq	16(%rsp), %rdx
4:	addq	$24, %rsp
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

/*
 * blk-write: write hearth.count (default 8) sectors from hearth.start
 * (default 0) with the pattern of hearth.seed (default 0), then a FLUSH if
 * hearth.flush=1 (the default), then read them back:
 *   hearth-guest: BLK-WRITE dev=<n> start=<s> sectors=<n> seed=0x<seed> status=<status> flush=<status|off|unoffered>
 *   hearth-guest: BLK-VERIFY dev=<n> start=<s> sectors=<n> bad=<sectors that differ> fnv=<16 hex digits>
 */
	.globl	scenario_blk_write
scenario_blk_write:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	pushq	%r14
	call	blk_setup
	testl	%eax, %eax
	jnz	.Lbw_out
	leaq	key_start(%rip), %rdi
	xorl	%esi, %esi
	call	cmdline_get_num
	movq	%rax, %r12			/* start */
	leaq	key_count(%rip), %rdi
	movl	$WRITE_COUNT_DEFAULT, %esi
	call	cmdline_get_num
	movq	%rax, %r13			/* count */
	leaq	key_seed(%rip), %rdi
	xorl	%esi, %esi
	call	cmdline_get_num
	movq	%rax, %rbp			/* seed */
	movq	%r12, %rdi
	movq	%r13, %rsi
	movq	%rbp, %rdx
	call	blk_write_range
	movl	%eax, %ebx			/* write status */
	leaq	key_flush(%rip), %rdi
	movl	$1, %esi
	call	cmdline_get_num
	movl	$-3, %r14d			/* flush: off */
	testq	%rax, %rax
	jz	1f
	movl	$-4, %r14d			/* unoffered */
	btq	$VIRTIO_BLK_F_FLUSH, vio_features(%rip)
	jnc	1f
	movl	$VIRTIO_BLK_T_FLUSH, %edi
	xorl	%esi, %esi
	xorl	%edx, %edx
	xorl	%ecx, %ecx
	call	blk_do
	movl	%eax, %r14d
1:	call	line_begin
	PUTS	"BLK-WRITE"
	call	blk_put_dev
	PUTS	" start="
	movq	%r12, %rdi
	call	put_dec
	PUTS	" sectors="
	movq	%r13, %rdi
	call	put_dec
	PUTS	" seed="
	movq	%rbp, %rdi
	call	put_hex
	PUTS	" status="
	movl	%ebx, %edi
	call	blk_put_status
	PUTS	" flush="
	cmpl	$-3, %r14d
	jne	2f
	PUTS	"off"
	jmp	4f
2:	cmpl	$-4, %r14d
	jne	3f
	PUTS	"unoffered"
	jmp	4f
3:	movl	%r14d, %edi
	call	blk_put_status
4:	call	line_end
	testl	%ebx, %ebx
	jnz	.Lbw_out
	movq	%r12, %rdi
	movq	%r13, %rsi
	movq	%rbp, %rdx
	call	blk_verify_range
	cmpq	$-1, %rax
	je	.Lbw_out
	movq	%rax, %rbx
	movq	%rdx, %r14
	call	line_begin
	PUTS	"BLK-VERIFY"
	call	blk_put_dev
	PUTS	" start="
	movq	%r12, %rdi
	call	put_dec
	PUTS	" sectors="
	movq	%r13, %rdi
	call	put_dec
	PUTS	" bad="
	movq	%rbx, %rdi
	call	put_dec
	PUTS	" fnv="
	movq	%r14, %rdi
	call	put_hex16
	call	line_end
.Lbw_out:
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

/*
 * blk-err: one request the device should refuse, chosen by
 * hearth.op=read|write|flush|unknown (default read):
 *   read: hearth.count (default 1) sectors from hearth.start (default: the capacity)
 *   write: the same from hearth.start (default 0), the blk-write pattern of seed 0
 *   flush: a FLUSH;  unknown: request type 255, no data
 * (count at most one request's worth), then
 *   hearth-guest: BLK-STATUS op=<op> status=<status byte> start=<s> sectors=<n>
 * (status timeout / needs_reset if the device did not answer).
 */
	.globl	scenario_blk_err
scenario_blk_err:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	call	blk_setup
	testl	%eax, %eax
	jnz	.Lbe_out
	leaq	key_op(%rip), %rdi
	leaq	op_names(%rip), %rsi
	movl	$OP_READ, %edx
	call	cmdline_choice
	movl	%eax, %ebp
	testl	%eax, %eax
	jns	1f
	leaq	msg_bad_op(%rip), %rdi
	call	blk_fail_line
	jmp	.Lbe_out
1:	xorl	%esi, %esi
	cmpl	$OP_READ, %ebp
	jne	2f
	movq	blk_capacity(%rip), %rsi
2:	leaq	key_start(%rip), %rdi
	call	cmdline_get_num
	movq	%rax, %r12			/* start */
	xorl	%r13d, %r13d			/* sectors */
	cmpl	$OP_WRITE, %ebp
	ja	3f
	leaq	key_count(%rip), %rdi
	movl	$1, %esi
	call	cmdline_get_num
	movq	%rax, %r13
	call	blk_max_request
	shrl	$9, %eax
	cmpq	%rax, %r13
	cmova	%rax, %r13
	movq	pool_lo(%rip), %rdi
	movq	%r12, %rsi
	movq	%r13, %rdx
	xorl	%ecx, %ecx
	call	blk_pattern
3:	leaq	op_types(%rip), %rax
	movzbl	(%rax, %rbp), %edi
	movq	%r12, %rsi
	movq	pool_lo(%rip), %rdx
	movl	%r13d, %ecx
	shll	$9, %ecx
	call	blk_do
	movl	%eax, %ebx
	call	line_begin
	PUTS	"BLK-STATUS op="
	leaq	op_names(%rip), %rdi
	movl	%ebp, %ecx
4:	testl	%ecx, %ecx			/* the op's name */
	jz	6f
5:	cmpb	$0, (%rdi)
	leaq	1(%rdi), %rdi
	jne	5b
	decl	%ecx
	jmp	4b
6:	call	puts
	PUTS	" status="
	movl	%ebx, %edi
	testl	%edi, %edi
	js	7f
	call	put_dec
	jmp	8f
7:	call	blk_put_status
8:	PUTS	" start="
	movq	%r12, %rdi
	call	put_dec
	PUTS	" sectors="
	movq	%r13, %rdi
	call	put_dec
	call	line_end
.Lbe_out:
	popq	%r13
	popq	%r12
	popq	%rbp
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
	.globl	key_start, key_count, key_seed, key_bs
key_start:	.asciz	"hearth.start"
key_count:	.asciz	"hearth.count"
key_seed:	.asciz	"hearth.seed"
key_flush:	.asciz	"hearth.flush"
key_bs:		.asciz	"hearth.bs"
key_op:		.asciz	"hearth.op"
key_every:	.asciz	"hearth.every_mib"
name_read:	.asciz	"read"
name_verify:	.asciz	"verify"
msg_bad_op:	.asciz	"unknown hearth.op (read, write, flush, unknown)"
msg_empty:	.asciz	"the disk is empty"
op_names:	.asciz	"read"
		.asciz	"write"
		.asciz	"flush"
		.asciz	"unknown"
		.byte	0
op_types:	.byte	VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, BLK_T_UNKNOWN
