/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: the network scenarios on the virtio-net driver
 * (net.S): net-info, net-tx, net-rx, net-arp and net-flood. Every one
 * starts with net_setup's NET-DEV, NET-INFO and NET-READY lines; frames
 * the host sends after NET-READY find rx buffers waiting.
 */
#include "guest.h"
#include "virtio.h"
#include "net.h"

#define FNV_OFFSET			0xcbf29ce484222325
#define LEN_DEFAULT			64
#define FLOOD_COUNT_DEFAULT		1000
#define IP_DEFAULT			0x0200000a	/* 10.0.0.2, as its bytes lie in memory */
#define RX_POLL_MS			1000

	.text
	.code64

/* payload_len(default: esi) -> eax = hearth.len, or -1 after a NET-FAIL line if a frame of it does not fit a buffer. */
	.globl	payload_len, net_next_frame, net_rx_done
payload_len:
	leaq	key_len(%rip), %rdi
	call	cmdline_get_num
	movl	net_buf(%rip), %ecx
	subl	$(NET_HDR_SIZE + ETH_HLEN), %ecx
	cmpq	%rcx, %rax
	ja	1f
	ret
1:	leaq	msg_len(%rip), %rdi
	call	net_fail_line
	movl	$-1, %eax
	ret

/* stopped() -> eax = 1 after printing NET-STOPPED if a 'q' arrived on COM1. */
stopped:
	call	serial_got_stop
	testl	%eax, %eax
	jz	1f
	call	line_begin
	PUTS	"NET-STOPPED"
	call	line_end
	movl	$1, %eax
1:	ret

/* rx_fail(result: edi): hearth-guest: NET-FAIL rx <timeout|needs_reset|bad_id> */
rx_fail:
	pushq	%rdi
	call	line_begin
	PUTS	"NET-FAIL rx "
	popq	%rdi
	call	net_put_wait_error
	jmp	line_end

/* net-info: just the set-up lines. */
	.globl	scenario_net_info
scenario_net_info:
	jmp	net_setup

/*
 * net-tx: one frame of hearth.len (default 64) payload bytes, sequence
 * number 0 (net_frame_fill), sent and given back by the device:
 *   hearth-guest: NET-TX ok len=<frame bytes> fnv=<FNV-1a 64 of the frame>
 * or NET-TX timeout / NET-TX needs_reset.
 */
	.globl	scenario_net_tx
scenario_net_tx:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	call	net_setup
	testl	%eax, %eax
	jnz	.Ltx_out
	movl	$LEN_DEFAULT, %esi
	call	payload_len
	testl	%eax, %eax
	js	.Ltx_out
	movl	%eax, %r12d
	call	net_tx_slot
	movl	%eax, %ebx
	movl	%eax, %edi
	call	net_tx_frame
	movq	%rax, %r13
	movq	%rax, %rdi
	xorl	%esi, %esi
	movl	%r12d, %edx
	call	net_frame_fill
	movl	%eax, %r12d			/* frame length */
	movl	%ebx, %edi
	movl	%eax, %esi
	call	net_tx_commit
	movl	$NET_TXQ, %edi
	call	vq_notify
	call	net_tx_drain
	movl	%eax, %ebx
	movabsq	$FNV_OFFSET, %rdi
	movq	%r13, %rsi
	movl	%r12d, %edx
	call	fnv1a64
	movq	%rax, %r13
	call	line_begin
	PUTS	"NET-TX "
	testl	%ebx, %ebx
	jz	1f
	movl	%ebx, %edi
	call	net_put_wait_error
	jmp	2f
1:	PUTS	"ok len="
	movl	%r12d, %edi
	call	put_dec
	PUTS	" fnv="
	movq	%r13, %rdi
	call	put_hex16
2:	call	line_end
.Ltx_out:
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/*
 * net_next_frame() -> eax = id of the next received frame (edx = length),
 * waiting as long as it takes; -1 after NET-STOPPED or a NET-FAIL rx line.
 */
net_next_frame:
	movl	$RX_POLL_MS, %edi
	call	net_rx_wait
	testl	%eax, %eax
	jns	2f
	cmpl	$VQ_TIMEOUT, %eax
	jne	1f
	call	stopped
	testl	%eax, %eax
	jz	net_next_frame
	movl	$-1, %eax
	ret
1:	movl	%eax, %edi
	call	rx_fail
	movl	$-1, %eax
2:	ret

/* net_rx_done(id: edi): post rx buffer id again and notify. */
net_rx_done:
	call	net_rx_requeue
	movl	$NET_RXQ, %edi
	jmp	vq_notify

