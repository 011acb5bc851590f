/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: a polling virtio balloon driver (virtio 1.2, 5.5) on
 * the shared virtio-mmio library (virtio.S, virtq.S): set-up, inflating
 * and deflating, statistics and free page reporting. The scenarios built
 * on it (balloon, mem-grow, mem-idle, bad-virtio) are in balloon_run.S.
 *
 * Memory: the pool (util.S) is the largest RAM region of the memory map,
 * clipped to [max(2 MiB, end of .bss), 4 GiB). The balloon always holds
 * the top balloon_pages pages of the pool; the guest's own "allocation"
 * (mem-grow, mem-idle) is the bottom used_bytes of the pool. The two never
 * overlap.
 *
 * Each queue has at most one buffer in flight, always descriptor 0.
 */
#include "guest.h"
#include "virtio.h"
#include "balloon.h"

/* Balloon features (5.5.3) and the ones this driver accepts. */
#define BALLOON_WANTED			((1 << VIRTIO_F_VERSION_1) + VIRTIO_BALLOON_F_STATS_VQ + VIRTIO_BALLOON_F_DEFLATE_ON_OOM + VIRTIO_BALLOON_F_PAGE_REPORTING)

#define VQ_BALLOON_SIZE			64		/* largest queue size used */
#define REPORT_CHUNK			0x400000	/* 4 MiB per reported buffer */
#define VQ_WAIT_MS			5000		/* for a used buffer */

/* Stats (5.5.6.3): 10-byte entries {u16 tag; u64 val}. */
#define VIRTIO_BALLOON_S_MEMFREE	4
#define VIRTIO_BALLOON_S_MEMTOT		5
#define VIRTIO_BALLOON_S_AVAIL		6
#define STATS_ENTRIES			3
#define STATS_LEN			(STATS_ENTRIES * 10)

	.text
	.code64

/* vb_fail_line(msg: rdi): hearth-guest: BALLOON FAIL <msg> */
	.globl	vb_fail_line
vb_fail_line:
	pushq	%rdi
	call	line_begin
	PUTS	"BALLOON FAIL "
	popq	%rdi
	call	puts
	jmp	line_end

/* vb_needs_reset_line(): hearth-guest: BALLOON FAIL device needs reset status=0x<status> */
	.globl	vb_needs_reset_line
vb_needs_reset_line:
	call	vio_status
	pushq	%rax
	call	line_begin
	PUTS	"BALLOON FAIL device needs reset status="
	popq	%rdi
	call	put_hex
	jmp	line_end

/*
 * vb_wait(q: edi, timeout_msg: rsi) -> eax = 0 once the device has used the
 * buffer in flight on q; else 1 after a FAIL line: timeout_msg, or the
 * needs-reset line.
 */
vb_wait:
	pushq	%rsi
	movl	$VQ_WAIT_MS, %esi
	call	vq_wait_used
	popq	%rdi
	testl	%eax, %eax
	jns	2f
	cmpl	$VQ_NEEDS_RESET, %eax
	je	1f
	call	vb_fail_line
	movl	$1, %eax
	ret
1:	call	vb_needs_reset_line
	movl	$1, %eax
	ret
2:	xorl	%eax, %eax
	ret

/*
 * vb_setup() -> eax = 0, or 1 after printing a BALLOON FAIL line.
 * Find the device, negotiate features, set up the queues, set DRIVER_OK,
 * print the device line and post the first stats buffer.
 */
	.globl	vb_setup
vb_setup:
	pushq	%rbx
	pushq	%r12
	movl	$VIRTIO_ID_BALLOON, %edi
	xorl	%esi, %esi
	call	vio_find
	testq	%rax, %rax
	jnz	1f
	leaq	msg_no_device(%rip), %rdi
	call	vb_fail_line
	jmp	.Lvb_failed
1:	movabsq	$BALLOON_WANTED, %rdi
	call	vio_negotiate
	testl	%eax, %eax
	jz	2f
	movl	%eax, %ebx
	call	line_begin
	PUTS	"BALLOON FAIL "
	movl	%ebx, %edi
	call	vio_put_error
	call	line_end
	jmp	.Lvb_failed
	/*
	 * Queues: inflate, deflate, stats if negotiated, then reporting if
	 * negotiated at the next index (free_page_vq is never negotiated).
	 */
2:	movq	vio_features(%rip), %rbx
	movl	$2, %r12d
	testl	$VIRTIO_BALLOON_F_STATS_VQ, %ebx
	jz	3f
	incl	%r12d
3:	movl	%r12d, vq_report(%rip)
	testl	$VIRTIO_BALLOON_F_PAGE_REPORTING, %ebx
	jz	4f
	incl	%r12d
