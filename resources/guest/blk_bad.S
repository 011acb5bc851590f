/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: requests a virtio-blk device must refuse. blk-err
 * (well-formed requests it must fail, at the end of this file) and
 * blk-bad. One malformed request, chosen by
 * hearth.kind, on queue 0; the doorbell; then what the device did:
 *   hearth-guest: BLK-BAD kind=<kind> needs_reset=<0|1> used=<0|1> blk_status=<status byte> status=0x<Status>
 * then the device is reset and set up again and reads sector 0:
 *   hearth-guest: BLK-RECOVER status=<status>
 *
 * The well-formed request underneath every kind is a read (IN) of sector 0:
 * descriptor 0 the 16-byte header, 1 a 512-byte device-writable buffer in
 * the pool, 2 the status byte (device-writable). The kinds change it so:
 *   hdr-short  the header descriptor is 8 bytes long
 *   no-status  no status descriptor: the data descriptor ends the chain
 *   status-ro  the status descriptor is device-readable
 *   data-oob   the data buffer is at 0xf000000000, far outside RAM
 *   loop       the status descriptor has NEXT back to descriptor 0
 *   indirect   descriptor 0 is VIRTQ_DESC_F_INDIRECT (not negotiated),
 *              pointing at a table holding the three descriptors
 *   huge       the data descriptor is 0xffffffff bytes long
 */
#include "guest.h"
#include "virtio.h"
#include "blk.h"

#define BAD_WAIT_MS			2000
#define OOB_ADDR			0xf000000000

#define K_HDR_SHORT			0
#define K_NO_STATUS			1
#define K_STATUS_RO			2
#define K_DATA_OOB			3
#define K_LOOP				4
#define K_INDIRECT			5
#define K_HUGE				6

#define OP_READ				0
#define OP_WRITE			1
#define BLK_T_UNKNOWN			0xff

	.text
	.code64

/*
 * bad_chain(kind: edi): descriptors 0-2 (or the indirect table) of the
 * malformed request; its head is descriptor 0.
 */
bad_chain:
	pushq	%rbx
	pushq	%r12
	movl	%edi, %ebx
	xorl	%edi, %edi
	movl	$VIRTIO_BLK_T_IN, %esi
	xorl	%edx, %edx
	movq	pool_lo(%rip), %rcx
	movl	$SECTOR_SIZE, %r8d
	call	blk_build			/* the well-formed request */
	xorl	%edi, %edi
	xorl	%esi, %esi
	call	vq_desc
	movq	%rax, %r12			/* descriptor 0 */
	cmpl	$K_HDR_SHORT, %ebx
	jne	1f
	movl	$8, 8(%r12)
1:	cmpl	$K_NO_STATUS, %ebx
	jne	2f
	andw	$~VRING_DESC_F_NEXT, (16 + 12)(%r12)
2:	cmpl	$K_STATUS_RO, %ebx
	jne	3f
	movw	$0, (32 + 12)(%r12)
3:	cmpl	$K_DATA_OOB, %ebx
	jne	4f
	movabsq	$OOB_ADDR, %rax
	movq	%rax, (16 + 0)(%r12)
4:	cmpl	$K_LOOP, %ebx
	jne	5f
	movw	$(VRING_DESC_F_WRITE + VRING_DESC_F_NEXT), (32 + 12)(%r12)
	movw	$0, (32 + 14)(%r12)
5:	cmpl	$K_HUGE, %ebx
	jne	6f
	movl	$0xffffffff, (16 + 8)(%r12)
6:	cmpl	$K_INDIRECT, %ebx
	jne	7f
	/* Copy the three descriptors into the table; descriptor 0 points at it. */
	leaq	indirect_table(%rip), %rdi
	movq	%r12, %rsi
	movl	$(3 * VRING_DESC_SIZE), %ecx
	rep movsb
	leaq	indirect_table(%rip), %rax
	movq	%rax, 0(%r12)
	movl	$(3 * VRING_DESC_SIZE), 8(%r12)
	movw	$VRING_DESC_F_INDIRECT, 12(%r12)
	movw	$0, 14(%r12)
7:	popq	%r12
	popq	%rbx
	ret

	.globl	scenario_blk_bad
