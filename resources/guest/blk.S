/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: a polling virtio-blk driver (virtio 1.2, 5.2) on the
 * shared virtio-mmio library, and the blk-info scenario. The other block
 * scenarios are in blk_io.S, blk_bench.S and blk_bad.S.
 *
 * One request queue (0). A request whose head is descriptor b uses the
 * descriptors b .. b + blk_stride - 1: the 16-byte header (device-readable),
 * up to blk_segs data descriptors of at most blk_seg_bytes each that never
 * cross a 4 KiB boundary, and the status byte (device-writable). Its
 * header lives at blk_hdrs + 16 * b and its status at blk_status + b, so
 * the id the device returns in the used ring finds both.
 */
#include "guest.h"
#include "virtio.h"
#include "blk.h"

#define BLK_WANTED	((1 << VIRTIO_F_VERSION_1) + (1 << VIRTIO_BLK_F_SIZE_MAX) + (1 << VIRTIO_BLK_F_SEG_MAX) + (1 << VIRTIO_BLK_F_RO) + (1 << VIRTIO_BLK_F_BLK_SIZE) + (1 << VIRTIO_BLK_F_FLUSH))

	.text
	.code64

/* blk_fail_line(msg: rdi): hearth-guest: BLK-FAIL <msg> */
	.globl	blk_fail_line
blk_fail_line:
	pushq	%rdi
	call	line_begin
	PUTS	"BLK-FAIL "
	popq	%rdi
	call	puts
	jmp	line_end

/* blk_put_dev(): print " dev=<n>" inside a line. */
	.globl	blk_put_dev
blk_put_dev:
	PUTS	" dev="
	movq	blk_dev(%rip), %rdi
	jmp	put_dec

/*
 * blk_put_status(status: edi): inside a line, "ok", "ioerr" or "unsupp"
 * for 0, 1, 2; "timeout" or "needs_reset" for VQ_TIMEOUT, VQ_NEEDS_RESET;
 * any other status byte in decimal.
 */
	.globl	blk_put_status
blk_put_status:
	leaq	blk_status_names(%rip), %rax
	cmpl	$VIRTIO_BLK_S_UNSUPP, %edi
	jbe	1f
	cmpl	$VQ_NEEDS_RESET, %edi
	je	2f
	cmpl	$VQ_TIMEOUT, %edi
	je	3f
	movl	%edi, %edi
	jmp	put_dec
1:	movl	%edi, %edi
	imulq	$8, %rdi, %rdi
	addq	%rax, %rdi
	jmp	puts
2:	leaq	name_needs_reset(%rip), %rdi
	jmp	puts
3:	leaq	name_timeout(%rip), %rdi
	jmp	puts

/*
 * blk_setup() -> eax = 0, or 1 after a BLK-FAIL line.
 * The pool; the hearth.dev-th (default 0) virtio-blk device; features
 * VERSION_1, SIZE_MAX, SEG_MAX, RO, BLK_SIZE, FLUSH where offered; queue 0
 * of up to VQ_SIZE_MAX; DRIVER_OK; the geometry of requests; then
 *   hearth-guest: BLK-DEV dev=<n> base=0x<base> irq=<n> features=0x<accepted> queue_size=<n> segs=<n> seg_bytes=<n>
 */
	.globl	blk_setup
blk_setup:
	pushq	%rbx
	call	pool_init
	leaq	key_dev(%rip), %rdi
	xorl	%esi, %esi
	call	cmdline_get_num
	movq	%rax, blk_dev(%rip)
	movl	$VIRTIO_ID_BLOCK, %edi
	movl	%eax, %esi
	call	vio_find
	testq	%rax, %rax
	jnz	1f
	call	line_begin
	PUTS	"BLK-FAIL no virtio-blk device"
	call	blk_put_dev
	call	line_end
	jmp	.Lbs_failed
1:	movabsq	$BLK_WANTED, %rdi
	call	vio_negotiate
	testl	%eax, %eax
	jz	2f
	movl	%eax, %ebx
	call	line_begin
	PUTS	"BLK-FAIL "
	movl	%ebx, %edi
	call	vio_put_error
	call	line_end
	jmp	.Lbs_failed
