/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: starting the APs, and the smp scenario.
 *
 * smp_start_aps(ap_main) reads the APIC IDs from the MP table, copies a
 * real-mode trampoline to TRAMPOLINE_BASE and starts each AP with
 * INIT-SIPI-SIPI through the xAPIC. Each AP goes real mode -> protected
 * mode -> long mode (on the BSP's page tables), takes its own stack and
 * calls ap_main; if that returns, the AP halts. The smp scenario's ap_main
 * prints "cpu up apic=<id>" and counts itself in cpus_up; the spin scenario
 * (spin.S) uses another one.
 */
#include "guest.h"

/* ---------------------------------------------------------------- */
/* Real-mode trampoline, copied to TRAMPOLINE_BASE (CS = base >> 4). */

	.section .text16, "ax"
	.code16
	.globl	trampoline_start, trampoline_end
trampoline_start:
	cli
	cld
	movw	%cs, %ax
	movw	%ax, %ds
	lgdtl	tramp_gdt_ptr - trampoline_start
	movl	%cr0, %eax
	andl	$~(CR0_CD + CR0_NW), %eax
	orl	$CR0_PE, %eax
	movl	%eax, %cr0
	ljmpl	$SEL_CODE32, $ap_entry32
	.balign	8
tramp_gdt_ptr:
	.word	GDT_ENTRIES * 8 - 1
	.long	gdt				/* the image's GDT, below 4 GiB */
trampoline_end:

/* ---------------------------------------------------------------- */
/* 32-bit protected mode, flat segments, our GDT: on to long mode.  */

	.section .text32, "ax"
	.code32
ap_entry32:
	movl	$SEL_DATA, %eax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	ENTER_LONG_MODE ap_entry64

/* ---------------------------------------------------------------- */

	.text
	.code64
ap_entry64:
	movl	$SEL_DATA, %eax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	/* Take the next AP stack. */
	movl	$1, %eax
	lock xaddl %eax, ap_next_index(%rip)
	cmpl	$(MAX_CPUS - 1), %eax
	jae	halt_forever			/* more APs than stacks */
	incl	%eax
	imull	$AP_STACK_SIZE, %eax
	leaq	ap_stacks(%rip), %rsp
	addq	%rax, %rsp
	lidt	idt_ptr(%rip)
	movq	ap_main_ptr(%rip), %rax
	call	*%rax
	jmp	halt_forever

/*
 * smp_ap_main(): the smp scenario's AP.
 *   hearth-guest: cpu up apic=<initial APIC ID from CPUID leaf 1>
 * then counts itself in cpus_up and returns (the AP halts).
 */
smp_ap_main:
	pushq	%rbx
	movl	$1, %eax
	cpuid
	shrl	$24, %ebx
	call	line_begin
	PUTS	"cpu up apic="
	movl	%ebx, %edi
	call	put_dec
	call	line_end
	movl	$1, %eax
	lock xaddl %eax, cpus_up(%rip)
	popq	%rbx
	ret

/*
 * smp:
 *   hearth-guest: cpu up apic=<id>                  (one per AP)
 *   hearth-guest: smp cpus_up=<n incl. BSP> expected=<MP table count>
 *   hearth-guest: SMP OK | SMP FAIL
 */
	.globl	scenario_smp
scenario_smp:
	pushq	%r12
	pushq	%r14
	leaq	smp_ap_main(%rip), %rdi
	call	smp_start_aps
	movl	%edx, %r12d			/* expected */
	/* Wait (bounded) until every started AP has counted itself. */
	leal	1(%rax), %esi			/* + the BSP */
	leaq	cpus_up(%rip), %rdi
	call	smp_wait_count
	movl	%eax, %r14d
	call	line_begin
	PUTS	"smp cpus_up="
	movl	%r14d, %edi
	call	put_dec
	PUTS	" expected="
	movl	%r12d, %edi
	call	put_dec
	call	line_end
	call	line_begin
	cmpl	%r12d, %r14d
	jne	3f
	PUTS	"SMP OK"
	jmp	4f
3:	PUTS	"SMP FAIL"
4:	call	line_end
	popq	%r14
	popq	%r12
	ret

/*
 * smp_start_aps(ap_main: rdi) -> eax = APs started, edx = enabled
 * processors in the MP table.
 * Start every enabled processor of the MP table except this one (the BSP),
 * one after the other; each calls ap_main() on its own stack once in long
 * mode, and halts if it returns. Sets cpus_up to 1 (the BSP); counting the
 * APs is up to ap_main.
 */
	.globl	smp_start_aps
smp_start_aps:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movq	%rdi, ap_main_ptr(%rip)
	movl	$0, smp_ncpus(%rip)
	leaq	smp_record_cpu(%rip), %rdi
	call	mptable_foreach_cpu
	movl	%eax, %r12d			/* expected */
	movl	$1, %eax
	cpuid
	shrl	$24, %ebx
	movl	%ebx, %r13d			/* the BSP's APIC ID */
	movl	$1, cpus_up(%rip)
	movl	$0, ap_next_index(%rip)

	/* Software-enable the local APIC (spurious vector 0xff). */
	movl	$LAPIC_SVR, %edi
	call	lapic_read
	orl	$(LAPIC_SVR_ENABLE + 0xff), %eax
	movl	%eax, %esi
	movl	$LAPIC_SVR, %edi
	call	lapic_write

	/* Copy the trampoline below 1 MiB. */
	leaq	trampoline_start(%rip), %rsi
	movl	$TRAMPOLINE_BASE, %edi
	movl	$(trampoline_end - trampoline_start), %ecx
	rep movsb
	mfence

	/* Start every AP, one after the other; r15d = how many were started. */
	xorl	%r14d, %r14d
	xorl	%r15d, %r15d
.Lstart_loop:
	cmpl	smp_ncpus(%rip), %r14d
	jae	.Lstarted
	leaq	smp_apic_ids(%rip), %rax
	movl	(%rax, %r14, 4), %edi
	incl	%r14d
	cmpl	%r13d, %edi
	je	.Lstart_loop
	call	start_ap
	incl	%r15d
	jmp	.Lstart_loop
.Lstarted:
	movl	%r15d, %eax
	movl	%r12d, %edx
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/*
 * smp_wait_count(counter: rdi, n: esi) -> eax = *counter
 * Wait until the 32-bit *counter is at least n, or at most AP_WAIT_MS
 * (AP_WAIT_MS * TSC_TICKS_PER_MS TSC ticks).
 */
	.globl	smp_wait_count
smp_wait_count:
	movq	%rdi, %r8
	rdtsc
	shlq	$32, %rdx
	orq	%rax, %rdx
	movq	%rdx, %r9			/* start */
1:	cmpl	(%r8), %esi
	jbe	2f
	pause
	rdtsc
	shlq	$32, %rdx
	orq	%rax, %rdx
	subq	%r9, %rdx
	movq	$(AP_WAIT_MS * TSC_TICKS_PER_MS), %rax
	cmpq	%rax, %rdx
	jb	1b
2:	movl	(%r8), %eax
	ret

/* smp_record_cpu(apic_id: edi, flags: esi): mptable_foreach_cpu callback. */
smp_record_cpu:
	movl	smp_ncpus(%rip), %eax
	cmpl	$MAX_CPUS, %eax
	jae	1f
	leaq	smp_apic_ids(%rip), %rcx
	movl	%edi, (%rcx, %rax, 4)
	incl	smp_ncpus(%rip)
1:	ret

/* start_ap(apic_id: edi): INIT, 10 ms, SIPI, 200 us, SIPI, 200 us. */
start_ap:
	pushq	%rbx
	movl	%edi, %ebx
	movl	$ICR_INIT, %esi
	call	lapic_send_ipi
	movq	$(INIT_DELAY_MS * TSC_TICKS_PER_MS), %rdi
	call	delay_tsc
	movl	%ebx, %edi
	movl	$(ICR_STARTUP + SIPI_VECTOR), %esi
	call	lapic_send_ipi
	movq	$(SIPI_DELAY_US * TSC_TICKS_PER_MS / 1000), %rdi
	call	delay_tsc
	movl	%ebx, %edi
	movl	$(ICR_STARTUP + SIPI_VECTOR), %esi
	call	lapic_send_ipi
	movq	$(SIPI_DELAY_US * TSC_TICKS_PER_MS / 1000), %rdi
	call	delay_tsc
	popq	%rbx
	ret

/* lapic_read(reg: edi) -> eax */
	.globl	lapic_read
lapic_read:
	movl	$LAPIC_BASE, %eax
	movl	%edi, %edi
	movl	(%rax, %rdi), %eax
	ret

/* lapic_write(reg: edi, value: esi) */
	.globl	lapic_write
lapic_write:
	movl	$LAPIC_BASE, %eax
	movl	%edi, %edi
	movl	%esi, (%rax, %rdi)
	ret

/* lapic_send_ipi(apic_id: edi, icr_low: esi): send and wait for delivery. */
	.globl	lapic_send_ipi
lapic_send_ipi:
	pushq	%rbx
	movl	%esi, %ebx
	movl	%edi, %esi
	shll	$24, %esi
	movl	$LAPIC_ICR_HIGH, %edi
	call	lapic_write
	movl	%ebx, %esi
	movl	$LAPIC_ICR_LOW, %edi
	call	lapic_write
	movl	$1000000, %ebx
1:	movl	$LAPIC_ICR_LOW, %edi
	call	lapic_read
	testl	$ICR_DELIVERY_PENDING, %eax
	jz	2f
	pause
	decl	%ebx
	jnz	1b
2:	popq	%rbx
	ret

/* delay_tsc(ticks: rdi): spin with pause until rdtsc has advanced by ticks. */
	.globl	delay_tsc
delay_tsc:
	rdtsc
	shlq	$32, %rdx
	orq	%rax, %rdx
	movq	%rdx, %rsi
1:	pause
	rdtsc
	shlq	$32, %rdx
	orq	%rax, %rdx
	subq	%rsi, %rdx
	cmpq	%rdi, %rdx
	jb	1b
	ret

	.data
	.balign	8
/* What each AP calls once in long mode (smp_start_aps). */
ap_main_ptr:	.quad	0
	.globl	cpus_up
/* CPUs that reached ap_entry64 and printed, plus the BSP. */
cpus_up:	.long	0
/* Next AP stack index (lock xadd). */
ap_next_index:	.long	0
smp_ncpus:	.long	0

	.bss
	.balign	4
smp_apic_ids:
	.skip	MAX_CPUS * 4
	.balign	4096
ap_stacks:
	.skip	MAX_CPUS * AP_STACK_SIZE
