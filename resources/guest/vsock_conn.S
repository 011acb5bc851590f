/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: one vsock stream connection over the vsock driver
 * (vsock.S), and the scenarios vsock-echo and vsock-connect.
 *
 * Credit (5.10.6.3): every packet sent carries buf_alloc = VS_BUF and
 * fwd_cnt = the payload bytes this side has consumed. Received payload is
 * accepted only within that credit (a packet beyond it is dropped and
 * counted as a violation). Data is sent only within the peer's credit,
 * peer_buf_alloc - (tx_cnt - peer_fwd_cnt), from the last packet the peer
 * sent; with none left a CREDIT_REQUEST goes out (once until the peer
 * speaks again). A CREDIT_REQUEST is answered with a CREDIT_UPDATE, and
 * one is sent unasked once VS_BUF / 4 consumed bytes have gone
 * unannounced. Packets for no connection of ours get an RST (unless they
 * are one).
 *
 * Closing (5.10.6.6): whoever is done sends SHUTDOWN with RCV|SEND and
 * waits CLOSE_WAIT_MS for the peer's RST, then sends RST itself; a peer
 * that shuts down both ways is answered with RST.
 */
#include "guest.h"
#include "virtio.h"
#include "vsock.h"

#define ST_LISTEN			0
#define ST_CONNECTING			1
#define ST_CONNECTED			2
#define ST_CLOSING			3
#define ST_CLOSED			4
#define MODE_ECHO			0
#define MODE_CONNECT			1
#define END_NONE			0
#define END_SHUTDOWN			1
#define END_RESET			2
#define PORT_DEFAULT			5000
#define LOCAL_PORT_DEFAULT		49152
#define REPLY_MAX			200
#define CLOSE_WAIT_MS			2000
#define CONNECT_WAIT_MS			5000
#define REPLY_WAIT_MS			10000
#define SERIAL_EVERY			4096	/* idle polls between looks at COM1 */

	.text
	.code64

/* c_credit() -> eax: bytes the peer can take now (0 if it has shrunk below what is in flight). */
c_credit:
	movl	c_tx_cnt(%rip), %eax
	subl	c_peer_fwd_cnt(%rip), %eax	/* in flight at the peer */
	movl	c_peer_buf_alloc(%rip), %ecx
	cmpl	%ecx, %eax
	jae	1f
	subl	%eax, %ecx
	movl	%ecx, %eax
	ret
1:	xorl	%eax, %eax
	ret

/*
 * c_send(op: edi, flags: esi, buf: rdx, len: ecx) -> eax = 0, or 1 after
 * a VSOCK-FAIL tx line (the connection is then given up: c_done).
 */
c_send:
	call	vs_send
	testl	%eax, %eax
	jz	2f
	pushq	%rax
	call	line_begin
	PUTS	"VSOCK-FAIL tx "
	popq	%rdi
	cmpl	$VQ_NEEDS_RESET, %edi
	jne	1f
	PUTS	"needs_reset"
	jmp	3f
1:	PUTS	"timeout"
3:	call	line_end
	movl	$1, c_done(%rip)
	movl	$1, %eax
2:	ret

/* c_request_credit(): a CREDIT_REQUEST unless one is outstanding. */
c_request_credit:
	cmpl	$0, c_credit_req(%rip)
	jne	1f
	movl	$1, c_credit_req(%rip)
	movl	$VS_OP_CREDIT_REQUEST, %edi
	xorl	%esi, %esi
	xorl	%edx, %edx
	xorl	%ecx, %ecx
	jmp	c_send
1:	ret

/*
 * c_deliver(data: rdi, len: esi): payload for the application, if it fits
 * the credit we gave (else dropped, a violation). Echo: into the ring.
 * Connect: the reply line, consumed at once.
 */
c_deliver:
	movl	c_rx_cnt(%rip), %eax
	subl	vs_fwd_cnt(%rip), %eax		/* bytes we hold */
	movl	$VS_BUF, %ecx
	subl	%eax, %ecx			/* free */
	cmpl	%ecx, %esi
	jbe	1f
	incl	c_violations(%rip)
	ret