2:	movl	$BLK_QUEUE, %edi
	movl	$VQ_SIZE_MAX, %esi
	call	vq_setup
	testl	%eax, %eax
	jz	3f
	movl	$VIRTIO_S_FAILED, %edi
	call	vio_add_status
	leaq	msg_no_queue(%rip), %rdi
	call	blk_fail_line
	jmp	.Lbs_failed
3:	call	vio_driver_ok
	call	blk_read_geometry
	call	line_begin
	PUTS	"BLK-DEV"
	call	blk_put_dev
	PUTS	" base="
	movq	vio_base(%rip), %rdi
	call	put_hex
	PUTS	" irq="
	movq	vio_irq(%rip), %rdi
	call	put_dec
	PUTS	" features="
	movq	vio_features(%rip), %rdi
	call	put_hex
	PUTS	" queue_size="
	movl	$BLK_QUEUE, %edi
	call	vq_size
	movl	%eax, %edi
	call	put_dec
	PUTS	" segs="
	movl	blk_segs(%rip), %edi
	call	put_dec
	PUTS	" seg_bytes="
	movl	blk_seg_bytes(%rip), %edi
	call	put_dec
	call	line_end
	xorl	%eax, %eax
	jmp	.Lbs_out
.Lbs_failed:
	movl	$1, %eax
.Lbs_out:
	popq	%rbx
	ret

/*
 * blk_read_geometry(): blk_capacity from config; blk_segs = the device's
 * seg_max (1 without SEG_MAX, as Linux does), at most BLK_MAX_SEGS and
 * queue size - 2, at least 1; blk_seg_bytes = BLK_SEG_BYTES_MAX, or with
 * SIZE_MAX the largest power of two <= size_max (at least 512);
 * blk_stride = blk_segs + 2.
 */
blk_read_geometry:
	movl	$BLK_CFG_CAPACITY, %edi
	call	vio_cfg_rd64
	movq	%rax, blk_capacity(%rip)
	movl	$1, %eax
	btq	$VIRTIO_BLK_F_SEG_MAX, vio_features(%rip)
	jnc	1f
	movl	$BLK_CFG_SEG_MAX, %edi
	call	vio_cfg_rd32
1:	movl	$BLK_MAX_SEGS, %ecx
	cmpl	%ecx, %eax
	cmova	%ecx, %eax
	pushq	%rax
	movl	$BLK_QUEUE, %edi
	call	vq_size
	leal	-2(%rax), %ecx
	popq	%rax
	cmpl	%ecx, %eax
	cmovg	%ecx, %eax
	movl	$1, %ecx
	cmpl	%ecx, %eax
	cmovl	%ecx, %eax
	movl	%eax, blk_segs(%rip)
	addl	$2, %eax
	movl	%eax, blk_stride(%rip)
	movl	$BLK_SEG_BYTES_MAX, %eax
	btq	$VIRTIO_BLK_F_SIZE_MAX, vio_features(%rip)
	jnc	2f
	movl	$BLK_CFG_SIZE_MAX, %edi
	call	vio_cfg_rd32
	movl	$BLK_SEG_BYTES_MAX, %ecx
	cmpl	%ecx, %eax
	cmova	%ecx, %eax
	movl	$SECTOR_SIZE, %ecx
	cmpl	%ecx, %eax
	cmovb	%ecx, %eax
	bsrl	%eax, %ecx
	movl	$1, %eax
	shll	%cl, %eax
2:	movl	%eax, blk_seg_bytes(%rip)
	ret

/* blk_max_request() -> eax: the most data bytes one request carries. */
	.globl	blk_max_request
blk_max_request:
	movl	blk_segs(%rip), %eax
	imull	blk_seg_bytes(%rip), %eax
	ret

/*
 * blk_build(base: edi, type: esi, sector: rdx, buf: rcx, len: r8d) -> eax = base
 * Write the request's header, mark its status byte BLK_STATUS_UNTOUCHED
 * and chain descriptors base, base + 1, ...: header, data (device-writable
 * for IN and GET_ID) in segments of at most blk_seg_bytes not crossing a
 * 4 KiB boundary (whatever is left goes in the last of the blk_segs data
 * descriptors), status. len 0: no data descriptor.
 */
	.globl	blk_build
