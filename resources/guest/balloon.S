/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: a polling virtio-mmio balloon driver (virtio 1.x,
 * modern MMIO transport, split virtqueues) and the scenarios built on it:
 * balloon, mem-grow, mem-idle and bad-virtio.
 *
 * The device is found through the kernel command line tokens
 * virtio_mmio.device=<size>@<base>:<irq> (as Linux reads them); the first
 * one whose MagicValue is "virt" and DeviceID is 5 is used. Interrupts stay
 * off: the driver polls the used rings and the config space, and
 * acknowledges InterruptStatus as it goes so a level-style device can drop
 * its line.
 *
 * Memory: the pool is the largest RAM region of the memory map, clipped to
 * [max(2 MiB, end of .bss), 4 GiB). The balloon always holds the top
 * balloon_pages pages of the pool; the guest's own "allocation" (mem-grow,
 * mem-idle) is the bottom used_bytes of the pool. The two never overlap.
 *
 * Each virtqueue has one 4 KiB page in .bss (descriptor table at +0, avail
 * ring at +0x400, used ring at +0x800, queue size <= 64) and at most one
 * buffer in flight, always descriptor 0.
 */
#include "guest.h"

/* virtio-mmio registers (virtio 1.x, 4.2.2). */
#define VIRTIO_MMIO_MAGIC_VALUE		0x000
#define VIRTIO_MMIO_VERSION		0x004
#define VIRTIO_MMIO_DEVICE_ID		0x008
#define VIRTIO_MMIO_DEVICE_FEATURES	0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL	0x014
#define VIRTIO_MMIO_DRIVER_FEATURES	0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL	0x024
#define VIRTIO_MMIO_QUEUE_SEL		0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX	0x034
#define VIRTIO_MMIO_QUEUE_NUM		0x038
#define VIRTIO_MMIO_QUEUE_READY		0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY	0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS	0x060
#define VIRTIO_MMIO_INTERRUPT_ACK	0x064
#define VIRTIO_MMIO_STATUS		0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW	0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH	0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW	0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH	0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW	0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH	0x0a4
#define VIRTIO_MMIO_CONFIG		0x100

#define VIRTIO_MMIO_MAGIC		0x74726976	/* "virt" */
#define VIRTIO_ID_BALLOON		5

/* Device status bits. */
#define VIRTIO_S_ACKNOWLEDGE		1
#define VIRTIO_S_DRIVER			2
#define VIRTIO_S_DRIVER_OK		4
#define VIRTIO_S_FEATURES_OK		8
#define VIRTIO_S_NEEDS_RESET		64
#define VIRTIO_S_FAILED			128

/* Balloon features (5.5.3) and the ones this driver accepts. */
#define VIRTIO_BALLOON_F_STATS_VQ	(1 << 1)
#define VIRTIO_BALLOON_F_DEFLATE_ON_OOM	(1 << 2)
#define VIRTIO_BALLOON_F_PAGE_REPORTING	(1 << 5)
#define VIRTIO_F_VERSION_1_HIGH		(1 << 0)	/* bit 32: bit 0 of the high word */
#define BALLOON_WANTED_LOW		(VIRTIO_BALLOON_F_STATS_VQ + VIRTIO_BALLOON_F_DEFLATE_ON_OOM + VIRTIO_BALLOON_F_PAGE_REPORTING)
#define BALLOON_WANTED_HIGH		VIRTIO_F_VERSION_1_HIGH

/* Balloon config space (5.5.4). */
#define BALLOON_CFG_NUM_PAGES		(VIRTIO_MMIO_CONFIG + 0)
#define BALLOON_CFG_ACTUAL		(VIRTIO_MMIO_CONFIG + 4)

/* Queues. */
#define VQ_INFLATE			0
#define VQ_DEFLATE			1
#define VQ_STATS			2
#define VQ_COUNT			4		/* at most: inflate, deflate, stats, reporting */
#define REPORT_CHUNK			0x400000	/* 4 MiB per reported buffer */
#define VQ_SIZE				64		/* largest queue size used */
#define VQ_AVAIL_OFF			0x400
#define VQ_USED_OFF			0x800
#define VRING_DESC_F_NEXT		1
#define VRING_DESC_F_WRITE		2