4:	xorl	%ebx, %ebx
5:	movl	%ebx, %edi
	movl	$VQ_BALLOON_SIZE, %esi
	call	vq_setup
	testl	%eax, %eax
	jnz	.Lvb_queue_fail
	incl	%ebx
	cmpl	%r12d, %ebx
	jb	5b
	call	vio_driver_ok

	call	line_begin
	PUTS	"balloon device at "
	movq	vio_base(%rip), %rdi
	call	put_hex
	PUTS	" irq="
	movq	vio_irq(%rip), %rdi
	call	put_dec
	PUTS	" features="
	movq	vio_features(%rip), %rdi
	call	put_hex
	call	line_end

	testl	$VIRTIO_BALLOON_F_STATS_VQ, vio_features(%rip)
	jz	6f
	call	stats_post
6:	xorl	%eax, %eax
	jmp	.Lvb_out
.Lvb_queue_fail:
	movl	$VIRTIO_S_FAILED, %edi
	call	vio_add_status
	call	line_begin
	PUTS	"BALLOON FAIL queue "
	movl	%ebx, %edi
	call	put_dec
	PUTS	" not available"
	call	line_end
.Lvb_failed:
	movl	$1, %eax
.Lvb_out:
	popq	%r12
	popq	%rbx
	ret

/*
 * balloon_move(deflate: edi, n: rsi) -> eax = 0, or 1 after a FAIL line.
 * Inflate (edi = 0) the n pages just below the balloon, or deflate
 * (edi = 1) its n lowest pages: their PFNs go in one buffer on the inflate
 * or deflate queue; once the device has used it, update balloon_pages and
 * the config's actual.
 */
	.globl	balloon_move
balloon_move:
	pushq	%rbx
	pushq	%r12
	movl	%edi, %ebx
	movq	%rsi, %r12
	movq	pool_hi(%rip), %rdx
	shrq	$12, %rdx
	subq	balloon_pages(%rip), %rdx	/* lowest PFN in the balloon */
	testl	%ebx, %ebx
	jnz	1f
	subq	%r12, %rdx			/* inflate: the n below it */
1:	leaq	pfn_buf(%rip), %rdi
	xorl	%ecx, %ecx
2:	cmpq	%r12, %rcx
	jae	3f
	movl	%edx, (%rdi, %rcx, 4)
	incq	%rdx
	incq	%rcx
	jmp	2b
3:	movl	%ebx, %edi			/* VQ_INFLATE 0, VQ_DEFLATE 1 */
	leaq	pfn_buf(%rip), %rsi
	leal	(, %r12, 4), %edx
	xorl	%ecx, %ecx
	call	vq_post
	movl	%ebx, %edi
	leaq	msg_inflate_timeout(%rip), %rsi
	testl	%ebx, %ebx
	jz	4f
	leaq	msg_deflate_timeout(%rip), %rsi
4:	call	vb_wait
	testl	%eax, %eax
	jnz	7f
	testl	%ebx, %ebx
	jnz	5f
	addq	%r12, balloon_pages(%rip)
	jmp	6f
5:	subq	%r12, balloon_pages(%rip)
6:	movl	$BALLOON_CFG_ACTUAL, %edi
	movl	balloon_pages(%rip), %esi
	call	vio_wr
	xorl	%eax, %eax
7:	popq	%r12
	popq	%rbx
	ret

/* print_target_line(): hearth-guest: balloon target=<num_pages> actual=<pages> */
	.globl	print_target_line
print_target_line:
	movl	$BALLOON_CFG_NUM_PAGES, %edi
	call	vio_rd
	pushq	%rax
	call	line_begin
	PUTS	"balloon target="
	popq	%rdi
	call	put_dec
	PUTS	" actual="
	movq	balloon_pages(%rip), %rdi
	call	put_dec
	jmp	line_end

/*
 * balloon_adjust() -> eax = 0, or 1 after a FAIL line.
 * Move the balloon towards the device's num_pages in chunks of at most
 * PFNS_PER_BUFFER pages; inflate only into pages the guest does not use.
 * Print the target line if the balloon changed.
 */
	.globl	balloon_adjust
balloon_adjust:
	pushq	%rbx
	pushq	%r12
	movl	$BALLOON_CFG_NUM_PAGES, %edi
	call	vio_rd
	movl	%eax, %ebx			/* target */
	movq	balloon_pages(%rip), %r12	/* before */
.Lba_loop:
	movq	balloon_pages(%rip), %rax
	cmpq	%rbx, %rax
	je	.Lba_done
	ja	.Lba_deflate
	movq	%rbx, %rsi
	subq	%rax, %rsi			/* wanted */
	call	pool_bytes
	subq	used_bytes(%rip), %rax
	shrq	$12, %rax
	subq	balloon_pages(%rip), %rax	/* free pages */
	jbe	.Lba_done
	cmpq	%rax, %rsi
	cmova	%rax, %rsi
	cmpq	$PFNS_PER_BUFFER, %rsi
	jbe	1f
	movl	$PFNS_PER_BUFFER, %esi
1:	xorl	%edi, %edi
	call	balloon_move
	testl	%eax, %eax
	jnz	.Lba_out
	jmp	.Lba_loop
