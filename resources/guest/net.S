/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: a polling virtio-net driver (virtio 1.2, 5.1) on the
 * shared virtio-mmio library. Scenarios: net_scen.S and net_bench.S.
 *
 * Features: VERSION_1, MAC and MTU where offered, nothing else (no
 * offloads, no mergeable buffers, no control queue), so every packet is
 * one 12-byte virtio_net_hdr followed by one whole Ethernet frame.
 * Queues 0 (receiveq1) and 1 (transmitq1). Buffer i of a queue is
 * descriptor i, one descriptor per packet, net_buf bytes each: the rx
 * buffers at pool_lo, the tx buffers right after them. Every rx buffer is
 * posted at set-up and re-posted once its frame has been read. Free tx
 * buffers sit on a stack; a used tx buffer goes back on it.
 */
#include "guest.h"
#include "virtio.h"
#include "net.h"

#define NET_WANTED	((1 << VIRTIO_F_VERSION_1) + (1 << VIRTIO_NET_F_MTU) + (1 << VIRTIO_NET_F_MAC))

	.text
	.code64

/* net_fail_line(msg: rdi): hearth-guest: NET-FAIL <msg> */
	.globl	net_fail_line
net_fail_line:
	pushq	%rdi
	call	line_begin
	PUTS	"NET-FAIL "
	popq	%rdi
	call	puts
	jmp	line_end

/* net_put_mac(mac: rdi): aa:bb:cc:dd:ee:ff inside a line. */
	.globl	net_put_mac
net_put_mac:
	pushq	%rbx
	pushq	%r12
	movq	%rdi, %rbx
	xorl	%r12d, %r12d
1:	testl	%r12d, %r12d
	jz	2f
	PUTC	0x3a				/* ':' */
2:	movzbl	(%rbx, %r12), %edi
	movl	$2, %esi
	call	put_hex_digits
	incl	%r12d
	cmpl	$ETH_ALEN, %r12d
	jb	1b
	popq	%r12
	popq	%rbx
	ret

/*
 * net_put_wait_error(result: edi): "timeout", "needs_reset" or "bad_id"
 * inside a line.
 */
	.globl	net_put_wait_error
net_put_wait_error:
	cmpl	$VQ_NEEDS_RESET, %edi
	jne	1f
	PUTS	"needs_reset"
	ret
1:	cmpl	$NET_BAD_ID, %edi
	jne	2f
	PUTS	"bad_id"
	ret
2:	PUTS	"timeout"
	ret

/*
 * net_setup() -> eax = 0, or 1 after a NET-FAIL line.
 * The pool; the hearth.dev-th (default 0) virtio-net device; negotiation;
 * both queues; DRIVER_OK; the MAC (02:00:00:00:00:01 without
 * VIRTIO_NET_F_MAC) and MTU; every rx buffer posted; then
 *   hearth-guest: NET-DEV dev=<n> base=0x<base> irq=<n> features=0x<accepted> rx_queue=<n> tx_queue=<n> buf=<bytes>
 *   hearth-guest: NET-INFO mac=<aa:bb:cc:dd:ee:ff> mtu=<n, 0 without VIRTIO_NET_F_MTU>
 *   hearth-guest: NET-READY
 */
	.globl	net_setup
net_setup:
	pushq	%rbx
	call	pool_init
	leaq	key_dev(%rip), %rdi
	xorl	%esi, %esi
	call	cmdline_get_num
	movq	%rax, net_dev(%rip)
	movl	$VIRTIO_ID_NET, %edi
	movl	%eax, %esi
	call	vio_find
	testq	%rax, %rax
	jnz	1f
	call	line_begin
	PUTS	"NET-FAIL no virtio-net device dev="
	movq	net_dev(%rip), %rdi
	call	put_dec
	call	line_end
	jmp	.Lns_failed
1:	movabsq	$NET_WANTED, %rdi
	call	vio_negotiate
	testl	%eax, %eax
	jz	2f
	movl	%eax, %ebx
	call	line_begin
	PUTS	"NET-FAIL "
	movl	%ebx, %edi
	call	vio_put_error
	call	line_end
	jmp	.Lns_failed