/* Stats (5.5.6.3): 10-byte entries {u16 tag; u64 val}. */
#define VIRTIO_BALLOON_S_MEMFREE	4
#define VIRTIO_BALLOON_S_MEMTOT		5
#define VIRTIO_BALLOON_S_AVAIL		6
#define STATS_ENTRIES			3
#define STATS_LEN			(STATS_ENTRIES * 10)

#define PAGE_SIZE			4096
#define PFNS_PER_BUFFER			256
#define POOL_FLOOR			0x200000	/* never balloon or use below 2 MiB */

/* Waits, in TSC ticks at the assumed maximum of 4 GHz (at least this long). */
#define VQ_WAIT_TICKS			(5000 * TSC_TICKS_PER_MS)	/* 5 s for a used buffer */
#define RESET_WAIT_TICKS		(2000 * TSC_TICKS_PER_MS)	/* 2 s for NEEDS_RESET */

/* Defaults of the command line parameters. */
#define POLL_ITERS_DEFAULT		25000		/* ~10 ms at ~390 ns per iteration */
#define MEM_START_MIB_GROW		16
#define MEM_START_MIB_IDLE		8
#define MEM_STEP_MIB_DEFAULT		16
#define MEM_MAX_MIB_DEFAULT		128
#define MEM_STEP_ITERS_DEFAULT		1250000		/* ~0.5 s of poll delay */

#define MODE_BALLOON			0
#define MODE_IDLE			1
#define MODE_GROW			2

#define UART_RBR			0
#define UART_LSR_DR			0x01
#define STOP_KEY			0x71		/* 'q' */

	.text
	.code64

/* ---------------------------------------------------------------- */
/* Register access and device discovery.                              */

/* vio_rd(off: edi) -> eax: a 32-bit read of register off of the device. */
vio_rd:
	movq	vb_base(%rip), %rax
	movl	%edi, %edi
	movl	(%rax, %rdi), %eax
	ret

/* vio_wr(off: edi, value: esi): a 32-bit write. */
vio_wr:
	movq	vb_base(%rip), %rax
	movl	%edi, %edi
	movl	%esi, (%rax, %rdi)
	ret

/*
 * parse_num(p: rdi) -> rax = value, rdx = first byte after it, ecx = digits
 * A decimal number, or hexadecimal after "0x"/"0X".
 */
parse_num:
	xorl	%eax, %eax
	xorl	%ecx, %ecx
	movq	%rdi, %rdx
	cmpb	$0x30, (%rdx)			/* '0' */
	jne	.Lpn_dec
	movzbl	1(%rdx), %r8d
	orl	$0x20, %r8d
	cmpl	$0x78, %r8d			/* 'x' */
	jne	.Lpn_dec
	addq	$2, %rdx
.Lpn_hex:
	movzbl	(%rdx), %r8d
	leal	-0x30(%r8), %r9d
	cmpl	$9, %r9d
	jbe	1f
	orl	$0x20, %r8d
	leal	-0x61(%r8), %r9d		/* 'a' */
	cmpl	$5, %r9d
	ja	.Lpn_done
	addl	$10, %r9d
1:	shlq	$4, %rax
	addq	%r9, %rax
	incl	%ecx
	incq	%rdx
	jmp	.Lpn_hex
.Lpn_dec:
	movzbl	(%rdx), %r8d
	subl	$0x30, %r8d
	cmpl	$9, %r8d
	ja	.Lpn_done
	imulq	$10, %rax, %rax
	addq	%r8, %rax
	incl	%ecx
	incq	%rdx
	jmp	.Lpn_dec
.Lpn_done:
	ret

/*
 * vio_find() -> rax
 * Walk the command line tokens virtio_mmio.device=<size>[KMG]@<base>:<irq>
 * and return the base of the first device below 4 GiB with the virtio
 * magic and DeviceID 5 (balloon), recording it in vb_base, vb_size and
 * vb_irq; 0 if there is none.
 */
vio_find:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	pushq	%r14
	leaq	cmdline_buf(%rip), %rbx
