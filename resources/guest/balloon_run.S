/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: the balloon scenarios on the balloon driver
 * (balloon.S): balloon, mem-grow, mem-idle and bad-virtio, and the guest's
 * own use of memory (the bottom used_bytes of the pool) that mem-grow and
 * mem-idle grow into the balloon.
 */
#include "guest.h"
#include "virtio.h"
#include "balloon.h"

/* Defaults of the command line parameters. */
#define POLL_ITERS_DEFAULT		25000		/* ~10 ms at ~390 ns per iteration */
#define MEM_START_MIB_GROW		16
#define MEM_START_MIB_IDLE		8
#define MEM_STEP_MIB_DEFAULT		16
#define MEM_MAX_MIB_DEFAULT		128
#define MEM_STEP_ITERS_DEFAULT		1250000		/* ~0.5 s of poll delay */
#define RESET_WAIT_MS			2000		/* bad-virtio: for NEEDS_RESET */

#define MODE_BALLOON			0
#define MODE_IDLE			1
#define MODE_GROW			2

	.text
	.code64

/* mem_touch(from: rdi, to: rsi): write a byte into every 4 KiB page. */
mem_touch:
1:	cmpq	%rsi, %rdi
	jae	2f
	movb	$0x5a, (%rdi)
	addq	$PAGE_SIZE, %rdi
	jmp	1b
2:	ret

/*
 * mem_set_used(new: rdi) -> eax = 0, or 1 after a FAIL line.
 * Grow the used range to new bytes (new <= pool size): first deflate the
 * balloon pages it would overlap (deflate-on-oom), then touch the new pages.
 */
mem_set_used:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	pushq	%r14
	movq	%rdi, %rbx
	movq	balloon_pages(%rip), %rax
	shlq	$12, %rax
	movq	pool_hi(%rip), %rcx
	subq	%rax, %rcx			/* bottom of the balloon */
	movq	pool_lo(%rip), %rax
	addq	%rbx, %rax			/* end of the new used range */
	subq	%rcx, %rax
	jbe	3f
	addq	$(PAGE_SIZE - 1), %rax
	shrq	$12, %rax
	movq	%rax, %r12			/* pages to take back */
	movq	%rax, %r13			/* still to deflate */
1:	testq	%r13, %r13
	jz	2f
	movq	%r13, %r14
	cmpq	$PFNS_PER_BUFFER, %r14
	jbe	4f
	movl	$PFNS_PER_BUFFER, %r14d
4:	movl	$1, %edi
	movq	%r14, %rsi
	call	balloon_move
	testl	%eax, %eax
	jnz	.Lmsu_out
	subq	%r14, %r13
	jmp	1b
2:	call	line_begin
	PUTS	"balloon deflate-on-oom pages="
	movq	%r12, %rdi
	call	put_dec
	call	line_end
	call	print_target_line
3:	movq	pool_lo(%rip), %rdi
	movq	%rdi, %rsi
	addq	used_bytes(%rip), %rdi
	addq	%rbx, %rsi
	call	mem_touch
	movq	%rbx, used_bytes(%rip)
	call	line_begin
	PUTS	"mem used_mib="
	movq	used_bytes(%rip), %rdi
	shrq	$20, %rdi
	call	put_dec
	call	line_end
	xorl	%eax, %eax
.Lmsu_out:
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/* mem_grow_step() -> eax: grow used_bytes by mem_step_bytes, up to mem_max_bytes and the pool. */
mem_grow_step:
	movq	used_bytes(%rip), %rdi
	movq	mem_max_bytes(%rip), %rcx
	cmpq	%rcx, %rdi
	jae	1f
	addq	mem_step_bytes(%rip), %rdi
	cmpq	%rcx, %rdi
	cmova	%rcx, %rdi
	call	pool_bytes
	cmpq	%rax, %rdi
	cmova	%rax, %rdi
	cmpq	used_bytes(%rip), %rdi
	jbe	1f
	jmp	mem_set_used
1:	xorl	%eax, %eax
	ret

/* balloon_stop(): hearth-guest: BALLOON STOPPED, then reset. */
balloon_stop:
	call	line_begin
	PUTS	"BALLOON STOPPED"
	call	line_end
	jmp	guest_reset

	.globl	scenario_balloon, scenario_mem_grow, scenario_mem_idle, scenario_bad_virtio
