#!/usr/bin/env bash
# Build the Hearth Linux guest kit: a minimal Linux 6.1 kernel (ELF vmlinux
# with a PVH note, and bzImage) plus a busybox initramfs and the same tree as
# an ext4 root disk image (rootfs.ext4, for root=/dev/vda).
#
#   resources/linux/build-kit.sh            # outputs in /var/cache/hearth/kit
#   HEARTH_KIT_DIR=/some/dir build-kit.sh   # elsewhere
#
# Idempotent: the outputs are keyed on a hash of the kernel patch(es), the
# config fragment, the initramfs and root image recipes and the Debian
# package versions of linux-source-6.1 / busybox-static / e2fsprogs. A run whose key matches the existing
# stamp does nothing. See README.md next to this script.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KIT_DIR="${HEARTH_KIT_DIR:-/var/cache/hearth/kit}"
BUILD_DIR="$KIT_DIR/build"
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
SRC_NAME=linux-source-6.1
FRAGMENT="$HERE/hearth.config"
INIT_SCRIPT="$HERE/init"
JOBS="$(nproc)"

log() { printf 'build-kit: %s\n' "$*" >&2; }
die() { printf 'build-kit: ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(uname -m)" = x86_64 ] || die "this kit builds an x86_64 kernel natively; host is $(uname -m)"

shopt -s nullglob
PATCHES=("$HERE"/*.patch)
shopt -u nullglob
[ "${#PATCHES[@]}" -gt 0 ] || die "no *.patch in $HERE"
[ -f "$FRAGMENT" ] || die "missing $FRAGMENT"
[ -f "$INIT_SCRIPT" ] || die "missing $INIT_SCRIPT"

# --- packages -------------------------------------------------------------------
# Binary needed -> package that provides it on Debian 12.
REQUIRED_PKGS=(linux-source-6.1 busybox-static build-essential flex bison
               libelf-dev libssl-dev bc cpio xz-utils gzip util-linux e2fsprogs)

ensure_packages() {
    local missing=() p
    for p in "${REQUIRED_PKGS[@]}"; do
        if ! dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed; then
            missing+=("$p")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing missing packages: ${missing[*]}"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "not root and no sudo; install: ${missing[*]}"
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${missing[@]}"
}

pkg_version() { dpkg-query -W -f='${Version}' "$1"; }

# --- cache keys -------------------------------------------------------------------
# The functions below are part of the keys (via `declare -f`), so changing how
# the kernel or the initramfs is built invalidates the cache as well.

build_kernel() {
    local tree="$BUILD_DIR/$SRC_NAME" p
    log "unpacking $SRC_TARBALL into $BUILD_DIR"
    rm -rf "$tree"
    tar -C "$BUILD_DIR" -xf "$SRC_TARBALL"
    [ -d "$tree" ] || die "tarball did not contain $SRC_NAME/"
    for p in "${PATCHES[@]}"; do
        log "applying $(basename "$p")"
        patch -d "$tree" -p1 --forward --batch < "$p"
    done

    local mk=(make -C "$tree" ARCH=x86_64
              KBUILD_BUILD_USER=hearth KBUILD_BUILD_HOST=hearth
              "KBUILD_BUILD_TIMESTAMP=$(date -u -d @0)")
    log "configuring: allnoconfig + $(basename "$FRAGMENT"), then olddefconfig"
    "${mk[@]}" KCONFIG_ALLCONFIG="$FRAGMENT" allnoconfig >/dev/null
    "${mk[@]}" olddefconfig >/dev/null
    check_config "$FRAGMENT" "$tree/.config"

    log "building vmlinux and bzImage with -j$JOBS (a few minutes)"
    "${mk[@]}" -j"$JOBS" vmlinux bzImage
    # gen_init_cpio is kept so that the initramfs can be rebuilt alone.
    gcc -O2 -o "$BUILD_DIR/gen_init_cpio" "$tree/usr/gen_init_cpio.c"

    cp "$tree/vmlinux" "$KIT_DIR/vmlinux.tmp"
    cp "$tree/arch/x86/boot/bzImage" "$KIT_DIR/bzImage.tmp"
    cp "$tree/.config" "$KIT_DIR/config.tmp"
    mv -f "$KIT_DIR/vmlinux.tmp" "$KIT_DIR/vmlinux"
    mv -f "$KIT_DIR/bzImage.tmp" "$KIT_DIR/bzImage"
    mv -f "$KIT_DIR/config.tmp" "$KIT_DIR/config"
}

# Fail unless every option of the fragment has the requested value in .config.
# "# CONFIG_X is not set" (or CONFIG_X=n) means: not =y/=m/=value in .config.
check_config() {
    local fragment="$1" config="$2" line sym want got bad=()
    while IFS= read -r line || [ -n "$line" ]; do
        if [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set ]]; then
            sym="${BASH_REMATCH[1]}"; want=n
        elif [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            sym="${BASH_REMATCH[1]}"; want="${BASH_REMATCH[2]}"
        else
            continue
        fi
        got="$(grep -E "^${sym}=" "$config" | head -n1 | cut -d= -f2- || true)"
        [ -n "$got" ] || got=n
        if [ "$want" != "$got" ]; then
            bad+=("$sym: wanted $want, got $got")
        fi
    done < "$fragment"
    if [ "${#bad[@]}" -gt 0 ]; then
        printf 'build-kit: ERROR: %d option(s) of %s did not take effect:\n' \
            "${#bad[@]}" "$fragment" >&2
        printf '  %s\n' "${bad[@]}" >&2
        die "fix the fragment (missing dependency?) and rerun"
    fi
    log "config check: all options of $(basename "$fragment") took effect"
}

make_initramfs() {
    local gen="$BUILD_DIR/gen_init_cpio" list="$BUILD_DIR/initramfs.list"
    local bb=/bin/busybox applet dir
    if [ ! -x "$gen" ]; then
        log "extracting gen_init_cpio.c"
        tar -C "$BUILD_DIR" -xf "$SRC_TARBALL" "$SRC_NAME/usr/gen_init_cpio.c"
        gcc -O2 -o "$gen" "$BUILD_DIR/$SRC_NAME/usr/gen_init_cpio.c"
    fi
    [ -x "$bb" ] || die "$bb missing (busybox-static)"
    {
        for dir in /bin /sbin /usr /usr/bin /usr/sbin /dev /proc /sys /tmp /root /etc /mnt /run; do
            echo "dir $dir 0755 0 0"
        done
        echo "nod /dev/console 0600 0 0 c 5 1"
        echo "nod /dev/null 0666 0 0 c 1 3"
        echo "file /bin/busybox $bb 0755 0 0"
        echo "file /init $INIT_SCRIPT 0755 0 0"
        # One symlink per applet, at the path busybox itself reports.
        "$bb" --list-full | sort | while read -r applet; do
            [ "$applet" = bin/busybox ] && continue
            echo "slink /$applet /bin/busybox 0777 0 0"
        done
    } > "$list"
    # Both forms: the gzip one is the canonical artefact; the plain one boots
    # ~14 s faster under kvm_pvm, where inflating in guest ring 0 is slow.
    "$gen" -t 0 "$list" > "$KIT_DIR/initramfs.cpio.tmp"
    gzip -9 -n -c "$KIT_DIR/initramfs.cpio.tmp" > "$KIT_DIR/initramfs.cpio.gz.tmp"
    mv -f "$KIT_DIR/initramfs.cpio.tmp" "$KIT_DIR/initramfs.cpio"
    mv -f "$KIT_DIR/initramfs.cpio.gz.tmp" "$KIT_DIR/initramfs.cpio.gz"
}

# The initramfs's tree as an ext4 image (mke2fs -d): busybox and its applet
# links, and the kit's init script at /sbin/init, where the kernel looks
# first on a root disk ("Run /sbin/init as init process").
make_rootfs() {
    local tree="$BUILD_DIR/rootfs" bb=/bin/busybox applet dir
    [ -x "$bb" ] || die "$bb missing (busybox-static)"
    rm -rf "$tree"
    for dir in bin sbin usr/bin usr/sbin dev proc sys tmp root etc mnt run; do
        mkdir -p "$tree/$dir"
    done
    cp "$bb" "$tree/bin/busybox"
    "$bb" --list-full | sort | while read -r applet; do
        [ "$applet" = bin/busybox ] && continue
        ln -sf /bin/busybox "$tree/$applet"
    done
    rm -f "$tree/sbin/init"
    install -m 0755 "$INIT_SCRIPT" "$tree/sbin/init"
    rm -f "$KIT_DIR/rootfs.ext4.tmp"
    mke2fs -q -t ext4 -F -L hearth-root -d "$tree" -E root_owner=0:0 \
        "$KIT_DIR/rootfs.ext4.tmp" 16M
    mv -f "$KIT_DIR/rootfs.ext4.tmp" "$KIT_DIR/rootfs.ext4"
}

kernel_key() {
    {
        echo "linux-source-6.1 $(pkg_version linux-source-6.1)"
        sha256sum "${PATCHES[@]}" "$FRAGMENT" | cut -d' ' -f1
        declare -f build_kernel check_config
    } | sha256sum | cut -d' ' -f1
}

initramfs_key() {
    {
        echo "busybox-static $(pkg_version busybox-static)"
        sha256sum "$INIT_SCRIPT" | cut -d' ' -f1
        declare -f make_initramfs
    } | sha256sum | cut -d' ' -f1
}

rootfs_key() {
    {
        echo "busybox-static $(pkg_version busybox-static)"
        echo "e2fsprogs $(pkg_version e2fsprogs)"
        sha256sum "$INIT_SCRIPT" | cut -d' ' -f1
        declare -f make_rootfs
    } | sha256sum | cut -d' ' -f1
}

print_outputs() {
    echo "kit dir:    $KIT_DIR"
    echo "vmlinux:    $KIT_DIR/vmlinux"
    echo "bzImage:    $KIT_DIR/bzImage"
    echo "initramfs:  $KIT_DIR/initramfs.cpio.gz"
    echo "initramfs (uncompressed): $KIT_DIR/initramfs.cpio"
    echo "root disk:  $KIT_DIR/rootfs.ext4 (ext4, /sbin/init)"
    echo "config:     $KIT_DIR/config"
    echo "stamp:      $KIT_DIR/stamp"
    printf 'cmdline:    %s\n' "$(cat "$HERE/cmdline.txt")"
}

stamp_field() { sed -n "s/^$1=//p" "$KIT_DIR/stamp" 2>/dev/null || true; }

# --- main ---------------------------------------------------------------------------
ensure_packages
[ -f "$SRC_TARBALL" ] || die "$SRC_TARBALL missing even though linux-source-6.1 is installed"

mkdir -p "$KIT_DIR" "$BUILD_DIR"
# Serialise concurrent runs (e.g. parallel CI jobs sharing the cache).
exec 9>"$KIT_DIR/.lock"
flock 9

KKEY="$(kernel_key)"
IKEY="$(initramfs_key)"
RKEY="$(rootfs_key)"

initramfs_ok() {
    [ "$(stamp_field initramfs)" = "$IKEY" ] &&
        [ -s "$KIT_DIR/initramfs.cpio.gz" ] && [ -s "$KIT_DIR/initramfs.cpio" ]
}
rootfs_ok() { [ "$(stamp_field rootfs)" = "$RKEY" ] && [ -s "$KIT_DIR/rootfs.ext4" ]; }

if [ "$(stamp_field kernel)" = "$KKEY" ] && initramfs_ok && rootfs_ok &&
   [ -s "$KIT_DIR/vmlinux" ] && [ -s "$KIT_DIR/bzImage" ]; then
    log "up to date (kernel ${KKEY:0:12}, initramfs ${IKEY:0:12}, rootfs ${RKEY:0:12})"
    print_outputs
    exit 0
fi

if [ "$(stamp_field kernel)" = "$KKEY" ] && [ -s "$KIT_DIR/vmlinux" ] && [ -s "$KIT_DIR/bzImage" ]; then
    log "kernel up to date (${KKEY:0:12})"
else
    rm -f "$KIT_DIR/stamp"
    build_kernel
fi
# From here on the stamp vouches for the kernel and what is still current.
{
    echo "kernel=$KKEY"
    initramfs_ok && echo "initramfs=$IKEY"
    rootfs_ok && echo "rootfs=$RKEY"
} > "$KIT_DIR/stamp.tmp" || true
mv -f "$KIT_DIR/stamp.tmp" "$KIT_DIR/stamp"
if ! initramfs_ok; then
    log "building initramfs"
    make_initramfs
fi
if ! rootfs_ok; then
    log "building the ext4 root disk"
    make_rootfs
fi

{
    echo "kernel=$KKEY"
    echo "initramfs=$IKEY"
    echo "rootfs=$RKEY"
    echo "linux-source-6.1=$(pkg_version linux-source-6.1)"
    echo "busybox-static=$(pkg_version busybox-static)"
    echo "e2fsprogs=$(pkg_version e2fsprogs)"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$KIT_DIR/stamp.tmp"
mv -f "$KIT_DIR/stamp.tmp" "$KIT_DIR/stamp"
log "done"
print_outputs