scenario_blk_bad:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	call	blk_setup
	testl	%eax, %eax
	jnz	.Lbb_out
	leaq	key_kind(%rip), %rdi
	leaq	kind_names(%rip), %rsi
	movl	$K_LOOP, %edx
	call	cmdline_choice
	movl	%eax, %ebp
	testl	%eax, %eax
	jns	1f
	leaq	msg_kind(%rip), %rdi
	call	blk_fail_line
	jmp	.Lbb_out
1:	movl	%ebp, %edi
	call	bad_chain
	movl	$BLK_QUEUE, %edi
	xorl	%esi, %esi
	call	vq_push
	movl	$BLK_QUEUE, %edi
	call	vq_notify
	movl	$BLK_QUEUE, %edi
	movl	$BAD_WAIT_MS, %esi
	call	vq_wait_used
	xorl	%r12d, %r12d			/* used */
	testl	%eax, %eax
	js	2f
	movl	$1, %r12d
2:	call	vio_status
	movl	%eax, %r13d
	call	line_begin
	PUTS	"BLK-BAD kind="
	leaq	kind_names(%rip), %rdi
	movl	%ebp, %ecx
3:	testl	%ecx, %ecx
	jz	5f
4:	cmpb	$0, (%rdi)
	leaq	1(%rdi), %rdi
	jne	4b
	decl	%ecx
	jmp	3b
5:	call	puts
	PUTS	" needs_reset="
	movl	%r13d, %edi
	shrl	$6, %edi			/* VIRTIO_S_NEEDS_RESET */
	andl	$1, %edi
	call	put_dec
	PUTS	" used="
	movl	%r12d, %edi
	call	put_dec
	PUTS	" blk_status="
	xorl	%edi, %edi
	call	blk_status_of
	movl	%eax, %edi
	call	put_dec
	PUTS	" status="
	movl	%r13d, %edi
	call	put_hex
	call	line_end
	call	blk_recover
.Lbb_out:
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

/*
 * blk_recover(): reset and set up the device again (negotiation, queue 0,
 * DRIVER_OK) and read sector 0:
 *   hearth-guest: BLK-RECOVER status=<status of the read, or the setup failure>
 */
blk_recover:
	pushq	%rbx
	movq	vio_features(%rip), %rdi
	call	vio_negotiate
	movl	%eax, %ebx
	testl	%eax, %eax
	jnz	1f
	movl	$BLK_QUEUE, %edi
	movl	$VQ_SIZE_MAX, %esi
	call	vq_setup
	testl	%eax, %eax
	jnz	2f
	call	vio_driver_ok
	movl	$VIRTIO_BLK_T_IN, %edi
	xorl	%esi, %esi
	movq	pool_lo(%rip), %rdx
	movl	$SECTOR_SIZE, %ecx
	call	blk_do
	movl	%eax, %ebx
	call	line_begin
	PUTS	"BLK-RECOVER status="
	movl	%ebx, %edi
	call	blk_put_status
	jmp	3f
1:	call	line_begin
	PUTS	"BLK-RECOVER status="
	movl	%ebx, %edi
	call	vio_put_error
	jmp	3f
2:	call	line_begin
	PUTS	"BLK-RECOVER status=queue 0 not available"
3:	call	line_end
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

	.section .rodata
msg_bad_op:	.asciz	"unknown hearth.op (read, write, flush, unknown)"
op_names:	.asciz	"read"
		.asciz	"write"
		.asciz	"flush"
		.asciz	"unknown"
		.byte	0
op_types:	.byte	VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, BLK_T_UNKNOWN
key_kind:	.asciz	"hearth.kind"
kind_names:	.asciz	"hdr-short"
		.asciz	"no-status"
		.asciz	"status-ro"
		.asciz	"data-oob"
		.asciz	"loop"
		.asciz	"indirect"
		.asciz	"huge"
		.byte	0
msg_kind:	.asciz	"unknown hearth.kind (hdr-short, no-status, status-ro, data-oob, loop, indirect, huge)"

	.bss
	.balign	16
indirect_table:	.skip	3 * VRING_DESC_SIZE
