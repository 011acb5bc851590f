/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: a polling virtio-vsock driver (virtio 1.2, 5.10) on
 * the shared virtio-mmio library: the three queues, packets in and out.
 * The connection logic and the scenarios are in vsock_conn.S.
 *
 * Features: VERSION_1 and VIRTIO_VSOCK_F_STREAM where offered. Queues: 0
 * rx, 1 tx, 2 event. Every packet is two descriptors: the 44-byte header,
 * then up to VS_PAYLOAD bytes of payload (a packet without payload, sent,
 * is the header alone). Buffer b of rx or tx is descriptors 2b and 2b + 1:
 * its header in .bss, its payload in the RAM pool (rx payloads from
 * pool_lo, tx payloads after them). All rx buffers and VS_EVENTS event
 * buffers are posted at set-up and re-posted after use; free tx buffers
 * sit on a stack.
 */
#include "guest.h"
#include "virtio.h"
#include "vsock.h"

#define VSOCK_WANTED	((1 << VIRTIO_F_VERSION_1) + (1 << VIRTIO_VSOCK_F_STREAM))
#define VS_BAD_ID	-3

	.text
	.code64

/* vs_fail_line(msg: rdi): hearth-guest: VSOCK-FAIL <msg> */
	.globl	vs_fail_line
vs_fail_line:
	pushq	%rdi
	call	line_begin
	PUTS	"VSOCK-FAIL "
	popq	%rdi
	call	puts
	jmp	line_end

/*
 * vs_setup() -> eax = 0, or 1 after a VSOCK-FAIL line.
 * The pool; the hearth.dev-th (default 0) virtio-vsock device;
 * negotiation; the three queues; DRIVER_OK; guest_cid; every rx and event
 * buffer posted; then
 *   hearth-guest: VSOCK-DEV dev=<n> base=0x<base> irq=<n> features=0x<accepted> guest_cid=<cid> rx_buffers=<n> tx_buffers=<n>
 */
	.globl	vs_setup
vs_setup:
	pushq	%rbx
	call	pool_init
	leaq	key_dev(%rip), %rdi
	xorl	%esi, %esi
	call	cmdline_get_num
	movq	%rax, vs_dev(%rip)
	movl	$VIRTIO_ID_VSOCK, %edi
	movl	%eax, %esi
	call	vio_find
	testq	%rax, %rax
	jnz	1f
	call	line_begin
	PUTS	"VSOCK-FAIL no virtio-vsock device dev="
	movq	vs_dev(%rip), %rdi
	call	put_dec
	call	line_end
	jmp	.Lvs_failed
1:	movabsq	$VSOCK_WANTED, %rdi
	call	vio_negotiate
	testl	%eax, %eax
	jz	2f
	movl	%eax, %ebx
	call	line_begin
	PUTS	"VSOCK-FAIL "
	movl	%ebx, %edi
	call	vio_put_error
	call	line_end
	jmp	.Lvs_failed
2:	xorl	%ebx, %ebx
3:	movl	%ebx, %edi
	movl	$VQ_SIZE_MAX, %esi
	call	vq_setup
	testl	%eax, %eax
	jnz	4f
	incl	%ebx
	cmpl	$3, %ebx
	jb	3b
	call	vs_geometry
	testl	%eax, %eax
	jz	5f
4:	movl	$VIRTIO_S_FAILED, %edi
	call	vio_add_status
	leaq	msg_queues(%rip), %rdi
	call	vs_fail_line
	jmp	.Lvs_failed
5:	call	vio_driver_ok
	movl	$VSOCK_CFG_GUEST_CID, %edi
	call	vio_cfg_rd64
	movq	%rax, vs_cid(%rip)
	call	vs_rx_fill
	call	vs_event_fill
	call	vs_tx_init
	call	line_begin
	PUTS	"VSOCK-DEV dev="
	movq	vs_dev(%rip), %rdi
	call	put_dec
	PUTS	" base="
	movq	vio_base(%rip), %rdi
	call	put_hex
	PUTS	" irq="
	movq	vio_irq(%rip), %rdi
	call	put_dec
	PUTS	" features="
	movq	vio_features(%rip), %rdi
	call	put_hex
	PUTS	" guest_cid="
	movq	vs_cid(%rip), %rdi
	call	put_dec
	PUTS	" rx_buffers="
	movl	vs_nrx(%rip), %edi
	call	put_dec
	PUTS	" tx_buffers="
	movl	vs_ntx(%rip), %edi
	call	put_dec
	call	line_end
	xorl	%eax, %eax
	jmp	.Lvs_out