1:	addl	%esi, c_rx_cnt(%rip)
	cmpl	$MODE_ECHO, c_mode(%rip)
	jne	.Ldl_reply
	movq	%rsi, %r8			/* len */
	movl	c_head(%rip), %eax
	andl	$(VS_BUF - 1), %eax		/* pos */
	movl	$VS_BUF, %ecx
	subl	%eax, %ecx			/* room up to the ring's end */
	cmpl	%esi, %ecx
	cmova	%esi, %ecx
	movq	%rdi, %rsi
	movq	vs_ring(%rip), %rdi
	addq	%rax, %rdi
	movl	%ecx, %edx
	rep movsb				/* the first part */
	movl	%r8d, %ecx
	subl	%edx, %ecx
	movq	vs_ring(%rip), %rdi
	rep movsb				/* the rest, from the ring's start */
	addl	%r8d, c_head(%rip)
	ret
.Ldl_reply:
	addl	%esi, vs_fwd_cnt(%rip)
	xorl	%ecx, %ecx
2:	cmpl	%esi, %ecx
	jae	4f
	cmpl	$0, c_reply_done(%rip)
	jne	4f
	movzbl	(%rdi, %rcx), %eax
	incl	%ecx
	cmpl	$0x0a, %eax			/* '\n' ends the line */
	jne	3f
	movl	$1, c_reply_done(%rip)
	jmp	2b
3:	movl	c_reply_len(%rip), %edx
	cmpl	$REPLY_MAX, %edx
	jae	2b
	leaq	c_reply(%rip), %r8
	movb	%al, (%r8, %rdx)
	incl	c_reply_len(%rip)
	jmp	2b
4:	ret

/* c_packet(b: edi, len: esi): one received packet (rx buffer b, payload len or VS_BAD_PACKET). */
c_packet:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	movl	%esi, %ebx
	pushq	%rdi
	call	vs_rx_data
	movq	%rax, %r13
	popq	%rdi
	call	vs_rx_hdr
	movq	%rax, %r12
	cmpl	$VS_BAD_PACKET, %ebx
	jne	1f
	incl	c_bad(%rip)
	jmp	.Lpk_out
1:	cmpw	$VS_TYPE_STREAM, VS_TYPE(%r12)
	jne	.Lpk_stranger
	movl	c_state(%rip), %eax
	cmpl	$ST_CONNECTING, %eax
	jb	2f
	cmpl	$ST_CLOSING, %eax
	ja	2f
	movq	VS_SRC_CID(%r12), %rcx
	cmpq	vs_peer_cid(%rip), %rcx
	jne	2f
	movl	VS_SRC_PORT(%r12), %ecx
	cmpl	vs_peer_port(%rip), %ecx
	jne	2f
	movl	VS_DST_PORT(%r12), %ecx
	cmpl	vs_local_port(%rip), %ecx
	je	.Lpk_ours
2:	cmpw	$VS_OP_REQUEST, VS_OP(%r12)
	jne	.Lpk_stranger
	cmpl	$ST_LISTEN, c_state(%rip)
	jne	.Lpk_stranger
	movl	VS_DST_PORT(%r12), %ecx
	cmpl	vs_local_port(%rip), %ecx
	jne	.Lpk_stranger
	/* Accept: the requester becomes the peer. */
	movq	VS_SRC_CID(%r12), %rax
	movq	%rax, vs_peer_cid(%rip)
	movl	VS_SRC_PORT(%r12), %eax
	movl	%eax, vs_peer_port(%rip)
	movl	VS_BUF_ALLOC(%r12), %eax
	movl	%eax, c_peer_buf_alloc(%rip)
	movl	VS_FWD_CNT(%r12), %eax
	movl	%eax, c_peer_fwd_cnt(%rip)
	movl	$ST_CONNECTED, c_state(%rip)
	movl	$VS_OP_RESPONSE, %edi
	xorl	%esi, %esi
	xorl	%edx, %edx
	xorl	%ecx, %ecx
	call	c_send
	call	line_begin
	PUTS	"VSOCK-ACCEPT peer_cid="
	movq	vs_peer_cid(%rip), %rdi
	call	put_dec
	PUTS	" peer_port="
	movl	vs_peer_port(%rip), %edi
	call	put_dec
	call	line_end
	jmp	.Lpk_out
.Lpk_stranger:
	cmpw	$VS_OP_RST, VS_OP(%r12)
	je	.Lpk_out
	movq	%r12, %rdi
	call	vs_reply_rst
	jmp	.Lpk_out