scenario_balloon:
	movl	$MODE_BALLOON, %edi
	jmp	balloon_run
scenario_mem_idle:
	movl	$MODE_IDLE, %edi
	jmp	balloon_run
scenario_mem_grow:
	movl	$MODE_GROW, %edi
	jmp	balloon_run

/*
 * balloon_run(mode: edi): the balloon, mem-idle and mem-grow scenarios.
 * Returns (and the guest resets) only after a FAIL line.
 */
balloon_run:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	movl	%edi, %ebp
	call	pool_init
	call	vb_setup
	testl	%eax, %eax
	jnz	.Lbr_out

	call	line_begin
	PUTS	"balloon pool="
	movq	pool_lo(%rip), %rdi
	call	put_hex
	PUTS	"-"
	movq	pool_hi(%rip), %rdi
	call	put_hex
	PUTS	" pages="
	call	pool_bytes
	shrq	$12, %rax
	movq	%rax, %rdi
	call	put_dec
	PUTS	" queue_size="
	xorl	%edi, %edi
	call	vq_size
	movl	%eax, %edi
	call	put_dec
	call	line_end

	leaq	key_poll_iters(%rip), %rdi
	movl	$POLL_ITERS_DEFAULT, %esi
	call	cmdline_get_dec
	movq	%rax, %r12			/* poll delay */

	cmpl	$MODE_BALLOON, %ebp
	je	.Lbr_report
	leaq	key_step_mib(%rip), %rdi
	movl	$MEM_STEP_MIB_DEFAULT, %esi
	call	cmdline_get_dec
	shlq	$20, %rax
	movq	%rax, mem_step_bytes(%rip)
	leaq	key_max_mib(%rip), %rdi
	movl	$MEM_MAX_MIB_DEFAULT, %esi
	call	cmdline_get_dec
	shlq	$20, %rax
	movq	%rax, mem_max_bytes(%rip)
	leaq	key_step_iters(%rip), %rdi
	movl	$MEM_STEP_ITERS_DEFAULT, %esi
	call	cmdline_get_dec
	movq	%rax, %r13			/* step period */
	movq	%rax, grow_countdown(%rip)
	leaq	key_start_mib(%rip), %rdi
	movl	$MEM_START_MIB_GROW, %esi
	movl	$MEM_START_MIB_IDLE, %eax
	cmpl	$MODE_IDLE, %ebp
	cmove	%eax, %esi
	call	cmdline_get_dec
	shlq	$20, %rax
	movq	%rax, %rbx
	call	pool_bytes
	cmpq	%rax, %rbx
	cmova	%rax, %rbx
	movq	%rbx, %rdi
	call	mem_set_used
	testl	%eax, %eax
	jnz	.Lbr_out

.Lbr_report:
	call	balloon_report
	testl	%eax, %eax
	jnz	.Lbr_out

.Lbr_loop:
	call	serial_got_stop
	testl	%eax, %eax
	jnz	balloon_stop
	/* Acknowledge whatever the device signalled; we poll anyway. */
	call	vio_ack_interrupts
	call	vio_status
	testl	$VIRTIO_S_NEEDS_RESET, %eax
	jnz	.Lbr_needs_reset
	call	balloon_adjust
	testl	%eax, %eax
	jnz	.Lbr_out
	call	stats_service
	cmpl	$MODE_GROW, %ebp
	jne	2f
	subq	%r12, grow_countdown(%rip)
	jg	2f
	movq	%r13, grow_countdown(%rip)
	call	mem_grow_step
	testl	%eax, %eax
	jnz	.Lbr_out
2:	movq	%r12, %rdi
	call	delay
	jmp	.Lbr_loop

.Lbr_needs_reset:
	movl	%eax, %ebx
	call	line_begin
	PUTS	"BALLOON FAIL device needs reset status="
	movl	%ebx, %edi
	call	put_hex
	call	line_end
.Lbr_out:
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