blk_build:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movl	%edi, %ebx			/* the next descriptor */
	movl	%esi, %ebp			/* type */
	movq	%rcx, %r14			/* buf */
	movl	%r8d, %r15d			/* bytes left */
	movl	%edi, %eax
	movq	%rax, %r13			/* base */
	shlq	$4, %rax
	leaq	blk_hdrs(%rip), %r12
	addq	%rax, %r12			/* header */
	movl	%esi, 0(%r12)
	movl	$0, 4(%r12)
	movq	%rdx, 8(%r12)
	leaq	blk_status(%rip), %rax
	movb	$BLK_STATUS_UNTOUCHED, (%rax, %r13)
	xorl	%edi, %edi
	movl	%ebx, %esi
	movq	%r12, %rdx
	movl	$BLK_HDR_SIZE, %ecx
	movl	$VRING_DESC_F_NEXT, %r8d
	leal	1(%rbx), %r9d
	call	vq_set_desc
	incl	%ebx
	/* Data: device-writable for IN and GET_ID. */
	movl	$VRING_DESC_F_NEXT, %r12d
	cmpl	$VIRTIO_BLK_T_IN, %ebp
	je	1f
	cmpl	$VIRTIO_BLK_T_GET_ID, %ebp
	jne	2f
1:	orl	$VRING_DESC_F_WRITE, %r12d
2:	testl	%r15d, %r15d
	jz	4f
	movl	blk_seg_bytes(%rip), %ecx
	movl	%r14d, %eax
	andl	$0xfff, %eax
	movl	$0x1000, %edx
	subl	%eax, %edx			/* bytes to the next 4 KiB boundary */
	cmpl	%edx, %ecx
	cmova	%edx, %ecx
	cmpl	%r15d, %ecx
	cmova	%r15d, %ecx
	movl	%ebx, %eax			/* the last data descriptor takes the rest */
	subl	%r13d, %eax
	cmpl	blk_segs(%rip), %eax
	jb	3f
	movl	%r15d, %ecx
3:	subl	%ecx, %r15d
	xorl	%edi, %edi
	movl	%ebx, %esi
	movq	%r14, %rdx
	addq	%rcx, %r14
	movl	%r12d, %r8d
	leal	1(%rbx), %r9d
	call	vq_set_desc
	incl	%ebx
	jmp	2b
	/* Status. */
4:	xorl	%edi, %edi
	movl	%ebx, %esi
	leaq	blk_status(%rip), %rdx
	addq	%r13, %rdx
	movl	$1, %ecx
	movl	$VRING_DESC_F_WRITE, %r8d
	xorl	%r9d, %r9d
	call	vq_set_desc
	movl	%r13d, %eax
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

/* blk_submit(base: edi, type: esi, sector: rdx, buf: rcx, len: r8d): blk_build, then make it available (no notify). */
	.globl	blk_submit
blk_submit:
	call	blk_build
	movl	$BLK_QUEUE, %edi
	movl	%eax, %esi
	jmp	vq_push

/*
 * blk_do(type: edi, sector: rsi, buf: rdx, len: ecx) -> eax
 * One request at descriptor 0, notified and waited for (BLK_WAIT_MS):
 * the status byte the device wrote (BLK_STATUS_UNTOUCHED if none), or
 * VQ_TIMEOUT, VQ_NEEDS_RESET.
 */
	.globl	blk_do
blk_do:
	movl	%ecx, %r8d
	movq	%rdx, %rcx
	movq	%rsi, %rdx
	movl	%edi, %esi
	xorl	%edi, %edi
	call	blk_submit
	movl	$BLK_QUEUE, %edi
	call	vq_notify
	movl	$BLK_QUEUE, %edi
	movl	$BLK_WAIT_MS, %esi
	call	vq_wait_used
	testl	%eax, %eax
	js	1f
	movl	%eax, %edi
	jmp	blk_status_of
1:	ret

/* blk_status_of(id: edi) -> eax: the status byte of the request with head id. */
	.globl	blk_status_of
blk_status_of:
	movl	%edi, %edi
	andl	$(VQ_SIZE_MAX - 1), %edi
	leaq	blk_status(%rip), %rax
	movzbl	(%rax, %rdi), %eax
	ret

/*
 * blk-info:
 *   hearth-guest: BLK-DEV ...                  (blk_setup)
 *   hearth-guest: BLK-INFO dev=<n> capacity=<sectors> ro=<0|1> blk_size=<n> seg_max=<n> flush=<0|1>
 *   hearth-guest: BLK-ID dev=<n> serial=<text>  (or status=<s> if GET_ID failed)
 */
	.globl	scenario_blk_info