/*
 * net-rx: receive hearth.count (default 1) frames of EtherType
 * hearth.ethertype (default 0x88b5; 0: any), each reported as
 *   hearth-guest: NET-RX len=<frame bytes> fnv=<FNV-1a 64 of the frame>
 * then hearth-guest: NET-RX-DONE frames=<n> ignored=<frames of other types>
 */
	.globl	scenario_net_rx
scenario_net_rx:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	call	net_setup
	testl	%eax, %eax
	jnz	.Lrx_out
	leaq	key_count(%rip), %rdi
	movl	$1, %esi
	call	cmdline_get_num
	movq	%rax, %r12			/* count */
	leaq	key_ethertype(%rip), %rdi
	movl	$ETH_P_HEARTH, %esi
	call	cmdline_get_num
	xchgb	%al, %ah			/* as it lies in a frame */
	movzwl	%ax, %ebp
	xorl	%r13d, %r13d			/* received */
	xorl	%r14d, %r14d			/* ignored */
.Lrx_loop:
	cmpq	%r12, %r13
	jae	.Lrx_done
	call	net_next_frame
	testl	%eax, %eax
	js	.Lrx_out
	movl	%eax, %ebx
	movl	%edx, %r15d
	movl	%eax, %edi
	call	net_rx_frame
	testl	%ebp, %ebp
	jz	1f
	cmpl	$ETH_HLEN, %r15d
	jb	2f
	cmpw	%bp, ETH_PROTO(%rax)
	je	1f
2:	incq	%r14
	jmp	3f
1:	movabsq	$FNV_OFFSET, %rdi
	movq	%rax, %rsi
	movl	%r15d, %edx
	call	fnv1a64
	pushq	%rax
	call	line_begin
	PUTS	"NET-RX len="
	movl	%r15d, %edi
	call	put_dec
	PUTS	" fnv="
	popq	%rdi
	call	put_hex16
	call	line_end
	incq	%r13
3:	movl	%ebx, %edi
	call	net_rx_done
	jmp	.Lrx_loop
.Lrx_done:
	call	line_begin
	PUTS	"NET-RX-DONE frames="
	movq	%r13, %rdi
	call	put_dec
	PUTS	" ignored="
	movq	%r14, %rdi
	call	put_dec
	call	line_end
.Lrx_out:
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

/*
 * parse_ipv4(key: rdi, default: esi) -> eax: the address key=a.b.c.d
 * as its four bytes lie in a packet (a in the low byte); default if the
 * key is absent; edx = 0 if the value is not such an address.
 */
parse_ipv4:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	pushq	%r14
	movl	%esi, %r13d
	call	cmdline_get
	movl	$1, %r14d			/* ok */
	testq	%rax, %rax
	jz	.Lip_out
	leaq	(%rax, %rdx), %r12		/* end */
	movq	%rax, %rdi
	xorl	%ebx, %ebx			/* octets so far */
	xorl	%r13d, %r13d
1:	call	parse_num
	testl	%ecx, %ecx
	jz	.Lip_bad
	cmpq	$255, %rax
	ja	.Lip_bad
	movl	%ebx, %ecx
	shll	$3, %ecx
	shll	%cl, %eax
	orl	%eax, %r13d
	incl	%ebx
	cmpl	$4, %ebx
	je	2f
	cmpb	$0x2e, (%rdx)			/* '.' */
	jne	.Lip_bad
	leaq	1(%rdx), %rdi
	jmp	1b
2:	cmpq	%r12, %rdx
	je	.Lip_out
.Lip_bad:
	xorl	%r14d, %r14d
.Lip_out:
	movl	%r13d, %eax
	movl	%r14d, %edx
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/*
 * is_arp_request(frame: rdi, len: esi) -> eax = 1 if it is an Ethernet
 * ARP request (htype 1, ptype IPv4, hlen 6, plen 4, oper 1) for net_ip.
 */
is_arp_request:
	xorl	%eax, %eax
	cmpl	$ARP_FRAME_LEN, %esi
	jb	1f
	cmpw	$0x0608, ETH_PROTO(%rdi)	/* big-endian fields, read little-endian */
	jne	1f
	cmpw	$0x0100, ARP_HTYPE(%rdi)
	jne	1f
	cmpw	$0x0008, ARP_PTYPE(%rdi)
	jne	1f
	cmpw	$0x0406, ARP_HLEN(%rdi)		/* hlen 6, plen 4 */
	jne	1f
	cmpw	$0x0100, ARP_OPER(%rdi)
	jne	1f
	movl	ARP_TPA(%rdi), %ecx
	cmpl	net_ip(%rip), %ecx
	jne	1f
	movl	$1, %eax
1:	ret

