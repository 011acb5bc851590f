/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: what the VMM tells the guest. The command line, the
 * memory map (E820 in boot_params, or the PVH memmap) and the MP table.
 * System V calling convention, like console.S.
 */
#include "guest.h"

	.text
	.code64

/*
 * bootinfo_init(): copy the command line into cmdline_buf (NUL-terminated,
 * at most CMDLINE_MAX - 1 bytes), so that it outlives the VMM's copy.
 */
	.globl	bootinfo_init
bootinfo_init:
	movq	boot_info_ptr(%rip), %rsi
	xorl	%eax, %eax
	testq	%rsi, %rsi
	jz	.Lcopy
	cmpb	$ENTRY_PVH, boot_entry(%rip)
	jne	.Llinux
	cmpl	$PVH_MAGIC, PVH_MAGIC_OFF(%rsi)
	jne	.Lcopy
	movq	PVH_CMDLINE_OFF(%rsi), %rax
	jmp	.Lcopy
.Llinux:
	movl	BP_CMD_LINE_PTR(%rsi), %eax
	movl	BP_EXT_CMD_LINE_PTR(%rsi), %edx
	shlq	$32, %rdx
	orq	%rdx, %rax
.Lcopy:
	leaq	cmdline_buf(%rip), %rdi
	movl	$(CMDLINE_MAX - 1), %ecx
	testq	%rax, %rax
	jz	.Lcopy_done
1:	movb	(%rax), %dl
	testb	%dl, %dl
	jz	.Lcopy_done
	movb	%dl, (%rdi)
	incq	%rax
	incq	%rdi
	decl	%ecx
	jnz	1b
.Lcopy_done:
	movb	$0, (%rdi)
	ret

/*
 * cmdline_get(key: rdi) -> (value: rax, len: rdx)
 * Find the first whitespace-separated token "key=value" on the command line.
 * rax = pointer to the value (inside cmdline_buf) and rdx = its length, or
 * rax = 0 if the key is absent.
 */
	.globl	cmdline_get
cmdline_get:
	leaq	cmdline_buf(%rip), %rsi
.Ltoken:
	movzbl	(%rsi), %eax
	testl	%eax, %eax
	jz	.Lnot_found
	cmpl	$0x20, %eax			/* ' ' */
	je	.Lnext_char
	cmpl	$0x09, %eax			/* '\t' */
	je	.Lnext_char
	/* rsi: start of a token. Does it begin with "key="? */
	movq	%rdi, %r8
	movq	%rsi, %r9
.Lcompare:
	movzbl	(%r8), %ecx
	testl	%ecx, %ecx
	jz	.Lkey_end
	cmpb	(%r9), %cl
	jne	.Lskip_token
	incq	%r8
	incq	%r9
	jmp	.Lcompare
.Lkey_end:
	cmpb	$0x3d, (%r9)			/* '=' */
	jne	.Lskip_token
	leaq	1(%r9), %rax
	movq	%rax, %rdx
.Lvalue:
	movzbl	(%rdx), %ecx
	testl	%ecx, %ecx
	jz	.Lvalue_end
	cmpl	$0x20, %ecx
	je	.Lvalue_end
	cmpl	$0x09, %ecx
	je	.Lvalue_end
	incq	%rdx
	jmp	.Lvalue
.Lvalue_end:
	subq	%rax, %rdx
	ret
.Lskip_token:
	movzbl	(%rsi), %eax
	testl	%eax, %eax
	jz	.Lnot_found
	cmpl	$0x20, %eax
	je	.Ltoken
	cmpl	$0x09, %eax
	je	.Ltoken
	incq	%rsi
	jmp	.Lskip_token
.Lnext_char:
	incq	%rsi
	jmp	.Ltoken
.Lnot_found:
	xorl	%eax, %eax
	xorl	%edx, %edx
	ret

/*
 * memmap_foreach(callback: rdi)
 * Call callback(addr: rdi, size: rsi, type: edx) for every entry of the
 * memory map: the E820 table of boot_params (Linux entries) or the memmap of
 * hvm_start_info (PVH, version >= 1). Types: 1 = RAM, as in E820.
 */
	.globl	memmap_foreach