.Lpk_ours:
	movl	VS_BUF_ALLOC(%r12), %eax
	movl	%eax, c_peer_buf_alloc(%rip)
	movl	VS_FWD_CNT(%r12), %eax
	movl	%eax, c_peer_fwd_cnt(%rip)
	movl	$0, c_credit_req(%rip)
	movzwl	VS_OP(%r12), %eax
	cmpl	$VS_OP_RESPONSE, %eax
	jne	3f
	cmpl	$ST_CONNECTING, c_state(%rip)
	jne	.Lpk_out
	movl	$ST_CONNECTED, c_state(%rip)
	jmp	.Lpk_out
3:	cmpl	$VS_OP_RW, %eax
	jne	4f
	cmpl	$ST_CONNECTED, c_state(%rip)
	jb	.Lpk_out
	movq	%r13, %rdi
	movl	%ebx, %esi
	call	c_deliver
	jmp	.Lpk_out
4:	cmpl	$VS_OP_CREDIT_REQUEST, %eax
	jne	5f
	movl	$VS_OP_CREDIT_UPDATE, %edi
	xorl	%esi, %esi
	xorl	%edx, %edx
	xorl	%ecx, %ecx
	call	c_send
	jmp	.Lpk_out
5:	cmpl	$VS_OP_SHUTDOWN, %eax
	jne	6f
	movl	VS_FLAGS(%r12), %eax
	andl	$(VS_SHUTDOWN_RCV + VS_SHUTDOWN_SEND), %eax
	orl	%eax, c_peer_shutdown(%rip)
	jmp	.Lpk_out
6:	cmpl	$VS_OP_RST, %eax
	jne	.Lpk_out			/* CREDIT_UPDATE: the credit is taken above */
	movl	$1, c_peer_rst(%rip)
	movl	$ST_CLOSED, c_state(%rip)
.Lpk_out:
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/*
 * c_poll() -> eax = packets and events handled. Events (a transport
 * reset ends the connection), used tx buffers, then every received packet;
 * one rx notify for all.
 */
c_poll:
	pushq	%rbx
	xorl	%ebx, %ebx
	call	vs_events
	testl	%eax, %eax
	jz	1f
	incl	%ebx
	call	line_begin
	PUTS	"VSOCK-EVENT transport_reset"
	call	line_end
	movl	$1, c_peer_rst(%rip)
	movl	$ST_CLOSED, c_state(%rip)
1:	call	vs_tx_reclaim
2:	call	vs_rx_poll
	cmpl	$VQ_TIMEOUT, %eax
	je	4f
	testl	%eax, %eax
	jns	3f
	leaq	msg_bad_id(%rip), %rdi
	call	vs_fail_line
	movl	$1, c_done(%rip)
	jmp	5f
3:	pushq	%rax
	movl	%eax, %edi
	movl	%edx, %esi
	call	c_packet
	popq	%rdi
	call	vs_rx_requeue
	incl	%ebx
	jmp	2b
4:	testl	%ebx, %ebx
	jz	5f
	movl	$VS_RXQ, %edi
	call	vq_notify
5:	movl	%ebx, %eax
	popq	%rbx
	ret

/* c_credit_update(): a CREDIT_UPDATE once VS_BUF / 4 consumed bytes are unannounced. */
c_credit_update:
	cmpl	$ST_CONNECTED, c_state(%rip)
	jb	1f
	cmpl	$ST_CLOSING, c_state(%rip)
	ja	1f
	movl	vs_fwd_cnt(%rip), %eax
	subl	vs_announced(%rip), %eax
	cmpl	$(VS_BUF / 4), %eax
	jb	1f
	movl	$VS_OP_CREDIT_UPDATE, %edi
	xorl	%esi, %esi
	xorl	%edx, %edx
	xorl	%ecx, %ecx
	jmp	c_send
1:	ret

/* c_close(): SHUTDOWN with RCV|SEND, then wait CLOSE_WAIT_MS for the peer's RST (ST_CLOSING). */
c_close:
	movl	$ST_CLOSING, c_state(%rip)
	movl	$CLOSE_WAIT_MS, %edi
	call	tsc_deadline
	movq	%rax, c_deadline(%rip)
	movl	$VS_OP_SHUTDOWN, %edi
	movl	$(VS_SHUTDOWN_RCV + VS_SHUTDOWN_SEND), %esi
	xorl	%edx, %edx
	xorl	%ecx, %ecx
	jmp	c_send