scenario_blk_info:
	call	blk_setup
	testl	%eax, %eax
	jnz	9f
	call	line_begin
	PUTS	"BLK-INFO"
	call	blk_put_dev
	PUTS	" capacity="
	movq	blk_capacity(%rip), %rdi
	call	put_dec
	PUTS	" ro="
	movq	vio_features(%rip), %rdi
	shrq	$VIRTIO_BLK_F_RO, %rdi
	andl	$1, %edi
	call	put_dec
	PUTS	" blk_size="
	movl	$SECTOR_SIZE, %eax
	btq	$VIRTIO_BLK_F_BLK_SIZE, vio_features(%rip)
	jnc	1f
	movl	$BLK_CFG_BLK_SIZE, %edi
	call	vio_cfg_rd32
1:	movl	%eax, %edi
	call	put_dec
	PUTS	" seg_max="
	xorl	%eax, %eax
	btq	$VIRTIO_BLK_F_SEG_MAX, vio_features(%rip)
	jnc	2f
	movl	$BLK_CFG_SEG_MAX, %edi
	call	vio_cfg_rd32
2:	movl	%eax, %edi
	call	put_dec
	PUTS	" flush="
	movq	vio_features(%rip), %rdi
	shrq	$VIRTIO_BLK_F_FLUSH, %rdi
	andl	$1, %edi
	call	put_dec
	call	line_end

	leaq	blk_id(%rip), %rdi
	movl	$BLK_ID_BYTES, %ecx
	xorl	%eax, %eax
	rep stosb
	movl	$VIRTIO_BLK_T_GET_ID, %edi
	xorl	%esi, %esi
	leaq	blk_id(%rip), %rdx
	movl	$BLK_ID_BYTES, %ecx
	call	blk_do
	pushq	%rax
	call	line_begin
	PUTS	"BLK-ID"
	call	blk_put_dev
	popq	%rdi
	testl	%edi, %edi
	jnz	3f
	PUTS	" serial="
	call	blk_put_serial
	jmp	4f
3:	PUTS	" status="
	call	blk_put_status
4:	call	line_end
9:	ret

/*
 * blk_put_serial(): the GET_ID bytes up to the first NUL (at most 20),
 * each byte outside '!'..'~' printed as '?'.
 */
blk_put_serial:
	pushq	%rbx
	xorl	%ebx, %ebx
1:	leaq	blk_id(%rip), %rax
	movzbl	(%rax, %rbx), %edi
	testl	%edi, %edi
	jz	3f
	leal	-0x21(%rdi), %eax
	cmpl	$(0x7e - 0x21), %eax
	jbe	2f
	movl	$0x3f, %edi			/* '?' */
2:	call	putc
	incl	%ebx
	cmpl	$BLK_ID_BYTES, %ebx
	jb	1b
3:	popq	%rbx
	ret

	.section .rodata
key_dev:		.asciz	"hearth.dev"
msg_no_queue:		.asciz	"queue 0 not available"
	.balign	8
blk_status_names:	/* 8 bytes each, indexed by status */
	.ascii	"ok\0\0\0\0\0\0"
	.ascii	"ioerr\0\0\0"
	.ascii	"unsupp\0\0"
name_timeout:		.asciz	"timeout"
name_needs_reset:	.asciz	"needs_reset"

	.data
	.balign	8
	.globl	blk_dev, blk_capacity, blk_segs, blk_seg_bytes, blk_stride
blk_dev:	.quad	0		/* index among the virtio-blk devices */
blk_capacity:	.quad	0		/* in 512-byte sectors */
blk_segs:	.long	1		/* data descriptors per request, at most */
blk_seg_bytes:	.long	BLK_SEG_BYTES_MAX	/* bytes per data descriptor, at most */
blk_stride:	.long	3		/* descriptors per request */

	.bss
	.balign	16
	.globl	blk_hdrs, blk_status
blk_hdrs:	.skip	VQ_SIZE_MAX * BLK_HDR_SIZE
blk_status:	.skip	VQ_SIZE_MAX
blk_id:		.skip	BLK_ID_BYTES
