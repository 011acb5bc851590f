#!/usr/bin/env bash
# Boot the guest kit under QEMU's microvm with KVM, as a reference for Hearth:
#
#   resources/linux/qemu-smoke.sh [VCPUS] [LOGFILE]
#
# Prints every console line with the wall time since QEMU was started, then a
# summary: seconds until "Run /init as init process", how many CPUs came up,
# and whether QEMU exited by itself (it should: panic=-1 reboot=k makes the
# guest reset through the i8042 after user space faults, and -no-reboot turns
# that reset into an exit). Exit status 0 iff "Run /init" was reached and QEMU
# exited on its own. Environment: HEARTH_KIT_DIR (kit location),
# QEMU_TIMEOUT (seconds, default 400), QEMU_CPU (default host),
# QEMU_EXTRA_APPEND (appended to cmdline.txt), QEMU_INITRD (default
# $HEARTH_KIT_DIR/initramfs.cpio.gz), QEMU_I8042 (default 1: add an i8042,
# which microvm lacks, so that reboot=k reaches QEMU and -no-reboot exits).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KIT_DIR="${HEARTH_KIT_DIR:-/var/cache/hearth/kit}"
VCPUS="${1:-1}"
LOG="${2:-/dev/null}"
CMDLINE="$(cat "$HERE/cmdline.txt")${QEMU_EXTRA_APPEND:+ $QEMU_EXTRA_APPEND}"

exec python3 - "$KIT_DIR" "$VCPUS" "$LOG" "$CMDLINE" "${QEMU_TIMEOUT:-400}" "${QEMU_CPU:-host}" \
    "${QEMU_INITRD:-$KIT_DIR/initramfs.cpio.gz}" "${QEMU_I8042:-1}" <<'EOF'
import re, subprocess, sys, time
kit, vcpus, logpath, cmdline, timeout, cpu, initrd, i8042 = sys.argv[1:9]
argv = ["timeout", timeout, "qemu-system-x86_64", "-M", "microvm,acpi=off",
        "-enable-kvm", "-cpu", cpu, "-m", "256", "-smp", vcpus,
        "-nographic", "-no-reboot", "-kernel", f"{kit}/vmlinux",
        "-initrd", initrd, "-append", cmdline]
if i8042 == "1":
    argv[-2:-2] = ["-device", "i8042"]
print("+ " + " ".join(a if " " not in a else repr(a) for a in argv), flush=True)
t0 = time.monotonic()
p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                     stdin=subprocess.DEVNULL)
marks = {}
with open(logpath, "w") as log:
    for raw in p.stdout:
        t = time.monotonic() - t0
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        out = f"[{t:8.3f}] {line}"
        print(out, flush=True)
        log.write(out + "\n")
        for key, pat in (("first output", r"."),
                         ("Run /init", r"Run /init as init process"),
                         ("smp", r"smp: Brought up"),
                         ("panic", r"Kernel panic"),
                         ("internal error", r"KVM internal error|emulation failure")):
            if key not in marks and re.search(pat, line):
                marks[key] = (t, line)
rc = p.wait()
total = time.monotonic() - t0
print("---- summary")
for key, (t, line) in marks.items():
    print(f"{key:15s} {t:8.3f} s  {line.strip()[:100]}")
print(f"qemu exit       {total:8.3f} s  rc={rc}" + (" (timeout)" if rc == 124 else ""))
ok = "Run /init" in marks and rc != 124
sys.exit(0 if ok else 1)
EOF