2:	movl	$NET_RXQ, %edi
	movl	$VQ_SIZE_MAX, %esi
	call	vq_setup
	testl	%eax, %eax
	jnz	3f
	movl	$NET_TXQ, %edi
	movl	$VQ_SIZE_MAX, %esi
	call	vq_setup
	testl	%eax, %eax
	jz	4f
3:	movl	$VIRTIO_S_FAILED, %edi
	call	vio_add_status
	leaq	msg_no_queue(%rip), %rdi
	call	net_fail_line
	jmp	.Lns_failed
4:	call	vio_driver_ok
	call	net_read_config
	testl	%eax, %eax
	jnz	.Lns_failed
	call	net_rx_fill
	call	net_tx_init
	call	net_info_lines
	xorl	%eax, %eax
	jmp	.Lns_out
.Lns_failed:
	movl	$1, %eax
.Lns_out:
	popq	%rbx
	ret

/*
 * net_read_config() -> eax = 0, or 1 after a NET-FAIL line.
 * net_mac, net_mtu; net_buf = NET_BUF_MIN, or for a larger MTU the
 * header plus the largest frame rounded up to 2 KiB (at most NET_BUF_MAX);
 * the rx and tx buffer areas, which must fit the pool.
 */
net_read_config:
	pushq	%rbx
	movl	$0x00000002, net_mac(%rip)	/* 02:00:00:00 */
	movw	$0x0100, net_mac + 4(%rip)	/* 00:01 */
	btq	$VIRTIO_NET_F_MAC, vio_features(%rip)
	jnc	2f
	xorl	%ebx, %ebx
1:	movl	%ebx, %edi
	call	vio_cfg_rd8
	leaq	net_mac(%rip), %rcx
	movb	%al, (%rcx, %rbx)
	incl	%ebx
	cmpl	$ETH_ALEN, %ebx
	jb	1b
2:	xorl	%eax, %eax
	btq	$VIRTIO_NET_F_MTU, vio_features(%rip)
	jnc	3f
	movl	$NET_CFG_MTU, %edi
	call	vio_cfg_rd16
3:	movl	%eax, net_mtu(%rip)
	addl	$(NET_HDR_SIZE + ETH_HLEN + NET_BUF_MIN - 1), %eax
	andl	$~(NET_BUF_MIN - 1), %eax
	cmpl	$NET_BUF_MIN, %eax
	jae	4f
	movl	$NET_BUF_MIN, %eax
4:	movl	%eax, net_buf(%rip)
	leaq	msg_mtu(%rip), %rdi
	cmpl	$NET_BUF_MAX, %eax
	ja	5f
	movq	pool_lo(%rip), %rbx
	movq	%rbx, net_rx_area(%rip)
	movl	$NET_RXQ, %edi
	call	vq_size
	imull	net_buf(%rip), %eax
	addq	%rax, %rbx
	movq	%rbx, net_tx_area(%rip)
	movl	$NET_TXQ, %edi
	call	vq_size
	imull	net_buf(%rip), %eax
	addq	%rax, %rbx
	leaq	msg_pool(%rip), %rdi
	cmpq	pool_hi(%rip), %rbx
	ja	5f
	xorl	%eax, %eax
	popq	%rbx
	ret
5:	call	net_fail_line
	movl	$1, %eax
	popq	%rbx
	ret

/* net_info_lines(): the NET-DEV, NET-INFO and NET-READY lines. */
net_info_lines:
	call	line_begin
	PUTS	"NET-DEV dev="
	movq	net_dev(%rip), %rdi
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
	PUTS	" rx_queue="
	movl	$NET_RXQ, %edi
	call	vq_size
	movl	%eax, %edi
	call	put_dec
	PUTS	" tx_queue="
	movl	$NET_TXQ, %edi
	call	vq_size
	movl	%eax, %edi
	call	put_dec
	PUTS	" buf="
	movl	net_buf(%rip), %edi
	call	put_dec
	call	line_end
	call	line_begin
	PUTS	"NET-INFO mac="
	leaq	net_mac(%rip), %rdi
	call	net_put_mac
	PUTS	" mtu="
	movl	net_mtu(%rip), %edi
	call	put_dec
	call	line_end
	call	line_begin
	PUTS	"NET-READY"
	jmp	line_end