.Lvf_token:
	movzbl	(%rbx), %eax
	testl	%eax, %eax
	jz	.Lvf_none
	cmpl	$0x20, %eax
	je	.Lvf_ws
	cmpl	$0x09, %eax
	je	.Lvf_ws
	leaq	vio_key(%rip), %rsi
	movq	%rbx, %rdi
1:	movzbl	(%rsi), %ecx
	testl	%ecx, %ecx
	jz	.Lvf_match
	cmpb	(%rdi), %cl
	jne	.Lvf_skip
	incq	%rsi
	incq	%rdi
	jmp	1b
.Lvf_match:
	call	parse_num			/* size */
	testl	%ecx, %ecx
	jz	.Lvf_skip
	movq	%rax, %r12
	movzbl	(%rdx), %ecx
	orl	$0x20, %ecx
	cmpl	$0x6b, %ecx			/* 'k' */
	jne	2f
	shlq	$10, %r12
	incq	%rdx
	jmp	4f
2:	cmpl	$0x6d, %ecx			/* 'm' */
	jne	3f
	shlq	$20, %r12
	incq	%rdx
	jmp	4f
3:	cmpl	$0x67, %ecx			/* 'g' */
	jne	4f
	shlq	$30, %r12
	incq	%rdx
4:	cmpb	$0x40, (%rdx)			/* '@' */
	jne	.Lvf_skip
	leaq	1(%rdx), %rdi
	call	parse_num			/* base */
	testl	%ecx, %ecx
	jz	.Lvf_skip
	movq	%rax, %r13
	cmpb	$0x3a, (%rdx)			/* ':' */
	jne	.Lvf_skip
	leaq	1(%rdx), %rdi
	call	parse_num			/* irq */
	testl	%ecx, %ecx
	jz	.Lvf_skip
	movq	%rax, %r14
	/* Only what the guest maps: the registers must end below 4 GiB. */
	testq	%r13, %r13
	jz	.Lvf_skip
	testl	$3, %r13d
	jnz	.Lvf_skip
	leaq	(VIRTIO_MMIO_CONFIG + 8)(%r13), %rax
	movabsq	$0x100000000, %rcx
	cmpq	%rcx, %rax
	ja	.Lvf_skip
	cmpl	$VIRTIO_MMIO_MAGIC, VIRTIO_MMIO_MAGIC_VALUE(%r13)
	jne	.Lvf_skip
	cmpl	$VIRTIO_ID_BALLOON, VIRTIO_MMIO_DEVICE_ID(%r13)
	jne	.Lvf_skip
	movq	%r13, vb_base(%rip)
	movq	%r12, vb_size(%rip)
	movq	%r14, vb_irq(%rip)
	movq	%r13, %rax
	jmp	.Lvf_out
.Lvf_skip:
	movzbl	(%rbx), %eax
	testl	%eax, %eax
	jz	.Lvf_none
	cmpl	$0x20, %eax
	je	.Lvf_token
	cmpl	$0x09, %eax
	je	.Lvf_token
	incq	%rbx
	jmp	.Lvf_skip
.Lvf_ws:
	incq	%rbx
	jmp	.Lvf_token
.Lvf_none:
	xorl	%eax, %eax
.Lvf_out:
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/* ---------------------------------------------------------------- */
/* Split virtqueues: one page each, one buffer in flight (desc 0).    */

/* vq_page(q: edi) -> rax: the queue's page (descriptor table). */
vq_page:
	movl	%edi, %eax
	shlq	$12, %rax
	leaq	vq_area(%rip), %rcx
	addq	%rcx, %rax
	ret

/*
 * vq_setup(q: edi) -> eax = 0, or 1 if the device has no such queue (or it
 * is already live). Queue size: the largest power of two <= min(VQ_SIZE,
 * QueueNumMax).
 */
vq_setup:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	movl	%edi, %ebx
	movl	$VIRTIO_MMIO_QUEUE_SEL, %edi
	movl	%ebx, %esi
	call	vio_wr
	movl	$VIRTIO_MMIO_QUEUE_READY, %edi
	call	vio_rd
	testl	%eax, %eax
	jnz	.Lvqs_fail
	movl	$VIRTIO_MMIO_QUEUE_NUM_MAX, %edi
	call	vio_rd
	testl	%eax, %eax
	jz	.Lvqs_fail
	movl	$VQ_SIZE, %r12d