.Lvs_failed:
	movl	$1, %eax
.Lvs_out:
	popq	%rbx
	ret

/*
 * vs_geometry() -> eax = 0, or 1 if a queue is too small or the buffers do
 * not fit the pool. vs_nrx, vs_ntx = half the rx, tx queue sizes; vs_nev =
 * min(event queue size, VS_EVENTS); the payload areas and vs_ring (VS_BUF
 * bytes, for the connection) in the pool.
 */
vs_geometry:
	movl	$VS_RXQ, %edi
	call	vq_size
	shrl	$1, %eax
	movl	%eax, vs_nrx(%rip)
	jz	1f
	movl	$VS_TXQ, %edi
	call	vq_size
	shrl	$1, %eax
	movl	%eax, vs_ntx(%rip)
	jz	1f
	movl	$VS_EVQ, %edi
	call	vq_size
	movl	$VS_EVENTS, %ecx
	cmpl	%ecx, %eax
	cmova	%ecx, %eax
	movl	%eax, vs_nev(%rip)
	movq	pool_lo(%rip), %rax
	movq	%rax, vs_rx_area(%rip)
	movl	vs_nrx(%rip), %ecx
	shlq	$12, %rcx			/* VS_PAYLOAD each */
	addq	%rcx, %rax
	movq	%rax, vs_tx_area(%rip)
	movl	vs_ntx(%rip), %ecx
	shlq	$12, %rcx
	addq	%rcx, %rax
	movq	%rax, vs_ring(%rip)
	addq	$VS_BUF, %rax
	cmpq	pool_hi(%rip), %rax
	ja	1f
	xorl	%eax, %eax
	ret
1:	movl	$1, %eax
	ret

/* ---------------------------------------------------------------- */
/* Receiving.                                                         */

/* vs_rx_hdr(b: edi) -> rax: the header of rx buffer b. */
	.globl	vs_rx_hdr
vs_rx_hdr:
	movl	%edi, %eax
	shlq	$6, %rax			/* VS_HDR_STRIDE */
	leaq	vs_rx_hdrs(%rip), %rcx
	addq	%rcx, %rax
	ret

/* vs_rx_data(b: edi) -> rax: the payload of rx buffer b. */
	.globl	vs_rx_data
vs_rx_data:
	movl	%edi, %eax
	shlq	$12, %rax
	addq	vs_rx_area(%rip), %rax
	ret

/* vs_rx_requeue(b: edi): post rx buffer b again (no notify). */
	.globl	vs_rx_requeue
vs_rx_requeue:
	pushq	%rbx
	movl	%edi, %ebx
	call	vs_rx_hdr
	movq	%rax, %rdx
	movl	$VS_RXQ, %edi
	leal	(%rbx, %rbx), %esi
	movl	$VS_HDR_SIZE, %ecx
	movl	$(VRING_DESC_F_WRITE + VRING_DESC_F_NEXT), %r8d
	leal	1(%rsi), %r9d
	call	vq_set_desc
	movl	%ebx, %edi
	call	vs_rx_data
	movq	%rax, %rdx
	movl	$VS_RXQ, %edi
	leal	1(%rbx, %rbx), %esi
	movl	$VS_PAYLOAD, %ecx
	movl	$VRING_DESC_F_WRITE, %r8d
	xorl	%r9d, %r9d
	call	vq_set_desc
	movl	$VS_RXQ, %edi
	leal	(%rbx, %rbx), %esi
	popq	%rbx
	jmp	vq_push

/* vs_rx_fill(): post every rx buffer and notify. */
vs_rx_fill:
	pushq	%rbx
	xorl	%ebx, %ebx