/* ---------------------------------------------------------------- */
/* Receiving.                                                         */

/* net_rx_frame(id: edi) -> rax: the Ethernet frame in rx buffer id. */
	.globl	net_rx_frame
net_rx_frame:
	movl	%edi, %eax
	imull	net_buf(%rip), %eax
	addq	net_rx_area(%rip), %rax
	addq	$NET_HDR_SIZE, %rax
	ret

/* net_rx_requeue(id: edi): post rx buffer id again (no notify). */
	.globl	net_rx_requeue
net_rx_requeue:
	pushq	%rdi
	movl	%edi, %eax
	imull	net_buf(%rip), %eax
	movq	net_rx_area(%rip), %rdx
	addq	%rax, %rdx
	movl	%edi, %esi
	movl	$NET_RXQ, %edi
	movl	net_buf(%rip), %ecx
	movl	$VRING_DESC_F_WRITE, %r8d
	xorl	%r9d, %r9d
	call	vq_set_desc
	popq	%rsi
	movl	$NET_RXQ, %edi
	jmp	vq_push

/* net_rx_fill(): post every rx buffer and notify. */
net_rx_fill:
	pushq	%rbx
	xorl	%ebx, %ebx
1:	movl	$NET_RXQ, %edi
	call	vq_size
	cmpl	%eax, %ebx
	jae	2f
	movl	%ebx, %edi
	call	net_rx_requeue
	incl	%ebx
	jmp	1b
2:	movl	$NET_RXQ, %edi
	call	vq_notify
	popq	%rbx
	ret

/*
 * net_rx_check(id: eax, len: edx) -> eax = id, edx = frame length; or
 * eax = NET_BAD_ID if id is no rx buffer or len is shorter than the header
 * or longer than the buffer.
 */
net_rx_check:
	testl	%eax, %eax
	js	2f
	pushq	%rax
	pushq	%rdx
	movl	$NET_RXQ, %edi
	call	vq_size
	movl	%eax, %ecx
	popq	%rdx
	popq	%rax
	cmpl	%ecx, %eax
	jae	1f
	cmpl	$NET_HDR_SIZE, %edx
	jb	1f
	cmpl	net_buf(%rip), %edx
	ja	1f
	subl	$NET_HDR_SIZE, %edx
	ret
1:	movl	$NET_BAD_ID, %eax
2:	ret

/* net_rx_poll() -> eax = id of a received frame (edx = its length), or VQ_TIMEOUT, NET_BAD_ID. */
	.globl	net_rx_poll
net_rx_poll:
	movl	$NET_RXQ, %edi
	call	vq_pop_used
	jmp	net_rx_check

/* net_rx_wait(ms: edi) -> as net_rx_poll, waiting; or VQ_NEEDS_RESET. */
	.globl	net_rx_wait
net_rx_wait:
	movl	%edi, %esi
	movl	$NET_RXQ, %edi
	call	vq_wait_used
	jmp	net_rx_check

/* ---------------------------------------------------------------- */
/* Transmitting.                                                      */

/* net_tx_init(): every tx buffer free. */
net_tx_init:
	movl	$NET_TXQ, %edi
	call	vq_size
	movl	%eax, net_tx_nfree(%rip)
	leaq	net_tx_free(%rip), %rcx
	xorl	%edx, %edx
1:	cmpl	%eax, %edx
	jae	2f
	movw	%dx, (%rcx, %rdx, 2)
	incl	%edx
	jmp	1b
2:	ret