/*
 * arp_reply(request: rdi) -> eax = 0, or VQ_TIMEOUT / VQ_NEEDS_RESET if no
 * tx buffer came free. The reply goes to the requester's hardware address
 * (its sha), from net_mac, padded with zeros to 60 bytes; notified.
 */
arp_reply:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	movq	%rdi, %r12
	call	net_tx_slot
	testl	%eax, %eax
	js	1f
	movl	%eax, %ebx
	movl	%eax, %edi
	call	net_tx_frame
	movq	%rax, %r13
	movq	%rax, %rdi
	movl	$ETH_ZLEN, %ecx
	xorl	%eax, %eax
	rep stosb
	movl	ARP_SHA(%r12), %eax		/* to the requester */
	movl	%eax, ETH_DEST(%r13)
	movl	%eax, ARP_THA(%r13)
	movzwl	ARP_SHA + 4(%r12), %eax
	movw	%ax, ETH_DEST + 4(%r13)
	movw	%ax, ARP_THA + 4(%r13)
	movl	net_mac(%rip), %eax		/* from us */
	movl	%eax, ETH_SOURCE(%r13)
	movl	%eax, ARP_SHA(%r13)
	movzwl	net_mac + 4(%rip), %eax
	movw	%ax, ETH_SOURCE + 4(%r13)
	movw	%ax, ARP_SHA + 4(%r13)
	movw	$0x0608, ETH_PROTO(%r13)
	movw	$0x0100, ARP_HTYPE(%r13)
	movw	$0x0008, ARP_PTYPE(%r13)
	movw	$0x0406, ARP_HLEN(%r13)
	movw	$0x0200, ARP_OPER(%r13)		/* reply */
	movl	net_ip(%rip), %eax
	movl	%eax, ARP_SPA(%r13)
	movl	ARP_SPA(%r12), %eax
	movl	%eax, ARP_TPA(%r13)
	movl	%ebx, %edi
	movl	$ETH_ZLEN, %esi
	call	net_tx_commit
	movl	$NET_TXQ, %edi
	call	vq_notify
	xorl	%eax, %eax
1:	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/*
 * net-arp: answer hearth.count (default 1) ARP requests for hearth.ip
 * (default 10.0.0.2); every other frame is ignored. Then, once the device
 * has given back the replies:
 *   hearth-guest: NET-ARP replied=<n> ignored=<n>
 */
	.globl	scenario_net_arp
scenario_net_arp:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	leaq	key_ip(%rip), %rdi
	movl	$IP_DEFAULT, %esi
	call	parse_ipv4
	movl	%eax, net_ip(%rip)
	testl	%edx, %edx
	jnz	1f
	leaq	msg_ip(%rip), %rdi
	call	net_fail_line
	jmp	.Larp_out
1:	call	net_setup
	testl	%eax, %eax
	jnz	.Larp_out
	leaq	key_count(%rip), %rdi
	movl	$1, %esi
	call	cmdline_get_num
	movq	%rax, %r12			/* count */
	xorl	%r13d, %r13d			/* replied */
	xorl	%r14d, %r14d			/* ignored */
.Larp_loop:
	cmpq	%r12, %r13
	jae	.Larp_done
	call	net_next_frame
	testl	%eax, %eax
	js	.Larp_out
	movl	%eax, %ebx
	movl	%edx, %r15d
	movl	%eax, %edi
	call	net_rx_frame
	movq	%rax, %rdi
	movl	%r15d, %esi
	pushq	%rax
	call	is_arp_request
	popq	%rdi
	testl	%eax, %eax
	jnz	2f
	incq	%r14
	jmp	3f
2:	call	arp_reply
	testl	%eax, %eax
	jnz	4f
	incq	%r13
3:	movl	%ebx, %edi
	call	net_rx_done
	jmp	.Larp_loop
4:	movl	%eax, %ebx
	call	line_begin
	PUTS	"NET-FAIL tx "
	movl	%ebx, %edi
	call	net_put_wait_error
	call	line_end
	jmp	.Larp_out
.Larp_done:
	call	net_tx_drain
	call	line_begin
	PUTS	"NET-ARP replied="
	movq	%r13, %rdi
	call	put_dec
	PUTS	" ignored="
	movq	%r14, %rdi
	call	put_dec
	call	line_end
.Larp_out:
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

	.section .rodata
key_len:	.asciz	"hearth.len"
key_count:	.asciz	"hearth.count"
key_ethertype:	.asciz	"hearth.ethertype"
key_ip:		.asciz	"hearth.ip"
msg_len:	.asciz	"hearth.len: the frame does not fit a buffer"
msg_ip:		.asciz	"hearth.ip is not an IPv4 address a.b.c.d"

	.data
	.balign	4
net_ip:		.long	IP_DEFAULT
