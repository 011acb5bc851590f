/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: the block scenarios that move and check data one
 * request at a time (blk.S's blk_do): blk-read and blk-write.
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

	.text
	.code64

/*
 * blk_request_sectors() -> rax: sectors per request, hearth.bs=<bytes>
 * (default and maximum blk_max_request) rounded down to whole sectors,
 * at least one.
 */
	.globl	blk_request_sectors
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
	.globl	blk_fail_io
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

	.section .rodata
	.globl	key_start, key_count, key_seed, key_bs, key_op, name_read
key_start:	.asciz	"hearth.start"
key_count:	.asciz	"hearth.count"
key_seed:	.asciz	"hearth.seed"
key_flush:	.asciz	"hearth.flush"
key_bs:		.asciz	"hearth.bs"
key_op:		.asciz	"hearth.op"
name_read:	.asciz	"read"
name_verify:	.asciz	"verify"