1:	cmpl	%eax, %r12d
	jbe	2f
	shrl	$1, %r12d
	jmp	1b
2:	movl	$VIRTIO_MMIO_QUEUE_NUM, %edi
	movl	%r12d, %esi
	call	vio_wr
	leaq	vq_num(%rip), %rax
	movl	%r12d, (%rax, %rbx, 4)
	leaq	vq_next_avail(%rip), %rax
	movl	$0, (%rax, %rbx, 4)
	leaq	vq_last_used(%rip), %rax
	movl	$0, (%rax, %rbx, 4)
	movl	%ebx, %edi
	call	vq_page
	movq	%rax, %r13
	movq	%rax, %rdi
	movl	$PAGE_SIZE, %ecx
	xorl	%eax, %eax
	rep stosb
	movl	$VIRTIO_MMIO_QUEUE_DESC_LOW, %edi
	movl	%r13d, %esi
	call	vio_wr
	movl	$VIRTIO_MMIO_QUEUE_DESC_HIGH, %edi
	movq	%r13, %rsi
	shrq	$32, %rsi
	call	vio_wr
	movl	$VIRTIO_MMIO_QUEUE_DRIVER_LOW, %edi
	leal	VQ_AVAIL_OFF(%r13), %esi
	call	vio_wr
	movl	$VIRTIO_MMIO_QUEUE_DRIVER_HIGH, %edi
	leaq	VQ_AVAIL_OFF(%r13), %rsi
	shrq	$32, %rsi
	call	vio_wr
	movl	$VIRTIO_MMIO_QUEUE_DEVICE_LOW, %edi
	leal	VQ_USED_OFF(%r13), %esi
	call	vio_wr
	movl	$VIRTIO_MMIO_QUEUE_DEVICE_HIGH, %edi
	leaq	VQ_USED_OFF(%r13), %rsi
	shrq	$32, %rsi
	call	vio_wr
	movl	$VIRTIO_MMIO_QUEUE_READY, %edi
	movl	$1, %esi
	call	vio_wr
	xorl	%eax, %eax
	jmp	.Lvqs_out
.Lvqs_fail:
	movl	$1, %eax
.Lvqs_out:
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/*
 * vq_post(q: edi, addr: rsi, len: edx, flags: ecx)
 * Make descriptor 0 = {addr, len, flags, next 0} available on queue q and
 * notify the device.
 */
vq_post:
	movl	%edi, %edi
	movq	%rdi, %r8
	shlq	$12, %r8
	leaq	vq_area(%rip), %rax
	addq	%rax, %r8			/* descriptor table */
	movq	%rsi, 0(%r8)
	movl	%edx, 8(%r8)
	movw	%cx, 12(%r8)
	movw	$0, 14(%r8)
	leaq	vq_next_avail(%rip), %r9
	movl	(%r9, %rdi, 4), %edx		/* avail idx (free-running) */
	leaq	vq_num(%rip), %r10
	movl	(%r10, %rdi, 4), %r11d
	decl	%r11d
	andl	%edx, %r11d			/* ring slot */
	movw	$0, (VQ_AVAIL_OFF + 4)(%r8, %r11, 2)	/* head: descriptor 0 */
	mfence
	incl	%edx
	movw	%dx, (VQ_AVAIL_OFF + 2)(%r8)
	movl	%edx, (%r9, %rdi, 4)
	mfence
	movl	%edi, %esi
	movl	$VIRTIO_MMIO_QUEUE_NOTIFY, %edi
	jmp	vio_wr

/* vq_used_pending(q: edi) -> eax = 1 if the device used a buffer we have not seen. */
vq_used_pending:
	movl	%edi, %edi
	pushq	%rdi
	call	vq_page
	popq	%rdi
	movzwl	(VQ_USED_OFF + 2)(%rax), %eax
	leaq	vq_last_used(%rip), %rdx
	movzwl	(%rdx, %rdi, 4), %edx
	cmpl	%edx, %eax
	setne	%al
	movzbl	%al, %eax
	ret

