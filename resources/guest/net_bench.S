/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: the network scenarios that keep many frames in
 * flight: net-flood (both ways at once, sequence numbers checked) and
 * net-bench (one way, between two lines the host times).
 */
#include "guest.h"
#include "virtio.h"
#include "net.h"

#define FLOOD_COUNT_DEFAULT		1000
#define FLOOD_LEN_DEFAULT		64
#define BENCH_COUNT_DEFAULT		10000
#define BENCH_LEN_DEFAULT		1500

	.text
	.code64

/*
 * fill_tx() -> eax = frames queued: while frames remain (fl_sent <
 * fl_count) and a tx buffer is free, queue the frame with sequence number
 * fl_sent and hearth.len payload bytes (fl_len); notify if any was queued.
 * With fl_prefilled set the buffers already hold their frames.
 */
fill_tx:
	pushq	%rbx
	pushq	%r12
	xorl	%r12d, %r12d
1:	movq	fl_sent(%rip), %rax
	cmpq	fl_count(%rip), %rax
	jae	2f
	cmpl	$0, net_tx_nfree(%rip)
	je	2f
	call	net_tx_slot
	movl	%eax, %ebx
	cmpl	$0, fl_prefilled(%rip)
	jne	3f
	movl	%eax, %edi
	call	net_tx_frame
	movq	%rax, %rdi
	movl	fl_sent(%rip), %esi
	movl	fl_len(%rip), %edx
	call	net_frame_fill
3:	movl	%ebx, %edi
	movl	fl_len(%rip), %esi
	addl	$ETH_HLEN, %esi
	call	net_tx_commit
	incq	fl_sent(%rip)
	incl	%r12d
	jmp	1b
2:	testl	%r12d, %r12d
	jz	4f
	movl	$NET_TXQ, %edi
	call	vq_notify
4:	movl	%r12d, %eax
	popq	%r12
	popq	%rbx
	ret

/*
 * take_rx(id: edi, len: esi): check the frame in rx buffer id
 * (net_frame_check, or with fl_nocheck only its EtherType: fl_rx,
 * fl_rx_bytes, fl_bad, fl_in_order, fl_ignored) and post the buffer again
 * (no notify).
 */
take_rx:
	pushq	%rbx
	pushq	%r12
	movl	%edi, %ebx
	movl	%esi, %r12d
	call	net_rx_frame
	movq	%rax, %rdi
	movl	%r12d, %esi
	cmpl	$0, fl_nocheck(%rip)
	je	5f
	movl	$-1, %eax			/* net-bench: the type only */
	cmpl	$ETH_HLEN, %esi
	jb	6f
	cmpw	$0xb588, ETH_PROTO(%rdi)
	jne	6f
	xorl	%eax, %eax
	movq	fl_rx(%rip), %rdx		/* counts as in order */
	incl	%eax
	jmp	6f
5:	call	net_frame_check
6:	testl	%eax, %eax
	jns	1f
	incq	fl_ignored(%rip)
	jmp	4f
1:	jnz	2f
	incq	fl_bad(%rip)
	movl	$0, fl_in_order(%rip)
	jmp	3f
2:	cmpq	fl_rx(%rip), %rdx		/* the k-th frame must carry k */
	je	3f
	movl	$0, fl_in_order(%rip)
3:	incq	fl_rx(%rip)
	addq	%r12, fl_rx_bytes(%rip)
4:	movl	%ebx, %edi
	call	net_rx_requeue
	popq	%r12
	popq	%rbx
	ret

/*
 * drain_rx(taken: edi) -> eax = frames taken, the taken already so
 * included; or NET_BAD_ID. take_rx every frame the device has filled
 * until fl_rx reaches fl_count, then one notify if any was taken.
 */
drain_rx:
	pushq	%rbx
	movl	%edi, %ebx
1:	movq	fl_rx(%rip), %rax		/* no more than fl_count */
	cmpq	fl_count(%rip), %rax
	jae	2f
	call	net_rx_poll
	cmpl	$VQ_TIMEOUT, %eax
	je	2f
	testl	%eax, %eax
	js	4f
	movl	%eax, %edi
	movl	%edx, %esi
	call	take_rx
	incl	%ebx
	jmp	1b
2:	testl	%ebx, %ebx
	jz	3f
	movl	$NET_RXQ, %edi
	call	vq_notify
3:	movl	%ebx, %eax
4:	popq	%rbx
	ret