.Lba_deflate:
	movq	%rax, %rsi
	subq	%rbx, %rsi
	cmpq	$PFNS_PER_BUFFER, %rsi
	jbe	2f
	movl	$PFNS_PER_BUFFER, %esi
2:	movl	$1, %edi
	call	balloon_move
	testl	%eax, %eax
	jnz	.Lba_out
	jmp	.Lba_loop
.Lba_done:
	cmpq	balloon_pages(%rip), %r12
	je	3f
	call	line_begin
	PUTS	"balloon target="
	movq	%rbx, %rdi
	call	put_dec
	PUTS	" actual="
	movq	balloon_pages(%rip), %rdi
	call	put_dec
	call	line_end
3:	xorl	%eax, %eax
.Lba_out:
	popq	%r12
	popq	%rbx
	ret

/* ---------------------------------------------------------------- */
/* Stats.                                                             */

/* stats_post(): fill the stats buffer and make it available on the stats queue. */
stats_post:
	movq	ram_total_bytes(%rip), %rax
	movq	%rax, %rdx
	subq	used_bytes(%rip), %rdx
	movq	balloon_pages(%rip), %rcx
	shlq	$12, %rcx
	subq	%rcx, %rdx
	jns	1f
	xorl	%edx, %edx
1:	leaq	stats_buf(%rip), %rdi
	movw	$VIRTIO_BALLOON_S_MEMFREE, 0(%rdi)
	movq	%rdx, 2(%rdi)
	movw	$VIRTIO_BALLOON_S_MEMTOT, 10(%rdi)
	movq	%rax, 12(%rdi)
	movw	$VIRTIO_BALLOON_S_AVAIL, 20(%rdi)
	movq	%rdx, 22(%rdi)
	movl	$VQ_STATS, %edi
	leaq	stats_buf(%rip), %rsi
	movl	$STATS_LEN, %edx
	xorl	%ecx, %ecx
	jmp	vq_post

/* stats_service(): if the device has used the stats buffer, refill and re-post it. */
	.globl	stats_service
stats_service:
	testl	$VIRTIO_BALLOON_F_STATS_VQ, vio_features(%rip)
	jz	1f
	movl	$VQ_STATS, %edi
	call	vq_pop_used
	cmpl	$VQ_TIMEOUT, %eax
	jne	stats_post
1:	ret

/*
 * balloon_report() -> eax = 0, or 1 after a FAIL line.
 * With PAGE_REPORTING: report the free part of the pool (between the used
 * range and the balloon) on the reporting queue, one device-writable
 * descriptor of at most REPORT_CHUNK bytes per buffer, as Linux's free
 * page reporting does; then hearth-guest: balloon reported pages=<n>.
 */
	.globl	balloon_report
balloon_report:
	testl	$VIRTIO_BALLOON_F_PAGE_REPORTING, vio_features(%rip)
	jz	3f
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	movq	pool_lo(%rip), %rbx
	addq	used_bytes(%rip), %rbx		/* from */
	movq	balloon_pages(%rip), %r12
	shlq	$12, %r12
	negq	%r12
	addq	pool_hi(%rip), %r12		/* to */
	movq	%rbx, %r13			/* start, for the count */
1:	cmpq	%r12, %rbx
	jae	2f
	movq	%r12, %rdx
	subq	%rbx, %rdx
	cmpq	$REPORT_CHUNK, %rdx
	jbe	4f
	movl	$REPORT_CHUNK, %edx
4:	movl	vq_report(%rip), %edi
	movq	%rbx, %rsi
	addq	%rdx, %rbx
	movl	$VRING_DESC_F_WRITE, %ecx
	call	vq_post
	movl	vq_report(%rip), %edi
	leaq	msg_report_timeout(%rip), %rsi
	call	vb_wait
	testl	%eax, %eax
	jnz	5f
	jmp	1b
2:	call	line_begin
	PUTS	"balloon reported pages="
	movq	%rbx, %rdi
	subq	%r13, %rdi
	jae	6f
	xorl	%edi, %edi
6:	shrq	$12, %rdi
	call	put_dec
	call	line_end
	xorl	%eax, %eax
	jmp	7f
5:	movl	$1, %eax
7:	popq	%r13
	popq	%r12
	popq	%rbx
	ret
3:	xorl	%eax, %eax
	ret

	.section .rodata
msg_no_device:		.asciz	"no virtio-mmio balloon device"
msg_inflate_timeout:	.asciz	"inflate timeout"
msg_deflate_timeout:	.asciz	"deflate timeout"
msg_report_timeout:	.asciz	"report timeout"

	.data
	.balign	8
	.globl	balloon_pages, used_bytes
balloon_pages:	.quad	0		/* the top balloon_pages pages of the pool */
used_bytes:	.quad	0		/* the bottom used_bytes of the pool */
vq_report:	.long	0		/* index of the reporting queue */

	.bss
	.balign	16
	.globl	pfn_buf
pfn_buf:	.skip	PFNS_PER_BUFFER * 4
stats_buf:	.skip	STATS_LEN + 2