/* c_closing(): in ST_CLOSING, done on the peer's RST or, after an RST of ours, at the deadline. */
c_closing:
	cmpl	$0, c_peer_rst(%rip)
	jne	1f
	movq	c_deadline(%rip), %rdi
	call	tsc_passed
	testl	%eax, %eax
	jz	2f
	call	c_reset
1:	movl	$1, c_done(%rip)
2:	ret

/* c_reset(): send RST, ST_CLOSED. */
c_reset:
	movl	$ST_CLOSED, c_state(%rip)
	movl	$VS_OP_RST, %edi
	xorl	%esi, %esi
	xorl	%edx, %edx
	xorl	%ecx, %ecx
	jmp	c_send

/*
 * c_run(step: rdi) -> eax = 0 when c_done, 1 after VSOCK-STOPPED ('q').
 * Poll, then step (the scenario's state machine), then the credit update,
 * over and over.
 */
c_run:
	pushq	%rbx
	pushq	%r12
	movq	%rdi, %r12
	xorl	%ebx, %ebx			/* idle rounds */
1:	call	c_poll
	movl	%eax, %ecx
	cmpl	$0, c_done(%rip)
	jne	3f
	pushq	%rcx
	call	*%r12
	popq	%rcx
	cmpl	$0, c_done(%rip)
	jne	3f
	pushq	%rcx
	call	c_credit_update
	popq	%rcx
	testl	%ecx, %ecx
	jz	2f
	xorl	%ebx, %ebx
	jmp	1b
2:	pause
	incl	%ebx
	testl	$(SERIAL_EVERY - 1), %ebx
	jnz	1b
	call	serial_got_stop
	testl	%eax, %eax
	jz	1b
	call	line_begin
	PUTS	"VSOCK-STOPPED"
	call	line_end
	movl	$1, %eax
	jmp	4f
3:	xorl	%eax, %eax
4:	popq	%r12
	popq	%rbx
	ret

/* c_init(mode: edi): a fresh connection. */
c_init:
	leaq	c_vars(%rip), %rax
	movl	$(c_vars_end - c_vars), %ecx
1:	movb	$0, (%rax)
	incq	%rax
	decl	%ecx
	jnz	1b
	movl	%edi, c_mode(%rip)
	movl	$0, vs_fwd_cnt(%rip)
	movl	$0, vs_announced(%rip)
	ret

/* ---------------------------------------------------------------- */
/* vsock-echo.                                                        */

/* c_echo_out(): send what the ring holds, within the peer's credit. */
c_echo_out:
	pushq	%rbx
1:	movl	c_head(%rip), %ebx
	subl	c_tail(%rip), %ebx		/* bytes held */
	jz	3f
	testl	$VS_SHUTDOWN_RCV, c_peer_shutdown(%rip)
	jz	2f
	addl	%ebx, vs_fwd_cnt(%rip)		/* the peer takes no more: drop them */
	addl	%ebx, c_tail(%rip)
	jmp	3f
2:	call	c_credit
	testl	%eax, %eax
	jnz	4f
	call	c_request_credit
	jmp	3f
4:	cmpl	%eax, %ebx
	cmova	%eax, %ebx
	movl	$VS_PAYLOAD, %eax
	cmpl	%eax, %ebx
	cmova	%eax, %ebx
	movl	c_tail(%rip), %edx
	andl	$(VS_BUF - 1), %edx		/* pos */
	movl	$VS_BUF, %eax
	subl	%edx, %eax			/* up to the ring's end */
	cmpl	%eax, %ebx
	cmova	%eax, %ebx
	addl	%ebx, vs_fwd_cnt(%rip)		/* consumed: the packet announces it */
	addl	%ebx, c_tail(%rip)
	addq	vs_ring(%rip), %rdx
	movl	$VS_OP_RW, %edi
	xorl	%esi, %esi
	movl	%ebx, %ecx
	call	c_send
	testl	%eax, %eax
	jnz	3f
	addl	%ebx, c_tx_cnt(%rip)
	jmp	1b
3:	popq	%rbx
	ret

/* c_echo_step(): the echo state machine, once per c_run round. */
c_echo_step:
	movl	c_state(%rip), %eax
	cmpl	$ST_CLOSED, %eax
	jne	1f
	cmpl	$END_NONE, c_end(%rip)
	jne	5f
	movl	$END_RESET, c_end(%rip)