memmap_foreach:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movq	%rdi, %r12			/* callback */
	movq	boot_info_ptr(%rip), %rbx
	testq	%rbx, %rbx
	jz	.Lmm_done
	cmpb	$ENTRY_PVH, boot_entry(%rip)
	je	.Lmm_pvh
	movzbl	BP_E820_ENTRIES(%rbx), %r13d	/* count */
	leaq	BP_E820_TABLE(%rbx), %r14	/* entry */
	movl	$E820_ENTRY_SIZE, %r15d		/* stride */
	cmpl	$E820_MAX_ENTRIES, %r13d
	jbe	.Lmm_loop
	movl	$E820_MAX_ENTRIES, %r13d
	jmp	.Lmm_loop
.Lmm_pvh:
	cmpl	$PVH_MAGIC, PVH_MAGIC_OFF(%rbx)
	jne	.Lmm_done
	cmpl	$1, PVH_VERSION_OFF(%rbx)	/* version 0 has no memmap */
	jb	.Lmm_done
	movl	PVH_MEMMAP_ENTRIES_OFF(%rbx), %r13d
	movq	PVH_MEMMAP_OFF(%rbx), %r14
	movl	$PVH_MEMMAP_ENTRY_SIZE, %r15d
	cmpl	$PVH_MEMMAP_MAX_ENTRIES, %r13d
	jbe	.Lmm_loop
	movl	$PVH_MEMMAP_MAX_ENTRIES, %r13d
.Lmm_loop:
	testl	%r13d, %r13d
	jz	.Lmm_done
	movq	0(%r14), %rdi
	movq	8(%r14), %rsi
	movl	16(%r14), %edx
	call	*%r12
	addq	%r15, %r14
	decl	%r13d
	jmp	.Lmm_loop
.Lmm_done:
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/*
 * memmap_ram_summary(): walk the memory map and set ram_total_bytes (sum of
 * the RAM regions), ram_regions (their number) and ram_top (end of the
 * highest RAM region).
 */
	.globl	memmap_ram_summary
memmap_ram_summary:
	movq	$0, ram_total_bytes(%rip)
	movq	$0, ram_regions(%rip)
	movq	$0, ram_top(%rip)
	leaq	ram_summary_region(%rip), %rdi
	jmp	memmap_foreach

ram_summary_region:
	cmpl	$E820_RAM, %edx
	jne	1f
	addq	%rsi, ram_total_bytes(%rip)
	incq	ram_regions(%rip)
	addq	%rsi, %rdi
	cmpq	ram_top(%rip), %rdi
	jbe	1f
	movq	%rdi, ram_top(%rip)
1:	ret

/*
 * mptable_find() -> rax
 * Look for the MP floating pointer structure ("_MP_", valid checksum) in the
 * first KiB of the EBDA, the last KiB of base memory, 0x9fc00 and the BIOS
 * ROM area 0xf0000-0xfffff, in that order. Returns the address of the MP
 * configuration table ("PCMP"), or 0 if there is none.
 */
	.globl	mptable_find
mptable_find:
	/* EBDA segment from the BIOS data area, if it looks sane. */
	movzwl	0x40e, %edi
	shll	$4, %edi
	cmpl	$0x80000, %edi
	jb	1f
	cmpl	$0x9fc00, %edi
	ja	1f
	leal	1024(%rdi), %esi
	call	mpf_scan
	testq	%rax, %rax
	jnz	.Lmpf_found
	/* Last KiB of base memory (KiB count in the BIOS data area). */
1:	movzwl	0x413, %edi
	shll	$10, %edi
	cmpl	$0x80000, %edi
	jb	2f
	cmpl	$0xa0000, %edi
	ja	2f
	leal	-1024(%rdi), %edi
	leal	1024(%rdi), %esi
	call	mpf_scan
	testq	%rax, %rax
	jnz	.Lmpf_found
2:	movl	$0x9fc00, %edi
	movl	$0xa0000, %esi
	call	mpf_scan
	testq	%rax, %rax
	jnz	.Lmpf_found
	movl	$0xf0000, %edi
	movl	$0x100000, %esi
	call	mpf_scan
	testq	%rax, %rax
	jz	.Lmpc_none