/* vq_consume(q: edi): count one used buffer as seen. */
vq_consume:
	movl	%edi, %edi
	leaq	vq_last_used(%rip), %rdx
	incl	(%rdx, %rdi, 4)
	mfence
	ret

/* rdtsc64() -> rax */
rdtsc64:
	rdtsc
	shlq	$32, %rdx
	orq	%rdx, %rax
	ret

/* vq_wait(q: edi) -> eax = 0 once the device has used the buffer, 1 after VQ_WAIT_TICKS. */
vq_wait:
	pushq	%rbx
	pushq	%r12
	movl	%edi, %r12d
	call	rdtsc64
	movabsq	$VQ_WAIT_TICKS, %rbx
	addq	%rax, %rbx
1:	movl	%r12d, %edi
	call	vq_used_pending
	testl	%eax, %eax
	jnz	2f
	pause
	call	rdtsc64
	cmpq	%rbx, %rax
	jb	1b
	movl	$1, %eax
	jmp	3f
2:	movl	%r12d, %edi
	call	vq_consume
	xorl	%eax, %eax
3:	popq	%r12
	popq	%rbx
	ret

/* ---------------------------------------------------------------- */
/* Device initialisation.                                             */

/* vb_fail_line(msg: rdi): hearth-guest: BALLOON FAIL <msg> */
vb_fail_line:
	pushq	%rdi
	call	line_begin
	PUTS	"BALLOON FAIL "
	popq	%rdi
	call	puts
	jmp	line_end

/* vb_set_status(bits: esi) */
vb_set_status:
	movl	$VIRTIO_MMIO_STATUS, %edi
	jmp	vio_wr

/*
 * vb_setup() -> eax = 0, or 1 after printing a BALLOON FAIL line.
 * Find the device, reset it, negotiate features, set up the queues, set
 * DRIVER_OK, print the device line and post the first stats buffer.
 */
vb_setup:
	pushq	%rbx
	pushq	%r12
	call	vio_find
	testq	%rax, %rax
	jnz	1f
	leaq	msg_no_device(%rip), %rdi
	jmp	.Lvb_fail
1:	movl	$VIRTIO_MMIO_VERSION, %edi
	call	vio_rd
	cmpl	$2, %eax
	je	2f
	movl	%eax, %ebx
	call	line_begin
	PUTS	"BALLOON FAIL version="
	movl	%ebx, %edi
	call	put_dec
	call	line_end
	jmp	.Lvb_failed
	/* Reset, and wait (bounded) for the status to read back 0. */
2:	xorl	%esi, %esi
	call	vb_set_status
	movl	$100000, %ebx
3:	movl	$VIRTIO_MMIO_STATUS, %edi
	call	vio_rd
	testl	%eax, %eax
	jz	4f
	pause
	decl	%ebx
	jnz	3b
	leaq	msg_no_reset(%rip), %rdi
	jmp	.Lvb_fail
4:	movl	$VIRTIO_S_ACKNOWLEDGE, %esi
	call	vb_set_status
	movl	$(VIRTIO_S_ACKNOWLEDGE + VIRTIO_S_DRIVER), %esi
	call	vb_set_status
	/* Features: the device's, then ours. */
	movl	$VIRTIO_MMIO_DEVICE_FEATURES_SEL, %edi
	movl	$1, %esi
	call	vio_wr
	movl	$VIRTIO_MMIO_DEVICE_FEATURES, %edi
	call	vio_rd
	movl	%eax, %ebx
	shlq	$32, %rbx
	movl	$VIRTIO_MMIO_DEVICE_FEATURES_SEL, %edi
	xorl	%esi, %esi
	call	vio_wr
	movl	$VIRTIO_MMIO_DEVICE_FEATURES, %edi
	call	vio_rd
	orq	%rax, %rbx
	movq	%rbx, vb_offered(%rip)
	movabsq	$((BALLOON_WANTED_HIGH << 32) + BALLOON_WANTED_LOW), %rax
	andq	%rax, %rbx
	movq	%rbx, vb_features(%rip)
	btq	$32, %rbx
	jc	5f
	movl	$(VIRTIO_S_ACKNOWLEDGE + VIRTIO_S_DRIVER + VIRTIO_S_FAILED), %esi
	call	vb_set_status
	leaq	msg_no_version1(%rip), %rdi
	jmp	.Lvb_fail