5:	movl	$1, c_done(%rip)
	ret
1:	cmpl	$ST_CLOSING, %eax
	je	c_closing
	cmpl	$ST_CONNECTED, %eax
	jne	4f
	call	c_echo_out
	movl	c_peer_shutdown(%rip), %eax
	testl	$VS_SHUTDOWN_SEND, %eax
	jz	4f
	movl	c_head(%rip), %ecx
	cmpl	c_tail(%rip), %ecx
	jne	4f				/* echo the rest first */
	movl	$END_SHUTDOWN, c_end(%rip)
	cmpl	$(VS_SHUTDOWN_RCV + VS_SHUTDOWN_SEND), %eax
	jne	c_close
	call	c_reset				/* shut down both ways: answer with RST */
	movl	$1, c_done(%rip)
4:	ret

/*
 * vsock-echo: listen on hearth.port (default 5000), accept the first
 * REQUEST for it with RESPONSE, echo every byte back until the peer shuts
 * down (or resets):
 *   hearth-guest: VSOCK-LISTEN cid=<guest_cid> port=<port>
 *   hearth-guest: VSOCK-ACCEPT peer_cid=<cid> peer_port=<port>
 *   hearth-guest: VSOCK-ECHO bytes=<echoed> received=<n> end=<shutdown|reset> violations=<n> bad=<n>
 */
	.globl	scenario_vsock_echo
scenario_vsock_echo:
	call	vs_setup
	testl	%eax, %eax
	jnz	9f
	movl	$MODE_ECHO, %edi
	call	c_init
	leaq	key_port(%rip), %rdi
	movl	$PORT_DEFAULT, %esi
	call	cmdline_get_num
	movl	%eax, vs_local_port(%rip)
	movl	$ST_LISTEN, c_state(%rip)
	call	line_begin
	PUTS	"VSOCK-LISTEN cid="
	movq	vs_cid(%rip), %rdi
	call	put_dec
	PUTS	" port="
	movl	vs_local_port(%rip), %edi
	call	put_dec
	call	line_end
	leaq	c_echo_step(%rip), %rdi
	call	c_run
	testl	%eax, %eax
	jnz	9f
	call	line_begin
	PUTS	"VSOCK-ECHO bytes="
	movl	c_tx_cnt(%rip), %edi
	call	put_dec
	PUTS	" received="
	movl	c_rx_cnt(%rip), %edi
	call	put_dec
	PUTS	" end="
	cmpl	$END_SHUTDOWN, c_end(%rip)
	jne	1f
	PUTS	"shutdown"
	jmp	2f
1:	PUTS	"reset"
2:	call	c_put_counts
	call	line_end
9:	ret

/* c_put_counts(): " violations=<n> bad=<n>" inside a line. */
c_put_counts:
	PUTS	" violations="
	movl	c_violations(%rip), %edi
	call	put_dec
	PUTS	" bad="
	movl	c_bad(%rip), %edi
	jmp	put_dec

	.globl	c_init, c_run, c_send, c_credit, c_request_credit, c_close, c_closing, c_reset, c_put_counts

	.section .rodata
key_port:	.asciz	"hearth.port"
msg_bad_id:	.asciz	"rx bad_id"

	.data
	.balign	8
	.globl	c_state, c_done, c_tx_cnt, c_rx_cnt, c_peer_shutdown, c_peer_rst
	.globl	c_deadline, c_reply, c_reply_len, c_reply_done, c_credit_req
c_vars:
c_deadline:	.quad	0
c_state:	.long	0
c_mode:		.long	0
c_done:		.long	0
c_end:		.long	0
c_peer_shutdown: .long	0		/* VS_SHUTDOWN_* the peer announced */
c_peer_rst:	.long	0
c_peer_buf_alloc: .long	0
c_peer_fwd_cnt:	.long	0
c_tx_cnt:	.long	0		/* payload bytes sent */
c_rx_cnt:	.long	0		/* payload bytes accepted */
c_credit_req:	.long	0		/* a CREDIT_REQUEST is outstanding */
c_violations:	.long	0
c_bad:		.long	0
c_head:		.long	0		/* ring write position (free-running) */
c_tail:		.long	0		/* ring read position */
c_reply_len:	.long	0
c_reply_done:	.long	0
c_reply:	.skip	REPLY_MAX
c_vars_end:
