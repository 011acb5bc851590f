/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: the scenario table and the simple scenarios.
 *
 * The command line token hearth.scenario=NAME picks a row of
 * scenario_table (default: hello). To add a scenario, write a function that
 * prints its lines (line_begin ... line_end) and returns, and add a
 * SCENARIO row for it below; the guest resets when the function returns.
 */
#include "guest.h"

	.section .rodata
	.balign	8
scenario_table:
	SCENARIO hello, scenario_hello
	SCENARIO smp, scenario_smp
	SCENARIO spin, scenario_spin
	SCENARIO probe, scenario_probe
	SCENARIO exit, scenario_exit
	SCENARIO idle, scenario_idle
	SCENARIO triple-fault, scenario_triple_fault
	SCENARIO wild-jump, scenario_wild_jump
	SCENARIO balloon, scenario_balloon
	SCENARIO mem-grow, scenario_mem_grow
	SCENARIO mem-idle, scenario_mem_idle
	SCENARIO bad-virtio, scenario_bad_virtio
	SCENARIO blk-info, scenario_blk_info
	SCENARIO blk-read, scenario_blk_read
	SCENARIO blk-write, scenario_blk_write
	SCENARIO blk-err, scenario_blk_err
	SCENARIO blk-loop, scenario_blk_loop
	SCENARIO blk-bench, scenario_blk_bench
	SCENARIO blk-bad, scenario_blk_bad
	SCENARIO net-info, scenario_net_info
	SCENARIO net-tx, scenario_net_tx
	SCENARIO net-rx, scenario_net_rx
	SCENARIO net-arp, scenario_net_arp
	SCENARIO net-flood, scenario_net_flood
	SCENARIO net-bench, scenario_net_bench
	SCENARIO hostile, scenario_hostile
	SCENARIO vsock-echo, scenario_vsock_echo
	SCENARIO vsock-connect, scenario_vsock_connect
	.quad	0, 0				/* end of the table */

scenario_key:
	.asciz	"hearth.scenario"
default_scenario:
	.ascii	"hello"
default_scenario_end:

	.text
	.code64

/* run_scenario(): look up hearth.scenario and run it. */
	.globl	run_scenario
run_scenario:
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	leaq	scenario_key(%rip), %rdi
	call	cmdline_get
	testq	%rax, %rax
	jnz	1f
	leaq	default_scenario(%rip), %rax
	movl	$(default_scenario_end - default_scenario), %edx
1:	movq	%rax, %r12			/* name */
	movq	%rdx, %r13			/* its length */
	leaq	scenario_table(%rip), %rbx
2:	movq	(%rbx), %rdi
	testq	%rdi, %rdi
	jz	.Lunknown
	movq	%r12, %rsi
	movq	%r13, %rdx
	call	name_equals
	testl	%eax, %eax
	jnz	.Lfound
	addq	$16, %rbx
	jmp	2b
.Lfound:
	call	*8(%rbx)
	jmp	.Lreturn
.Lunknown:
	call	line_begin
	PUTS	"unknown scenario "
	movq	%r12, %rdi
	movq	%r13, %rsi
	call	putsn
	call	line_end
.Lreturn:
	popq	%r13
	popq	%r12
	popq	%rbx
	ret

/* name_equals(name: rdi NUL-terminated, s: rsi, len: rdx) -> eax = 1 if equal */
	.globl	name_equals
name_equals:
	xorl	%ecx, %ecx
1:	cmpq	%rdx, %rcx
	je	2f
	movb	(%rdi, %rcx), %al
	testb	%al, %al
	jz	3f
	cmpb	(%rsi, %rcx), %al
	jne	3f
	incq	%rcx
	jmp	1b
2:	cmpb	$0, (%rdi, %rcx)
	jne	3f
	movl	$1, %eax
	ret
3:	xorl	%eax, %eax
	ret

/*
 * hello: report the memory map and the MP table's CPU count.
 *   hearth-guest: memory ram_kib=<KiB> regions=<n> top_mib=<MiB>
 *   hearth-guest: cpus mptable=<n>
 *   hearth-guest: HELLO OK
 */
scenario_hello:
	call	memmap_ram_summary
	call	line_begin
	PUTS	"memory ram_kib="
	movq	ram_total_bytes(%rip), %rdi
	shrq	$10, %rdi
	call	put_dec
	PUTS	" regions="
	movq	ram_regions(%rip), %rdi
	call	put_dec
	PUTS	" top_mib="
	movq	ram_top(%rip), %rdi
	shrq	$20, %rdi
	call	put_dec
	call	line_end

	xorl	%edi, %edi
	call	mptable_foreach_cpu
	pushq	%rax
	call	line_begin
	PUTS	"cpus mptable="
	popq	%rdi
	call	put_dec
	call	line_end

	call	line_begin
	PUTS	"HELLO OK"
	jmp	line_end

/* exit: hearth-guest: EXIT, then reset at once. */
scenario_exit:
	call	line_begin
	PUTS	"EXIT"
	jmp	line_end

/*
 * idle: hearth-guest: IDLE, then halt with interrupts off, forever: only
 * the monitor can end this VM (a signal, the console's quit key).
 */
scenario_idle:
	call	line_begin
	PUTS	"IDLE"
	call	line_end
1:	cli
	hlt
	jmp	1b

/*
 * triple-fault: hearth-guest: TRIPLE FAULT, then an exception with an
 * empty IDT: #UD cannot be delivered, nor the #DF that follows, so the CPU
 * shuts down (KVM_EXIT_SHUTDOWN).
 */
scenario_triple_fault:
	call	line_begin
	PUTS	"TRIPLE FAULT"
	call	line_end
	lidt	empty_idt_desc(%rip)
	ud2

/*
 * wild-jump: hearth-guest: WILD JUMP, then execute from the MMIO gap where
 * no memory is: KVM cannot fetch the instruction (KVM_EXIT_INTERNAL_ERROR).
 */
#define WILD_JUMP_TARGET	0xd0000000
scenario_wild_jump:
	call	line_begin
	PUTS	"WILD JUMP"
	call	line_end
	movl	$WILD_JUMP_TARGET, %eax
	jmp	*%rax

	.section .rodata
	.balign	8
empty_idt_desc:
	.word	0
	.quad	0