5:	movl	$VIRTIO_MMIO_DRIVER_FEATURES_SEL, %edi
	xorl	%esi, %esi
	call	vio_wr
	movl	$VIRTIO_MMIO_DRIVER_FEATURES, %edi
	movl	%ebx, %esi
	call	vio_wr
	movl	$VIRTIO_MMIO_DRIVER_FEATURES_SEL, %edi
	movl	$1, %esi
	call	vio_wr
	movl	$VIRTIO_MMIO_DRIVER_FEATURES, %edi
	movq	%rbx, %rsi
	shrq	$32, %rsi
	call	vio_wr
	movl	$(VIRTIO_S_ACKNOWLEDGE + VIRTIO_S_DRIVER + VIRTIO_S_FEATURES_OK), %esi
	call	vb_set_status
	movl	$VIRTIO_MMIO_STATUS, %edi
	call	vio_rd
	testl	$VIRTIO_S_FEATURES_OK, %eax
	jnz	6f
	movl	$(VIRTIO_S_ACKNOWLEDGE + VIRTIO_S_DRIVER + VIRTIO_S_FAILED), %esi
	call	vb_set_status
	leaq	msg_features_refused(%rip), %rdi
	jmp	.Lvb_fail
	/*
	 * Queues: inflate, deflate, stats if negotiated, then reporting if
	 * negotiated at the next index (free_page_vq is never negotiated).
	 */
6:	movl	$2, %r12d
	testl	$VIRTIO_BALLOON_F_STATS_VQ, %ebx
	jz	7f
	incl	%r12d
7:	movl	%r12d, vq_report(%rip)
	testl	$VIRTIO_BALLOON_F_PAGE_REPORTING, %ebx
	jz	10f
	incl	%r12d
10:	movl	%r12d, vb_nqueues(%rip)
	xorl	%ebx, %ebx
8:	movl	%ebx, %edi
	call	vq_setup
	testl	%eax, %eax
	jnz	.Lvb_queue_fail
	incl	%ebx
	cmpl	%r12d, %ebx
	jb	8b
	movl	$(VIRTIO_S_ACKNOWLEDGE + VIRTIO_S_DRIVER + VIRTIO_S_FEATURES_OK + VIRTIO_S_DRIVER_OK), %esi
	call	vb_set_status

	call	line_begin
	PUTS	"balloon device at "
	movq	vb_base(%rip), %rdi
	call	put_hex
	PUTS	" irq="
	movq	vb_irq(%rip), %rdi
	call	put_dec
	PUTS	" features="
	movq	vb_features(%rip), %rdi
	call	put_hex
	call	line_end

	testl	$VIRTIO_BALLOON_F_STATS_VQ, vb_features(%rip)
	jz	9f
	call	stats_post
9:	xorl	%eax, %eax
	jmp	.Lvb_out
.Lvb_queue_fail:
	movl	$(VIRTIO_S_ACKNOWLEDGE + VIRTIO_S_DRIVER + VIRTIO_S_FEATURES_OK + VIRTIO_S_FAILED), %esi
	call	vb_set_status
	call	line_begin
	PUTS	"BALLOON FAIL queue "
	movl	%ebx, %edi
	call	put_dec
	PUTS	" not available"
	call	line_end
	jmp	.Lvb_failed
.Lvb_fail:
	call	vb_fail_line
.Lvb_failed:
	movl	$1, %eax
.Lvb_out:
	popq	%r12
	popq	%rbx
	ret

/* ---------------------------------------------------------------- */
/* Memory: the pool, the balloon at its top, the guest's use at its bottom. */