/* flood_params(count default: esi, len default: edx) -> eax = 0, or -1 after a NET-FAIL line. */
flood_params:
	pushq	%rdx
	leaq	key_count(%rip), %rdi
	call	cmdline_get_num
	movq	%rax, fl_count(%rip)
	popq	%rsi
	call	payload_len
	movl	%eax, fl_len(%rip)
	testl	%eax, %eax
	js	1f
	xorl	%eax, %eax
	movq	%rax, fl_sent(%rip)
	movq	%rax, fl_rx(%rip)
	movq	%rax, fl_bad(%rip)
	movq	%rax, fl_ignored(%rip)
	movq	%rax, fl_rx_bytes(%rip)
	movl	%eax, fl_prefilled(%rip)
	movl	%eax, fl_nocheck(%rip)
	movl	$1, fl_in_order(%rip)
1:	ret

/*
 * net-flood: send hearth.count (default 1000) frames with sequence numbers
 * 0, 1, ... (net_frame_fill, hearth.len payload bytes, default 64, at least
 * 4) while receiving as many 0x88b5 frames, until both are done or nothing
 * moves for NET_WAIT_MS:
 *   hearth-guest: NET-FLOOD tx=<frames the device took> rx=<0x88b5 frames received> in_order=<0|1> bad=<n> ignored=<n>
 * in_order = 1: the k-th frame received carried sequence number k and the
 * pattern; bad counts 0x88b5 frames whose payload breaks the pattern;
 * ignored counts frames of other types.
 */
	.globl	scenario_net_flood
scenario_net_flood:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	call	net_setup
	testl	%eax, %eax
	jnz	.Lfl_out
	movl	$FLOOD_COUNT_DEFAULT, %esi
	movl	$FLOOD_LEN_DEFAULT, %edx
	call	flood_params
	testl	%eax, %eax
	js	.Lfl_out
	cmpl	$4, fl_len(%rip)
	jae	1f
	leaq	msg_short(%rip), %rdi
	call	net_fail_line
	jmp	.Lfl_out
1:	xorl	%r12d, %r12d			/* tx buffers given back */
	movl	$NET_WAIT_MS, %edi
	call	tsc_deadline
	movq	%rax, %r13
.Lfl_loop:
	call	net_tx_reclaim
	movl	%eax, %ebx			/* progress */
	addq	%rax, %r12
	call	fill_tx
	orl	%eax, %ebx
	xorl	%edi, %edi
	call	drain_rx
	testl	%eax, %eax
	js	.Lfl_bad_id
	orl	%eax, %ebx
	cmpq	fl_count(%rip), %r12
	jb	2f
	movq	fl_rx(%rip), %rax
	cmpq	fl_count(%rip), %rax
	jae	.Lfl_done
2:	testl	%ebx, %ebx
	jz	3f
	movl	$NET_WAIT_MS, %edi
	call	tsc_deadline
	movq	%rax, %r13
	jmp	.Lfl_loop
3:	pause
	movq	%r13, %rdi
	call	tsc_passed
	testl	%eax, %eax
	jz	.Lfl_loop
.Lfl_done:
	call	line_begin
	PUTS	"NET-FLOOD tx="
	movq	%r12, %rdi
	call	put_dec
	PUTS	" rx="
	movq	fl_rx(%rip), %rdi
	call	put_dec
	PUTS	" in_order="
	movl	fl_in_order(%rip), %edi
	call	put_dec
	PUTS	" bad="
	movq	fl_bad(%rip), %rdi
	call	put_dec
	PUTS	" ignored="
	movq	fl_ignored(%rip), %rdi
	call	put_dec
	call	line_end
	jmp	.Lfl_out
.Lfl_bad_id:
	movl	%eax, %edi
	call	bench_rx_fail
.Lfl_out:
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/* bench_rx_fail(result: edi): NET-FAIL rx <timeout|needs_reset|bad_id> after frames=<fl_rx> */
bench_rx_fail:
	pushq	%rdi
	call	line_begin
	PUTS	"NET-FAIL rx "
	popq	%rdi
	call	net_put_wait_error
	PUTS	" after frames="
	movq	fl_rx(%rip), %rdi
	call	put_dec
	jmp	line_end

/* bench_line(what: rdi): NET-BENCH-<what> frames=<n> bytes=<n>, from rsi, rdx. */
bench_line:
	pushq	%rdi
	pushq	%rsi
	pushq	%rdx
	call	line_begin
	PUTS	"NET-BENCH-"
	movq	16(%rsp), %rdi
	call	puts
	PUTS	" frames="
	movq	8(%rsp), %rdi
	call	put_dec
	PUTS	" bytes="
	movq	(%rsp), %rdi
	call	put_dec
	call	line_end
	addq	$24, %rsp
	ret

/*
 * net-bench: hearth.dir=tx|rx (default tx), hearth.count frames (default
 * 10000) of hearth.len payload bytes (default 1500; tx only):
 *   hearth-guest: NET-BENCH-START frames=<count> bytes=<count * frame bytes, tx; 0, rx>
 *   hearth-guest: NET-BENCH-END frames=<n> bytes=<frame bytes moved>
 * tx: every buffer holds its frame before START; END once the device has
 * given back the last one. rx: START when waiting for the first frame; END
 * after count 0x88b5 frames (others are ignored; payloads are not checked).
 */
	.globl	scenario_net_bench