/* net_tx_release(id: eax): put a used tx buffer back on the free stack (ids that are no buffer are dropped). */
net_tx_release:
	pushq	%rax
	movl	$NET_TXQ, %edi
	call	vq_size
	movl	%eax, %ecx
	popq	%rax
	cmpl	%ecx, %eax
	jae	1f
	movl	net_tx_nfree(%rip), %edx
	cmpl	%ecx, %edx
	jae	1f
	leaq	net_tx_free(%rip), %rcx
	movw	%ax, (%rcx, %rdx, 2)
	incl	net_tx_nfree(%rip)
1:	ret

/* net_tx_reclaim() -> eax: how many tx buffers the device has given back. */
	.globl	net_tx_reclaim
net_tx_reclaim:
	pushq	%rbx
	xorl	%ebx, %ebx
1:	movl	$NET_TXQ, %edi
	call	vq_pop_used
	testl	%eax, %eax
	js	2f
	call	net_tx_release
	incl	%ebx
	jmp	1b
2:	movl	%ebx, %eax
	popq	%rbx
	ret

/* net_tx_in_flight() -> eax: tx buffers the device holds. */
	.globl	net_tx_in_flight
net_tx_in_flight:
	movl	$NET_TXQ, %edi
	call	vq_size
	subl	net_tx_nfree(%rip), %eax
	ret

/*
 * net_tx_slot() -> eax = a free tx buffer (taken off the stack), or
 * VQ_TIMEOUT / VQ_NEEDS_RESET if none came back within NET_WAIT_MS.
 */
	.globl	net_tx_slot
net_tx_slot:
	call	net_tx_reclaim
	cmpl	$0, net_tx_nfree(%rip)
	jne	1f
	movl	$NET_TXQ, %edi
	movl	$NET_WAIT_MS, %esi
	call	vq_wait_used
	testl	%eax, %eax
	js	2f
	call	net_tx_release
	jmp	net_tx_slot
1:	decl	net_tx_nfree(%rip)
	movl	net_tx_nfree(%rip), %edx
	leaq	net_tx_free(%rip), %rcx
	movzwl	(%rcx, %rdx, 2), %eax
2:	ret

/* net_tx_frame(slot: edi) -> rax: where the frame of tx buffer slot goes (after its header). */
	.globl	net_tx_frame
net_tx_frame:
	movl	%edi, %eax
	imull	net_buf(%rip), %eax
	addq	net_tx_area(%rip), %rax
	addq	$NET_HDR_SIZE, %rax
	ret

/* net_tx_commit(slot: edi, len: esi): zero the header, post header + len bytes of frame (no notify). */
	.globl	net_tx_commit
net_tx_commit:
	pushq	%rdi
	pushq	%rsi
	call	net_tx_frame
	leaq	-NET_HDR_SIZE(%rax), %rdx
	movq	$0, 0(%rdx)
	movl	$0, 8(%rdx)
	popq	%rcx
	addl	$NET_HDR_SIZE, %ecx
	movl	(%rsp), %esi
	movl	$NET_TXQ, %edi
	xorl	%r8d, %r8d
	xorl	%r9d, %r9d
	call	vq_set_desc
	popq	%rsi
	movl	$NET_TXQ, %edi
	jmp	vq_push

/* net_tx_wait_one() -> eax = 0 once the device gives back a tx buffer; VQ_TIMEOUT / VQ_NEEDS_RESET after NET_WAIT_MS. */
	.globl	net_tx_wait_one
net_tx_wait_one:
	movl	$NET_TXQ, %edi
	movl	$NET_WAIT_MS, %esi
	call	vq_wait_used
	testl	%eax, %eax
	js	1f
	call	net_tx_release
	xorl	%eax, %eax
1:	ret

/*
 * net_tx_drain() -> eax = 0 once the device has given back every tx
 * buffer; VQ_TIMEOUT / VQ_NEEDS_RESET if it stops doing so for NET_WAIT_MS.
 */
	.globl	net_tx_drain