/* pool_region(addr: rdi, size: rsi, type: edx): memmap_foreach callback. */
pool_region:
	cmpl	$E820_RAM, %edx
	jne	3f
	addq	%rdi, %rsi			/* end */
	movl	$(__bss_end + PAGE_SIZE - 1), %eax
	andl	$~(PAGE_SIZE - 1), %eax
	cmpl	$POOL_FLOOR, %eax
	jae	1f
	movl	$POOL_FLOOR, %eax
1:	cmpq	%rax, %rdi
	jae	2f
	movq	%rax, %rdi
2:	movabsq	$0x100000000, %rax		/* the guest maps 0..4 GiB */
	cmpq	%rax, %rsi
	jbe	4f
	movq	%rax, %rsi
4:	addq	$(PAGE_SIZE - 1), %rdi
	andq	$~(PAGE_SIZE - 1), %rdi
	andq	$~(PAGE_SIZE - 1), %rsi
	cmpq	%rdi, %rsi
	jbe	3f
	movq	%rsi, %rax
	subq	%rdi, %rax
	movq	pool_hi(%rip), %rcx
	subq	pool_lo(%rip), %rcx
	cmpq	%rcx, %rax
	jbe	3f
	movq	%rdi, pool_lo(%rip)
	movq	%rsi, pool_hi(%rip)
3:	ret

/* pool_init(): ram_total_bytes and the pool, from the memory map. */
pool_init:
	call	memmap_ram_summary
	movq	$0, pool_lo(%rip)
	movq	$0, pool_hi(%rip)
	leaq	pool_region(%rip), %rdi
	jmp	memmap_foreach

/* pool_bytes() -> rax */
pool_bytes:
	movq	pool_hi(%rip), %rax
	subq	pool_lo(%rip), %rax
	ret

/*
 * balloon_move(deflate: edi, n: rsi) -> eax = 0, or 1 after a FAIL line.
 * Inflate (edi = 0) the n pages just below the balloon, or deflate
 * (edi = 1) its n lowest pages: their PFNs go in one buffer on the inflate
 * or deflate queue; once the device has used it, update balloon_pages and
 * the config's actual.
 */
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
	call	vq_wait
	testl	%eax, %eax
	jnz	5f
	testl	%ebx, %ebx
	jnz	4f
	addq	%r12, balloon_pages(%rip)
	jmp	6f
4:	subq	%r12, balloon_pages(%rip)
6:	movl	$BALLOON_CFG_ACTUAL, %edi
	movl	balloon_pages(%rip), %esi
	call	vio_wr
	xorl	%eax, %eax
	jmp	7f
5:	leaq	msg_inflate_timeout(%rip), %rdi
	testl	%ebx, %ebx
	jz	8f
	leaq	msg_deflate_timeout(%rip), %rdi
8:	call	vb_fail_line
	movl	$1, %eax
7:	popq	%r12
	popq	%rbx
	ret

/* print_target_line(): hearth-guest: balloon target=<num_pages> actual=<pages> */
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
	incq	stats_posted(%rip)
	movl	$VQ_STATS, %edi
	leaq	stats_buf(%rip), %rsi
	movl	$STATS_LEN, %edx
	xorl	%ecx, %ecx
	jmp	vq_post

/* stats_service(): if the device has used the stats buffer, refill and re-post it. */
stats_service:
	testl	$VIRTIO_BALLOON_F_STATS_VQ, vb_features(%rip)
	jz	1f
	movl	$VQ_STATS, %edi
	call	vq_used_pending
	testl	%eax, %eax
	jz	1f
	movl	$VQ_STATS, %edi
	call	vq_consume
	jmp	stats_post
1:	ret

/* ---------------------------------------------------------------- */
/* The guest's own use of memory.                                     */

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

/*
 * balloon_report() -> eax = 0, or 1 after a FAIL line.
 * With PAGE_REPORTING: report the free part of the pool (between the used
 * range and the balloon) on the reporting queue, one device-writable
 * descriptor of at most REPORT_CHUNK bytes per buffer, as Linux's free
 * page reporting does; then hearth-guest: balloon reported pages=<n>.
 */
balloon_report:
	testl	$VIRTIO_BALLOON_F_PAGE_REPORTING, vb_features(%rip)
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
	call	vq_wait
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
5:	leaq	msg_report_timeout(%rip), %rdi
	call	vb_fail_line
	movl	$1, %eax