.Lmpf_found:
	movl	MPF_PHYSPTR(%rax), %eax		/* 0: a default configuration, no table */
	testl	%eax, %eax
	jz	.Lmpc_none
	cmpl	$MPC_SIGNATURE, (%rax)
	jne	.Lmpc_none
	ret
.Lmpc_none:
	xorl	%eax, %eax
	ret

/* mpf_scan(start: rdi, end: rsi) -> rax: a valid "_MP_" structure or 0. */
mpf_scan:
	addl	$15, %edi
	andl	$~15, %edi
1:	leaq	16(%rdi), %rax
	cmpq	%rsi, %rax
	ja	.Lscan_none
	cmpl	$MPF_SIGNATURE, (%rdi)
	jne	.Lscan_next
	/* checksum: the MPF_LENGTH * 16 bytes sum to 0 mod 256 */
	movzbl	MPF_LENGTH(%rdi), %ecx
	shll	$4, %ecx
	jz	.Lscan_next
	xorl	%eax, %eax
	xorl	%edx, %edx
2:	addb	(%rdi, %rdx), %al
	incl	%edx
	cmpl	%ecx, %edx
	jb	2b
	testb	%al, %al
	jnz	.Lscan_next
	movq	%rdi, %rax
	ret
.Lscan_next:
	addq	$16, %rdi
	jmp	1b
.Lscan_none:
	xorl	%eax, %eax
	ret

/*
 * mptable_foreach_cpu(callback: rdi) -> eax
 * Call callback(apic_id: edi, cpu_flags: esi) for every enabled processor
 * entry of the MP table (callback may be 0) and return how many there are
 * (0 without an MP table).
 */
	.globl	mptable_foreach_cpu
mptable_foreach_cpu:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r14
	pushq	%r15
	movq	%rdi, %r12			/* callback */
	xorl	%ebp, %ebp			/* enabled processors seen */
	call	mptable_find
	testq	%rax, %rax
	jz	.Lmpc_done
	/*
	 * Walk the entries by the table's length, as Linux does: some
	 * firmware (qboot) leaves the entry count at 0.
	 */
	movq	%rax, %rbx
	leaq	MPC_HEADER_SIZE(%rbx), %r14	/* current entry */
	movzwl	MPC_LENGTH(%rbx), %r15d
	addq	%rbx, %r15			/* end of the base table */
.Lmpc_loop:
	leaq	MP_PROCESSOR_SIZE(%r14), %rax
	movzbl	(%r14), %ecx
	cmpl	$MP_PROCESSOR, %ecx
	je	1f
	leaq	MP_OTHER_ENTRY_SIZE(%r14), %rax
1:	cmpq	%r15, %rax			/* the whole entry must fit */
	ja	.Lmpc_done
	movzbl	(%r14), %eax
	cmpl	$MP_PROCESSOR, %eax
	jne	.Lmpc_other
	movzbl	MP_PROC_FLAGS(%r14), %esi
	testl	$MP_PROC_ENABLED, %esi
	jz	.Lmpc_next_proc
	incl	%ebp
	testq	%r12, %r12
	jz	.Lmpc_next_proc
	movzbl	MP_PROC_APIC_ID(%r14), %edi
	call	*%r12
.Lmpc_next_proc:
	addq	$MP_PROCESSOR_SIZE, %r14
	jmp	.Lmpc_loop
.Lmpc_other:
	cmpl	$4, %eax			/* bus, I/O APIC, I/O and local interrupt */
	ja	.Lmpc_done			/* unknown entry type: stop */
	addq	$MP_OTHER_ENTRY_SIZE, %r14
	jmp	.Lmpc_loop
.Lmpc_done:
	movl	%ebp, %eax
	popq	%r15
	popq	%r14
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

	.data
	.balign	8
	.globl	ram_total_bytes, ram_regions, ram_top
ram_total_bytes:	.quad	0
ram_regions:		.quad	0
ram_top:		.quad	0

	.bss
	.globl	cmdline_buf
cmdline_buf:
	.skip	CMDLINE_MAX