/*
 * bad-virtio: initialise the device, post one malformed buffer on the
 * inflate queue (hearth.bad=oob|loop|len|dir, default oob), notify, and
 * watch the status for DEVICE_NEEDS_RESET.
 *   hearth-guest: bad-virtio kind=<kind>
 *   hearth-guest: virtio status=0x<status>
 *   hearth-guest: NEEDS_RESET seen | NEEDS_RESET not seen
 * then idles until 'q' (BALLOON STOPPED).
 */
scenario_bad_virtio:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	call	pool_init
	call	vb_setup
	testl	%eax, %eax
	jnz	.Lbad_out
	leaq	key_bad(%rip), %rdi
	call	cmdline_get
	testq	%rax, %rax
	jnz	1f
	leaq	bad_default(%rip), %rax
	movl	$3, %edx
1:	movq	%rax, %r12			/* kind */
	movq	%rdx, %r13			/* its length */
	leaq	bad_kinds(%rip), %rbx
2:	movq	(%rbx), %rdi
	testq	%rdi, %rdi
	jz	.Lbad_unknown
	movq	%r12, %rsi
	movq	%r13, %rdx
	call	name_equals
	testl	%eax, %eax
	jnz	3f
	addq	$24, %rbx
	jmp	2b
3:	call	line_begin
	PUTS	"bad-virtio kind="
	movq	%r12, %rdi
	movq	%r13, %rsi
	call	putsn
	call	line_end
	/* A real PFN (the top page of the pool) in case the device takes the buffer anyway. */
	movq	pool_hi(%rip), %rax
	shrq	$12, %rax
	decl	%eax
	movl	%eax, pfn_buf(%rip)
	movq	8(%rbx), %rsi			/* address; 0 means pfn_buf */
	testq	%rsi, %rsi
	jnz	4f
	leaq	pfn_buf(%rip), %rsi
4:	movl	$VQ_INFLATE, %edi
	movl	16(%rbx), %edx
	movl	20(%rbx), %ecx
	call	vq_post
	/* Watch Status for NEEDS_RESET, for at least RESET_WAIT_MS. */
	movl	$RESET_WAIT_MS, %edi
	call	vio_wait_needs_reset
	movl	%eax, %r12d
	call	line_begin
	PUTS	"virtio status="
	movl	%r12d, %edi
	call	put_hex
	call	line_end
	call	line_begin
	testl	$VIRTIO_S_NEEDS_RESET, %r12d
	jz	7f
	PUTS	"NEEDS_RESET seen"
	jmp	8f
7:	PUTS	"NEEDS_RESET not seen"
8:	call	line_end
9:	call	serial_got_stop
	testl	%eax, %eax
	jnz	balloon_stop
	movl	$POLL_ITERS_DEFAULT, %edi
	call	delay
	jmp	9b
.Lbad_unknown:
	call	line_begin
	PUTS	"BALLOON FAIL unknown hearth.bad="
	movq	%r12, %rdi
	movq	%r13, %rsi
	call	putsn
	call	line_end
.Lbad_out:
	popq	%r13
	popq	%r12
	popq	%rbx
	ret


	.section .rodata
key_poll_iters:		.asciz	"hearth.balloon_poll_iters"
key_start_mib:		.asciz	"hearth.mem_start_mib"
key_step_mib:		.asciz	"hearth.mem_step_mib"
key_max_mib:		.asciz	"hearth.mem_max_mib"
key_step_iters:		.asciz	"hearth.mem_step_iters"
key_bad:		.asciz	"hearth.bad"
bad_default:		.asciz	"oob"
bad_name_loop:		.asciz	"loop"
bad_name_len:		.asciz	"len"
bad_name_dir:		.asciz	"dir"

	.balign	8
/* bad-virtio kinds: name, buffer address (0: pfn_buf), length, flags. */
bad_kinds:
	.quad	bad_default, 0xf000000000
	.long	4, 0
	.quad	bad_name_loop, 0
	.long	4, VRING_DESC_F_NEXT
	.quad	bad_name_len, 0
	.long	0x7fffffff, 0
	.quad	bad_name_dir, 0
	.long	4, VRING_DESC_F_WRITE
	.quad	0, 0
	.long	0, 0

	.data
	.balign	8
mem_step_bytes:	.quad	0
mem_max_bytes:	.quad	0
grow_countdown:	.quad	0