1:	cmpl	vs_nrx(%rip), %ebx
	jae	2f
	movl	%ebx, %edi
	call	vs_rx_requeue
	incl	%ebx
	jmp	1b
2:	movl	$VS_RXQ, %edi
	call	vq_notify
	popq	%rbx
	ret

/*
 * vs_rx_check(id: eax, len: edx) -> eax = rx buffer b, edx = its payload
 * length, or VS_BAD_PACKET if the packet is shorter than its header says
 * or its len exceeds VS_PAYLOAD; eax = VS_BAD_ID if id is no rx buffer's
 * head; negative eax passes through.
 */
vs_rx_check:
	testl	%eax, %eax
	js	3f
	testl	$1, %eax
	jnz	2f
	shrl	$1, %eax
	cmpl	vs_nrx(%rip), %eax
	jae	2f
	pushq	%rax
	pushq	%rdx
	movl	%eax, %edi
	call	vs_rx_hdr
	movl	VS_LEN(%rax), %ecx
	popq	%rdx
	popq	%rax
	subl	$VS_HDR_SIZE, %edx
	jb	1f
	cmpl	%edx, %ecx
	ja	1f
	cmpl	$VS_PAYLOAD, %ecx
	ja	1f
	movl	%ecx, %edx
	ret
1:	movl	$VS_BAD_PACKET, %edx
	ret
2:	movl	$VS_BAD_ID, %eax
3:	ret

/* vs_rx_poll() -> as vs_rx_check, or VQ_TIMEOUT if nothing arrived. */
	.globl	vs_rx_poll
vs_rx_poll:
	movl	$VS_RXQ, %edi
	call	vq_pop_used
	jmp	vs_rx_check

/* ---------------------------------------------------------------- */
/* Events.                                                            */

/* vs_event_post(e: edi): post event buffer e (8 bytes, device-writable; no notify). */
vs_event_post:
	movl	%edi, %esi
	leaq	vs_event_bufs(%rip), %rdx
	leaq	(%rdx, %rsi, 8), %rdx
	movl	$0xffffffff, (%rdx)
	pushq	%rsi
	movl	$VS_EVQ, %edi
	movl	$8, %ecx
	movl	$VRING_DESC_F_WRITE, %r8d
	xorl	%r9d, %r9d
	call	vq_set_desc
	popq	%rsi
	movl	$VS_EVQ, %edi
	jmp	vq_push

/* vs_event_fill(): post every event buffer and notify. */
vs_event_fill:
	pushq	%rbx
	xorl	%ebx, %ebx
1:	cmpl	vs_nev(%rip), %ebx
	jae	2f
	movl	%ebx, %edi
	call	vs_event_post
	incl	%ebx
	jmp	1b
2:	movl	$VS_EVQ, %edi
	call	vq_notify
	popq	%rbx
	ret

/*
 * vs_events() -> eax = 1 if a VIRTIO_VSOCK_EVENT_TRANSPORT_RESET arrived
 * (guest_cid is then read again), else 0. Used event buffers are posted
 * again.
 */
	.globl	vs_events
vs_events:
	pushq	%rbx
	pushq	%r12
	xorl	%r12d, %r12d			/* reset seen */
	xorl	%ebx, %ebx			/* buffers taken */
1:	movl	$VS_EVQ, %edi
	call	vq_pop_used
	testl	%eax, %eax
	js	3f
	cmpl	vs_nev(%rip), %eax
	jae	1b				/* no event buffer: dropped */
	leaq	vs_event_bufs(%rip), %rcx
	cmpl	$VS_EVENT_TRANSPORT_RESET, (%rcx, %rax, 8)
	jne	2f
	movl	$1, %r12d
2:	movl	%eax, %edi
	call	vs_event_post
	incl	%ebx
	jmp	1b
3:	testl	%ebx, %ebx
	jz	4f
	movl	$VS_EVQ, %edi
	call	vq_notify
4:	testl	%r12d, %r12d
	jz	5f
	movl	$VSOCK_CFG_GUEST_CID, %edi
	call	vio_cfg_rd64
	movq	%rax, vs_cid(%rip)
5:	movl	%r12d, %eax
	popq	%r12
	popq	%rbx
	ret

/* ---------------------------------------------------------------- */
/* Sending.                                                           */

/* vs_tx_init(): every tx buffer free. */
vs_tx_init:
	movl	vs_ntx(%rip), %eax
	movl	%eax, vs_tx_nfree(%rip)
	leaq	vs_tx_free(%rip), %rcx
	xorl	%edx, %edx
1:	cmpl	%eax, %edx
	jae	2f
	movw	%dx, (%rcx, %rdx, 2)
	incl	%edx
	jmp	1b
2:	ret

/* vs_tx_release(id: eax): a used tx head back on the free stack (anything else is dropped). */
vs_tx_release:
	testl	$1, %eax
	jnz	1f
	shrl	$1, %eax
	cmpl	vs_ntx(%rip), %eax
	jae	1f
	movl	vs_tx_nfree(%rip), %edx
	cmpl	vs_ntx(%rip), %edx
	jae	1f
	leaq	vs_tx_free(%rip), %rcx
	movw	%ax, (%rcx, %rdx, 2)
	incl	vs_tx_nfree(%rip)
1:	ret

/* vs_tx_reclaim(): take back every tx buffer the device has used. */
	.globl	vs_tx_reclaim
vs_tx_reclaim:
1:	movl	$VS_TXQ, %edi
	call	vq_pop_used
	testl	%eax, %eax
	js	2f
	call	vs_tx_release
	jmp	1b
2:	ret

/* vs_tx_slot() -> eax = a free tx buffer, or VQ_TIMEOUT / VQ_NEEDS_RESET after VS_WAIT_MS. */
vs_tx_slot:
	call	vs_tx_reclaim
	cmpl	$0, vs_tx_nfree(%rip)
	jne	1f
	movl	$VS_TXQ, %edi
	movl	$VS_WAIT_MS, %esi
	call	vq_wait_used
	testl	%eax, %eax
	js	2f
	call	vs_tx_release
	jmp	vs_tx_slot
1:	decl	vs_tx_nfree(%rip)
	movl	vs_tx_nfree(%rip), %edx
	leaq	vs_tx_free(%rip), %rcx
	movzwl	(%rcx, %rdx, 2), %eax
2:	ret

/*
 * vs_send(op: edi, flags: esi, buf: rdx, len: ecx) -> eax = 0, or
 * VQ_TIMEOUT / VQ_NEEDS_RESET if no tx buffer came free.
 * One packet from vs_cid:vs_local_port to vs_peer_cid:vs_peer_port, type
 * stream, carrying buf_alloc VS_BUF and fwd_cnt vs_fwd_cnt (which becomes
 * vs_announced) and len (<= VS_PAYLOAD) bytes copied from buf; notified.
 */
	.globl	vs_send
vs_send:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	pushq	%r14
	movl	%edi, %r12d
	movl	%esi, %r13d
	movq	%rdx, %r14
	movl	%ecx, %ebp
	call	vs_tx_slot
	testl	%eax, %eax
	js	.Lsend_out
	movl	%eax, %ebx
	movl	%eax, %edi			/* the header */
	shlq	$6, %rdi
	leaq	vs_tx_hdrs(%rip), %rdx
	addq	%rdi, %rdx
	movq	vs_cid(%rip), %rax
	movq	%rax, VS_SRC_CID(%rdx)
	movq	vs_peer_cid(%rip), %rax
	movq	%rax, VS_DST_CID(%rdx)
	movl	vs_local_port(%rip), %eax
	movl	%eax, VS_SRC_PORT(%rdx)
	movl	vs_peer_port(%rip), %eax
	movl	%eax, VS_DST_PORT(%rdx)
	movl	%ebp, VS_LEN(%rdx)
	movw	$VS_TYPE_STREAM, VS_TYPE(%rdx)
	movw	%r12w, VS_OP(%rdx)
	movl	%r13d, VS_FLAGS(%rdx)
	movl	$VS_BUF, VS_BUF_ALLOC(%rdx)
	movl	vs_fwd_cnt(%rip), %eax
	movl	%eax, VS_FWD_CNT(%rdx)
	movl	%eax, vs_announced(%rip)
	movl	$VS_TXQ, %edi
	leal	(%rbx, %rbx), %esi
	movl	$VS_HDR_SIZE, %ecx
	xorl	%r8d, %r8d
	xorl	%r9d, %r9d
	testl	%ebp, %ebp
	jz	1f
	movl	$VRING_DESC_F_NEXT, %r8d
	leal	1(%rsi), %r9d
1:	call	vq_set_desc
	testl	%ebp, %ebp
	jz	2f
	movl	%ebx, %edi			/* the payload */
	shlq	$12, %rdi
	addq	vs_tx_area(%rip), %rdi
	movq	%rdi, %rdx
	movq	%r14, %rsi
	movl	%ebp, %ecx
	rep movsb
	movl	$VS_TXQ, %edi
	leal	1(%rbx, %rbx), %esi
	movl	%ebp, %ecx
	xorl	%r8d, %r8d
	xorl	%r9d, %r9d
	call	vq_set_desc
2:	movl	$VS_TXQ, %edi
	leal	(%rbx, %rbx), %esi
	call	vq_push
	movl	$VS_TXQ, %edi
	call	vq_notify
	xorl	%eax, %eax
.Lsend_out:
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

/*
 * vs_reply_rst(hdr: rdi) -> eax as vs_send: an RST back to whoever sent
 * the packet with header hdr (the connection's addresses are kept).
 */
	.globl	vs_reply_rst
vs_reply_rst:
	pushq	vs_peer_cid(%rip)
	pushq	vs_peer_port(%rip)		/* and vs_local_port, the next 4 bytes */
	movq	VS_SRC_CID(%rdi), %rax
	movq	%rax, vs_peer_cid(%rip)
	movl	VS_SRC_PORT(%rdi), %eax
	movl	%eax, vs_peer_port(%rip)
	movl	VS_DST_PORT(%rdi), %eax
	movl	%eax, vs_local_port(%rip)
	movl	vs_announced(%rip), %eax	/* an RST announces nothing */
	pushq	%rax
	movl	$VS_OP_RST, %edi
	xorl	%esi, %esi
	xorl	%edx, %edx
	xorl	%ecx, %ecx
	call	vs_send
	popq	%rcx
	movl	%ecx, vs_announced(%rip)
	popq	vs_peer_port(%rip)
	popq	vs_peer_cid(%rip)
	ret

	.section .rodata
key_dev:	.asciz	"hearth.dev"
msg_queues:	.asciz	"queues 0-2 not available, or too small, or the buffers do not fit the pool"

	.data
	.balign	8
	.globl	vs_cid, vs_peer_cid, vs_peer_port, vs_local_port, vs_fwd_cnt, vs_announced, vs_ring
vs_dev:		.quad	0		/* index among the virtio-vsock devices */
vs_cid:		.quad	0		/* guest_cid */
vs_peer_cid:	.quad	0
vs_peer_port:	.long	0
vs_local_port:	.long	0		/* must follow vs_peer_port (vs_reply_rst) */
vs_fwd_cnt:	.long	0		/* payload bytes consumed from our receive buffer */
vs_announced:	.long	0		/* vs_fwd_cnt as the last packet sent carried it */
vs_rx_area:	.quad	0
vs_tx_area:	.quad	0
vs_ring:	.quad	0		/* VS_BUF bytes for the connection's data */
vs_nrx:		.long	0
vs_ntx:		.long	0
vs_nev:		.long	0
vs_tx_nfree:	.long	0
vs_tx_free:	.fill	VS_MAX_BUFS, 2, 0

	.bss
	.balign	64
vs_rx_hdrs:	.skip	VS_MAX_BUFS * VS_HDR_STRIDE
vs_tx_hdrs:	.skip	VS_MAX_BUFS * VS_HDR_STRIDE
vs_event_bufs:	.skip	VS_EVENTS * 8