scenario_net_bench:
	pushq	%rbx
	call	net_setup
	testl	%eax, %eax
	jnz	.Lnb_out
	leaq	key_dir(%rip), %rdi
	leaq	dir_names(%rip), %rsi
	xorl	%edx, %edx
	call	cmdline_choice
	movl	%eax, %ebx
	testl	%eax, %eax
	jns	1f
	leaq	msg_dir(%rip), %rdi
	call	net_fail_line
	jmp	.Lnb_out
1:	movl	$BENCH_COUNT_DEFAULT, %esi
	movl	$BENCH_LEN_DEFAULT, %edx
	call	flood_params
	testl	%eax, %eax
	js	.Lnb_out
	testl	%ebx, %ebx
	jnz	2f
	call	bench_tx
	jmp	.Lnb_out
2:	call	bench_rx
.Lnb_out:
	popq	%rbx
	ret

/* bench_tx(): the tx half of net-bench. */
bench_tx:
	pushq	%rbx
	xorl	%ebx, %ebx			/* every buffer gets its frame */
1:	movl	$NET_TXQ, %edi
	call	vq_size
	cmpl	%eax, %ebx
	jae	2f
	movl	%ebx, %edi
	call	net_tx_frame
	movq	%rax, %rdi
	movl	%ebx, %esi
	movl	fl_len(%rip), %edx
	call	net_frame_fill
	incl	%ebx
	jmp	1b
2:	movl	$1, fl_prefilled(%rip)
	leaq	name_start(%rip), %rdi
	movq	fl_count(%rip), %rsi
	movl	fl_len(%rip), %edx
	addl	$ETH_HLEN, %edx
	imulq	%rsi, %rdx
	call	bench_line
3:	call	fill_tx
	movq	fl_sent(%rip), %rax
	cmpq	fl_count(%rip), %rax
	jae	4f
	call	net_tx_wait_one			/* every buffer busy */
	testl	%eax, %eax
	js	5f
	jmp	3b
4:	call	net_tx_drain
	testl	%eax, %eax
	js	5f
	leaq	name_end(%rip), %rdi
	movq	fl_count(%rip), %rsi
	movl	fl_len(%rip), %edx
	addl	$ETH_HLEN, %edx
	imulq	%rsi, %rdx
	call	bench_line
	popq	%rbx
	ret
5:	movl	%eax, %ebx
	call	line_begin
	PUTS	"NET-FAIL tx "
	movl	%ebx, %edi
	call	net_put_wait_error
	PUTS	" after frames="
	movq	fl_sent(%rip), %rdi
	call	put_dec
	call	line_end
	popq	%rbx
	ret

/* bench_rx(): the rx half of net-bench. */
bench_rx:
	movl	$1, fl_nocheck(%rip)
	leaq	name_start(%rip), %rdi
	movq	fl_count(%rip), %rsi
	xorl	%edx, %edx
	call	bench_line
1:	movq	fl_rx(%rip), %rax
	cmpq	fl_count(%rip), %rax
	jae	2f
	movl	$NET_WAIT_MS, %edi		/* wait for the next frame ... */
	call	net_rx_wait
	testl	%eax, %eax
	js	3f
	movl	%eax, %edi
	movl	%edx, %esi
	call	take_rx
	movl	$1, %edi			/* ... and take it with the rest */
	call	drain_rx
	testl	%eax, %eax
	js	3f
	jmp	1b
2:	leaq	name_end(%rip), %rdi
	movq	fl_rx(%rip), %rsi
	movq	fl_rx_bytes(%rip), %rdx
	jmp	bench_line
3:	movl	%eax, %edi
	jmp	bench_rx_fail

	.section .rodata
key_count:	.asciz	"hearth.count"
key_dir:	.asciz	"hearth.dir"
dir_names:	.asciz	"tx"
		.asciz	"rx"
		.byte	0
name_start:	.asciz	"START"
name_end:	.asciz	"END"
msg_dir:	.asciz	"hearth.dir must be tx or rx"
msg_short:	.asciz	"hearth.len must be at least 4 (the sequence number)"

	.data
	.balign	8
fl_count:	.quad	0
fl_sent:	.quad	0		/* frames queued for sending */
fl_rx:		.quad	0		/* 0x88b5 frames received */
fl_rx_bytes:	.quad	0
fl_bad:		.quad	0
fl_ignored:	.quad	0
fl_len:		.long	0		/* payload bytes per frame */
fl_in_order:	.long	1
fl_prefilled:	.long	0
fl_nocheck:	.long	0		/* net-bench rx: EtherType only */