7:	popq	%r13
	popq	%r12
	popq	%rbx
	ret
3:	xorl	%eax, %eax
	ret

/* ---------------------------------------------------------------- */
/* COM1 input and the scenarios.                                      */

/* serial_got_stop() -> eax = 1 if a 'q' has arrived on COM1 (other bytes are dropped). */
serial_got_stop:
	xorl	%ecx, %ecx
	movw	$(COM1_BASE + UART_LSR), %dx
	inb	%dx, %al
	testb	$UART_LSR_DR, %al
	jz	1f
	movw	$(COM1_BASE + UART_RBR), %dx
	inb	%dx, %al
	cmpb	$STOP_KEY, %al
	jne	1f
	movl	$1, %ecx
1:	movl	%ecx, %eax
	ret

/* balloon_stop(): hearth-guest: BALLOON STOPPED, then reset. */
balloon_stop:
	call	line_begin
	PUTS	"BALLOON STOPPED"
	call	line_end
	jmp	guest_reset

/* delay(iterations: rdi) */
delay:
	testq	%rdi, %rdi
	jz	2f
1:	decq	%rdi
	jnz	1b
2:	ret

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
	movl	vq_num(%rip), %edi
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
	movl	$VIRTIO_MMIO_INTERRUPT_STATUS, %edi
	call	vio_rd
	testl	%eax, %eax
	jz	1f
	movl	%eax, %esi
	movl	$VIRTIO_MMIO_INTERRUPT_ACK, %edi
	call	vio_wr
1:	movl	$VIRTIO_MMIO_STATUS, %edi
	call	vio_rd
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
	/* Watch Status for NEEDS_RESET, for at least RESET_WAIT_TICKS. */
	call	rdtsc64
	movabsq	$RESET_WAIT_TICKS, %rbx
	addq	%rax, %rbx
5:	movl	$VIRTIO_MMIO_STATUS, %edi
	call	vio_rd
	movl	%eax, %r12d
	testl	$VIRTIO_S_NEEDS_RESET, %eax
	jnz	6f
	movl	$1000, %edi
	call	delay
	call	rdtsc64
	cmpq	%rbx, %rax
	jb	5b
6:	call	line_begin
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
vio_key:		.asciz	"virtio_mmio.device="
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
msg_no_device:		.asciz	"no virtio-mmio balloon device"
msg_no_reset:		.asciz	"device does not reset"
msg_no_version1:	.asciz	"device does not offer VERSION_1"
msg_features_refused:	.asciz	"FEATURES_OK not accepted"
msg_inflate_timeout:	.asciz	"inflate timeout"
msg_deflate_timeout:	.asciz	"deflate timeout"
msg_report_timeout:	.asciz	"report timeout"

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
vb_base:	.quad	0		/* the device's registers */
vb_size:	.quad	0
vb_irq:		.quad	0
vb_offered:	.quad	0		/* DeviceFeatures, 64 bits */
vb_features:	.quad	0		/* what we accepted */
vb_nqueues:	.long	0		/* 2 + stats queue + reporting queue */
vq_report:	.long	0		/* index of the reporting queue */
vq_postlags:	.word	0
	.balign	8
vq_num:		.long	0, 0, 0, 0	/* queue sizes */
vq_next_avail:	.long	0, 0, 0, 0	/* our avail idx (low 16 bits count) */
vq_last_used:	.long	0, 0, 0, 0	/* used idx we have seen */
pool_lo:	.quad	0
pool_hi:	.quad	0
balloon_pages:	.quad	0		/* the top balloon_pages pages of the pool */
used_bytes:	.quad	0		/* the bottom used_bytes of the pool */
mem_step_bytes:	.quad	0
mem_max_bytes:	.quad	0
grow_countdown:	.quad	0
stats_posted:	.quad	0

	.bss
	.balign	4096
vq_area:	.skip	VQ_COUNT * PAGE_SIZE
pfn_buf:	.skip	PFNS_PER_BUFFER * 4
	.balign	16
stats_buf:	.skip	STATS_LEN + 2
