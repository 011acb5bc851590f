/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: the vsock-connect scenario, a client on the vsock
 * connection of vsock_conn.S: connect to the host (CID 2), send one line,
 * read one line back, close.
 */
#include "guest.h"
#include "virtio.h"
#include "vsock.h"

#define ST_CONNECTING			1
#define ST_CONNECTED			2
#define ST_CLOSING			3
#define ST_CLOSED			4
#define MODE_CONNECT			1
#define PORT_DEFAULT			5000
#define LOCAL_PORT_DEFAULT		49152
#define CONNECT_WAIT_MS			5000
#define REPLY_WAIT_MS			10000

	.text
	.code64

/* c_result(what: rdi): hearth-guest: VSOCK-CONNECT <what>, once. */
c_result:
	cmpl	$0, k_printed(%rip)
	jne	1f
	movl	$1, k_printed(%rip)
	pushq	%rdi
	call	line_begin
	PUTS	"VSOCK-CONNECT "
	popq	%rdi
	call	puts
	call	line_end
1:	ret

/* c_reply_line(): hearth-guest: VSOCK-CONNECT reply=<text> (bytes outside ' '..'~' as '?'), once. */
c_reply_line:
	cmpl	$0, k_printed(%rip)
	jne	4f
	movl	$1, k_printed(%rip)
	pushq	%rbx
	call	line_begin
	PUTS	"VSOCK-CONNECT reply="
	movl	c_reply_len(%rip), %eax		/* a trailing '\r' is not shown */
	testl	%eax, %eax
	jz	1f
	leaq	c_reply(%rip), %rcx
	cmpb	$0x0d, -1(%rcx, %rax)
	jne	1f
	decl	c_reply_len(%rip)
1:	xorl	%ebx, %ebx
2:	cmpl	c_reply_len(%rip), %ebx
	jae	3f
	leaq	c_reply(%rip), %rax
	movzbl	(%rax, %rbx), %edi
	leal	-0x20(%rdi), %eax
	cmpl	$(0x7e - 0x20), %eax
	jbe	5f
	movl	$0x3f, %edi			/* '?' */
5:	call	putc
	incl	%ebx
	jmp	2b
3:	call	line_end
	popq	%rbx
4:	ret

/* k_step(): the client's state machine, once per c_run round. */
k_step:
	movl	c_state(%rip), %eax
	cmpl	$ST_CLOSED, %eax
	jne	1f
	leaq	res_reset(%rip), %rdi		/* the peer reset us (or the transport did) */
	call	c_result
	movl	$1, c_done(%rip)
	ret
1:	cmpl	$ST_CLOSING, %eax
	je	c_closing
	cmpl	$ST_CONNECTING, %eax
	jne	2f
	movq	c_deadline(%rip), %rdi
	call	tsc_passed
	testl	%eax, %eax
	jz	9f
	leaq	res_timeout(%rip), %rdi
	call	c_result
	call	c_reset
	movl	$1, c_done(%rip)
	ret
2:	cmpl	$0, k_line_sent(%rip)		/* connected */
	jne	4f
	call	c_credit
	cmpl	$(hello_end - hello), %eax
	jae	3f
	jmp	c_request_credit
3:	movl	$VS_OP_RW, %edi
	xorl	%esi, %esi
	leaq	hello(%rip), %rdx
	movl	$(hello_end - hello), %ecx
	call	c_send
	testl	%eax, %eax
	jnz	9f
	addl	$(hello_end - hello), c_tx_cnt(%rip)
	movl	$1, k_line_sent(%rip)
	movl	$REPLY_WAIT_MS, %edi
	call	tsc_deadline
	movq	%rax, c_deadline(%rip)
	ret
4:	cmpl	$0, c_reply_done(%rip)
	je	5f
	call	c_reply_line
	jmp	c_close
5:	testl	$VS_SHUTDOWN_SEND, c_peer_shutdown(%rip)
	jz	6f
	leaq	res_shutdown(%rip), %rdi	/* no more data, and no whole line */
	call	c_result
	jmp	c_close
6:	movq	c_deadline(%rip), %rdi
	call	tsc_passed
	testl	%eax, %eax
	jz	9f
	leaq	res_no_reply(%rip), %rdi
	call	c_result
	jmp	c_close
9:	ret

/*
 * vsock-connect: from guest_cid:hearth.local_port (default 49152) to CID 2
 * port hearth.port (default 5000): REQUEST; on RESPONSE send the line
 * "hello from hearth-guest\n"; read the reply up to its '\n' (at most 200
 * bytes kept); then SHUTDOWN and close.
 *   hearth-guest: VSOCK-CONNECTING cid=<guest_cid> local_port=<n> port=<n>
 *   hearth-guest: VSOCK-CONNECT reply=<the reply line, without its newline>
 * or VSOCK-CONNECT error=<reset|timeout|shutdown|no-reply> (no RESPONSE in
 * 5 s: timeout; no whole line within 10 s of sending: no-reply).
 */
	.globl	scenario_vsock_connect
scenario_vsock_connect:
	call	vs_setup
	testl	%eax, %eax
	jnz	9f
	movl	$MODE_CONNECT, %edi
	call	c_init
	movl	$0, k_printed(%rip)
	movl	$0, k_line_sent(%rip)
	movq	$VS_HOST_CID, vs_peer_cid(%rip)
	leaq	key_port(%rip), %rdi
	movl	$PORT_DEFAULT, %esi
	call	cmdline_get_num
	movl	%eax, vs_peer_port(%rip)
	leaq	key_local_port(%rip), %rdi
	movl	$LOCAL_PORT_DEFAULT, %esi
	call	cmdline_get_num
	movl	%eax, vs_local_port(%rip)
	call	line_begin
	PUTS	"VSOCK-CONNECTING cid="
	movq	vs_cid(%rip), %rdi
	call	put_dec
	PUTS	" local_port="
	movl	vs_local_port(%rip), %edi
	call	put_dec
	PUTS	" port="
	movl	vs_peer_port(%rip), %edi
	call	put_dec
	call	line_end
	movl	$ST_CONNECTING, c_state(%rip)
	movl	$CONNECT_WAIT_MS, %edi
	call	tsc_deadline
	movq	%rax, c_deadline(%rip)
	movl	$VS_OP_REQUEST, %edi
	xorl	%esi, %esi
	xorl	%edx, %edx
	xorl	%ecx, %ecx
	call	c_send
	testl	%eax, %eax
	jnz	9f
	leaq	k_step(%rip), %rdi
	call	c_run
9:	ret

	.section .rodata
key_port:	.asciz	"hearth.port"
key_local_port:	.asciz	"hearth.local_port"
hello:		.ascii	"hello from hearth-guest\n"
hello_end:
res_reset:	.asciz	"error=reset"
res_timeout:	.asciz	"error=timeout"
res_shutdown:	.asciz	"error=shutdown"
res_no_reply:	.asciz	"error=no-reply"

	.data
	.balign	4
k_printed:	.long	0
k_line_sent:	.long	0