net_tx_drain:
	call	net_tx_reclaim
	call	net_tx_in_flight
	testl	%eax, %eax
	jz	1f
	movl	$NET_TXQ, %edi
	movl	$NET_WAIT_MS, %esi
	call	vq_wait_used
	testl	%eax, %eax
	js	1f
	call	net_tx_release
	jmp	net_tx_drain
1:	ret

/* ---------------------------------------------------------------- */
/* Frames.                                                            */

/*
 * net_frame_fill(frame: rdi, seq: esi, payload: edx) -> eax = frame length
 * Destination ff:ff:ff:ff:ff:ff, source net_mac, EtherType 0x88b5, then
 * payload bytes: the sequence number big-endian in bytes 0-3 (as many as
 * fit), byte i >= 4 = (seq + i) mod 256.
 */
	.globl	net_frame_fill
net_frame_fill:
	movl	$0xffffffff, ETH_DEST(%rdi)
	movw	$0xffff, ETH_DEST + 4(%rdi)
	movl	net_mac(%rip), %eax
	movl	%eax, ETH_SOURCE(%rdi)
	movzwl	net_mac + 4(%rip), %eax
	movw	%ax, ETH_SOURCE + 4(%rdi)
	movw	$0xb588, ETH_PROTO(%rdi)	/* 0x88b5, big-endian */
	leaq	ETH_HLEN(%rdi), %r8
	movl	%esi, %eax
	bswapl	%eax
	xorl	%ecx, %ecx
1:	cmpl	%edx, %ecx
	jae	3f
	cmpl	$4, %ecx
	jae	2f
	movb	%al, (%r8, %rcx)		/* bytes 0-3: seq, big-endian */
	shrl	$8, %eax
	incl	%ecx
	jmp	1b
2:	leal	(%rsi, %rcx), %r9d
	movb	%r9b, (%r8, %rcx)
	incl	%ecx
	jmp	1b
3:	leal	ETH_HLEN(%rdx), %eax
	ret

/*
 * net_frame_check(frame: rdi, len: esi) -> eax = 1 if it is a 0x88b5 frame
 * whose payload (at least 4 bytes) follows the net_frame_fill pattern,
 * edx = its sequence number; eax = 0 if it is such a frame but the pattern
 * is wrong; eax = -1 if it is another kind of frame.
 */
	.globl	net_frame_check
net_frame_check:
	movl	$-1, %eax
	cmpl	$ETH_HLEN, %esi
	jb	3f
	cmpw	$0xb588, ETH_PROTO(%rdi)
	jne	3f
	xorl	%eax, %eax
	cmpl	$(ETH_HLEN + 4), %esi
	jb	3f
	movl	ETH_HLEN(%rdi), %edx
	bswapl	%edx
	leaq	ETH_HLEN(%rdi), %r8
	subl	$ETH_HLEN, %esi
	movl	$4, %ecx
1:	cmpl	%esi, %ecx
	jae	2f
	leal	(%rdx, %rcx), %r9d
	cmpb	%r9b, (%r8, %rcx)
	jne	3f
	incl	%ecx
	jmp	1b
2:	movl	$1, %eax
3:	ret

	.section .rodata
key_dev:	.asciz	"hearth.dev"
msg_no_queue:	.asciz	"queues 0 and 1 not available"
msg_mtu:	.asciz	"the device's MTU needs buffers larger than 64 KiB"
msg_pool:	.asciz	"the rx and tx buffers do not fit the RAM pool"

	.data
	.balign	8
	.globl	net_dev, net_mac, net_mtu, net_buf, net_tx_nfree
net_dev:	.quad	0		/* index among the virtio-net devices */
net_rx_area:	.quad	0
net_tx_area:	.quad	0
net_mtu:	.long	0
net_buf:	.long	NET_BUF_MIN	/* bytes per buffer, header included */
net_tx_nfree:	.long	0
net_mac:	.byte	2, 0, 0, 0, 0, 1
	.balign	2
net_tx_free:	.fill	VQ_SIZE_MAX, 2, 0	/* stack of free tx buffers */
