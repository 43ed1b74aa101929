#!/usr/bin/env bash
# Capture real Linux guests under QEMU/TCG: two of Debian 12's 6.1 (4-level and
# 5-level paging) for introvisor's page-table walker test (memory dump, registers,
# and QEMU's own gva2gpa answers and bytes for a few thousand virtual addresses),
# and three light ones for the Linux layer's test (6.1 with KASLR and pti=on, and
# bookworm-backports' 6.12, 4-level without KASLR and 5-level with KASLR and
# pti=on: registers and a dump only). Every guest loads two modules of its kernel
# package and records /proc/*/stat, /proc/modules and a /proc/kallsyms sample.
# See README.md beside this file.
#
# Usage: capture.sh [OUTDIR]
#   OUTDIR defaults to ${INTROVISOR_REAL_GUEST_DIR:-$HOME/.cache/introvisor/real-guest}
# Environment:
#   INTROVISOR_REAL_GUEST_CACHE   build cache (kernel, initramfs); default
#                                 $HOME/.cache/introvisor/real-guest-build
#   INTROVISOR_REAL_GUEST_KERNEL  Debian kernel package to boot (default: what
#                                 linux-image-amd64 depends on)
# Exit status: 0 captures ready (made now or cached), 77 package archive
# unreachable (the only skip), anything else a failure.
set -euo pipefail

# Bump when anything that shapes the captures changes (this script, qmp.py,
# init.sh, mkcpio.py): the stamp holds it, so old captures get redone.
CAPTURE_VERSION=2

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUTDIR=${1:-${INTROVISOR_REAL_GUEST_DIR:-$HOME/.cache/introvisor/real-guest}}
CACHE=${INTROVISOR_REAL_GUEST_CACHE:-$HOME/.cache/introvisor/real-guest-build}
MEM=2304M
APPEND="console=ttyS0 nokaslr nopti nopcid quiet panic=-1"
CPU_L4="max,la57=off"
CPU_L5="max"
MODES="4 5"
FILES="dump.elf regs.txt cr3.txt mode.txt translations.tsv bytes.tsv counts.txt procstat.txt modules.txt ksample.txt"
# The light guests: name, kernel (61 or 612), paging mode, -cpu, kernel options.
LIGHT_GUESTS="k61-kaslr-pti:61:4:max,la57=off:kaslr_pti=on
k612-l4:612:4:max,la57=off:nokaslr_nopti
k612-l5-kaslr-pti:612:5:max:kaslr_pti=on"
LIGHT_MEM=1024M
LIGHT_FILES="dump.elf regs.txt cr3.txt mode.txt procstat.txt modules.txt ksample.txt"
# The modules each guest loads (no dependencies, in every Debian kernel package).
MODULES="kernel/drivers/net/dummy.ko kernel/lib/crc-itu-t.ko"
# bookworm-backports, read through a private apt state so the system's sources
# stay as they are.
BPO_SUITE="deb http://deb.debian.org/debian bookworm-backports main"

say() { echo "real-guest: $*" >&2; }
die() { say "FAIL: $*"; exit 1; }
skip() { say "SKIP: package archive unreachable ($*)"; exit 77; }

APT_OPTS=(-o DPkg::Lock::Timeout=300 -o APT::Sandbox::User=root)
NET_ERR='Failed to fetch|Could not resolve|Temporary failure|Unable to connect|Could not connect|Connection failed|Connection timed out|Network is unreachable|No route to host'

# Run an apt command. A failure is a skip when it looks like the network
# ($NET_ERR in its output, or an earlier apt-get update could not fetch);
# with policy "skip" any failure is. Sets NET_DOWN=1 when apt printed network
# errors even though it succeeded (apt-get update only warns about those).
NET_DOWN=0
apt_run() {
    local policy=$1; shift
    local log rc=0 tail
    log=$(mktemp)
    "$@" >"$log" 2>&1 || rc=$?
    if grep -Eq "$NET_ERR|Some index files failed" "$log"; then
        NET_DOWN=1
    fi
    tail=$(grep -E '^(E|W|Err):' "$log" | tail -n 3 | tr '\n' ' ' || true)
    [ -n "$tail" ] || tail=$(tail -n 3 "$log" | tr '\n' ' ' || true)
    rm -f "$log"
    [ "$rc" = 0 ] && return 0
    if [ "$policy" = skip ] || [ "$NET_DOWN" = 1 ]; then
        skip "$* failed: $tail"
    fi
    die "$* failed: $tail"
}

# KPKG/KVER from the local apt lists (no network).
resolve_kernel() {
    KPKG=${INTROVISOR_REAL_GUEST_KERNEL:-}
    if [ -z "$KPKG" ]; then
        KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null |
               awk '$1 == "Depends:" && $2 ~ /^linux-image-/ && !n++ {print $2}')
    fi
    [ -n "$KPKG" ] || return 1
    KVER=$(apt-cache policy "$KPKG" 2>/dev/null | awk '$1 == "Candidate:" && !n++ {print $2}')
    [ -n "$KVER" ] && [ "$KVER" != "(none)" ]
}

BPO_DIR=$CACHE/apt-bpo
BPO_OPTS=(-o "Dir::Etc::SourceList=$BPO_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$BPO_DIR/lists" -o "Dir::Cache=$BPO_DIR/cache"
          -o "Dir::State::status=$BPO_DIR/status")
# K612PKG/K612VER from the private backports lists (no network).
resolve_kernel_612() {
    [ -f "$BPO_DIR/sources.list" ] || return 1
    K612PKG=$(apt-cache "${BPO_OPTS[@]}" depends linux-image-amd64 2>/dev/null |
              awk '$1 == "Depends:" && $2 ~ /^linux-image-6\.12/ && !n++ {print $2}')
    [ -n "$K612PKG" ] || return 1
    K612VER=$(apt-cache "${BPO_OPTS[@]}" policy "$K612PKG" 2>/dev/null |
              awk '$1 == "Candidate:" && !n++ {print $2}')
    [ -n "$K612VER" ] && [ "$K612VER" != "(none)" ]
}

stamp_text() {
    printf 'introvisor real-guest capture v%s\nkernel %s %s\nkernel %s %s\n' \
        "$CAPTURE_VERSION" "$KPKG" "$KVER" "${K612PKG:-}" "${K612VER:-}"
}

captures_complete() {
    [ -f "$OUTDIR/stamp" ] || return 1
    [ "$(cat "$OUTDIR/stamp")" = "$(stamp_text)" ] || return 1
    local m f g
    for m in $MODES; do
        for f in $FILES; do
            [ -s "$OUTDIR/l$m/$f" ] || return 1
        done
    done
    for g in $LIGHT_GUESTS; do
        for f in $LIGHT_FILES; do
            [ -s "$OUTDIR/${g%%:*}/$f" ] || return 1
        done
    done
}

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

T0=$(date +%s)

# 1. Fast path: complete captures for this script version and kernel.
if resolve_kernel && resolve_kernel_612 && captures_complete; then
    say "captures in $OUTDIR are up to date ($KPKG $KVER, $K612PKG $K612VER); nothing to do"
    exit 0
fi

# 2. Packages.
say "apt-get update"
apt_run skip apt-get "${APT_OPTS[@]}" update
[ "$NET_DOWN" = 0 ] || say "apt-get update could not fetch everything; going on with the lists we have"
if ! resolve_kernel; then
    [ "$NET_DOWN" = 0 ] || skip "apt-get update could not fetch the package lists"
    die "cannot resolve a kernel package (linux-image-amd64 or \$INTROVISOR_REAL_GUEST_KERNEL)"
fi
say "apt-get update (bookworm-backports, private lists in $BPO_DIR)"
mkdir -p "$BPO_DIR/lists/partial" "$BPO_DIR/cache/archives/partial"
: >"$BPO_DIR/status"
echo "$BPO_SUITE" >"$BPO_DIR/sources.list"
apt_run skip apt-get "${APT_OPTS[@]}" "${BPO_OPTS[@]}" update
resolve_kernel_612 || skip "no linux-image-6.12 in bookworm-backports"
if captures_complete; then
    say "captures in $OUTDIR are up to date ($KPKG $KVER, $K612PKG $K612VER); nothing to do"
    exit 0
fi
need=()
for p in qemu-system-x86 busybox-static; do
    installed "$p" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    apt_run net env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" \
        install -y --no-install-recommends "${need[@]}"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after install"
BUSYBOX=$(dpkg -L busybox-static | grep '/bin/busybox$' | sed -n 1p || true)
[ -n "$BUSYBOX" ] && [ -x "$BUSYBOX" ] || die "busybox-static's busybox not found"

# 3. Kernels: download each .deb and keep only vmlinuz, config and $MODULES
#    (decompressed: busybox insmod reads plain .ko files).
# fetch_kernel PKG VER [apt options...]: sets KDIR
fetch_kernel() {
    local pkg=$1 ver=$2; shift 2
    KDIR=$CACHE/kernel/${pkg}_$ver
    if [ -f "$KDIR/.complete" ] && [ -n "$(ls "$KDIR/modules" 2>/dev/null)" ]; then
        return 0
    fi
    say "fetching kernel $pkg $ver"
    rm -rf "$KDIR" "$CACHE"/kernel/tmp.*
    mkdir -p "$KDIR/modules"
    local work deb mod base
    work=$(mktemp -d "$CACHE/kernel/tmp.XXXXXX")
    (cd "$work" && apt_run skip apt-get "${APT_OPTS[@]}" "$@" download "$pkg=$ver")
    deb=$(ls "$work"/*.deb)
    local wanted=()
    for mod in $MODULES; do wanted+=("./lib/modules/*/$mod*"); done
    dpkg-deb --fsys-tarfile "$deb" |
        tar -x -C "$work" --wildcards './boot/vmlinuz-*' './boot/config-*' "${wanted[@]}"
    cp "$work"/boot/vmlinuz-* "$KDIR/vmlinuz"
    cp "$work"/boot/config-* "$KDIR/config"
    for mod in $MODULES; do
        base=$(basename "$mod")
        if [ -f "$work"/lib/modules/*/"$mod" ]; then
            cp "$work"/lib/modules/*/"$mod" "$KDIR/modules/$base"
        elif [ -f "$work"/lib/modules/*/"$mod.xz" ]; then
            xz -dc "$work"/lib/modules/*/"$mod.xz" >"$KDIR/modules/$base"
        else
            die "$pkg has no $mod"
        fi
    done
    rm -rf "$work"
    printf '%s %s\n' "$pkg" "$ver" >"$KDIR/.complete"
}
fetch_kernel "$KPKG" "$KVER"
KDIR_61=$KDIR
fetch_kernel "$K612PKG" "$K612VER" "${BPO_OPTS[@]}"
KDIR_612=$KDIR
for KDIR in "$KDIR_61" "$KDIR_612"; do
    grep -q '^CONFIG_X86_5LEVEL=y' "$KDIR/config" || die "$KDIR: kernel lacks CONFIG_X86_5LEVEL"
    grep -q '^CONFIG_BLK_DEV_INITRD=y' "$KDIR/config" || die "$KDIR: kernel lacks initrd support"
done
KDIR=$KDIR_61

# 4. Initramfs (busybox + init.sh), cached by the hash of its inputs.
# initramfs_for KDIR: sets INITRD (busybox, init.sh and that kernel's modules)
initramfs_for() {
    local key
    key=$(cat "$HERE/init.sh" "$HERE/mkcpio.py" "$BUSYBOX" "$1"/modules/*.ko | sha256sum | cut -c1-16)
    INITRD=$CACHE/initramfs-$key.cpio.gz
    if [ ! -s "$INITRD" ]; then
        say "building initramfs for $1"
        mkdir -p "$CACHE"
        python3 "$HERE/mkcpio.py" "$INITRD" "$BUSYBOX" "$HERE/init.sh" "$1"/modules/*.ko
    fi
}
initramfs_for "$KDIR_612"
INITRD_612=$INITRD
initramfs_for "$KDIR_61"
INITRD_61=$INITRD

# 5. The two captures.
mkdir -p "$OUTDIR"
rm -f "$OUTDIR/stamp"
RUN=$(mktemp -d /tmp/introvisor-real-guest.XXXXXX)
trap 'rm -rf "$RUN"' EXIT
QEMU_VERSION=$(qemu-system-x86_64 --version | sed -n 1p)
for m in $MODES; do
    if [ "$m" = 4 ]; then cpu=$CPU_L4; else cpu=$CPU_L5; fi
    part=$OUTDIR/l$m.partial
    rm -rf "$part" "$OUTDIR/l$m"   # old dumps are 2.3 GB each: free them first
    mkdir -p "$part"
    say "l$m: booting (-cpu $cpu -m $MEM, TCG)"
    python3 "$HERE/qmp.py" --mode "$m" --out "$part" \
        --serial "$RUN/serial-l$m.log" --qmp-sock "$RUN/qmp-l$m.sock" -- \
        qemu-system-x86_64 -accel tcg -machine pc -cpu "$cpu" -smp 1 -m "$MEM" \
        -nodefaults -no-user-config -display none -no-reboot \
        -serial "file:$RUN/serial-l$m.log" \
        -qmp "unix:$RUN/qmp-l$m.sock,server=on,wait=off" \
        -kernel "$KDIR_61/vmlinuz" -initrd "$INITRD_61" -append "$APPEND" ||
        die "l$m capture failed (partial output in $part)"
    {
        echo "qemu $QEMU_VERSION"
        echo "qemu_cpu $cpu"
        echo "qemu_mem $MEM"
        echo "kernel_package $KPKG $KVER"
        echo "capture_version $CAPTURE_VERSION"
    } >>"$part/layout.txt"
    mv "$part" "$OUTDIR/l$m"
done
T_LIGHT=$(date +%s)
for g in $LIGHT_GUESTS; do
    IFS=: read -r name kver m cpu opts <<<"$g"
    if [ "$kver" = 612 ]; then kd=$KDIR_612; rd=$INITRD_612; else kd=$KDIR_61; rd=$INITRD_61; fi
    part=$OUTDIR/$name.partial
    rm -rf "$part" "$OUTDIR/$name"
    mkdir -p "$part"
    append="console=ttyS0 ${opts//_/ } quiet panic=-1"
    say "$name: booting $(basename "$kd") (-cpu $cpu -m $LIGHT_MEM, $append)"
    python3 "$HERE/qmp.py" --light --mode "$m" --out "$part" \
        --serial "$RUN/serial-$name.log" --qmp-sock "$RUN/qmp-$name.sock" -- \
        qemu-system-x86_64 -accel tcg -machine pc -cpu "$cpu" -smp 1 -m "$LIGHT_MEM" \
        -nodefaults -no-user-config -display none -no-reboot \
        -serial "file:$RUN/serial-$name.log" \
        -qmp "unix:$RUN/qmp-$name.sock,server=on,wait=off" \
        -kernel "$kd/vmlinuz" -initrd "$rd" -append "$append" ||
        die "$name capture failed (partial output in $part)"
    {
        echo "qemu $QEMU_VERSION"
        echo "qemu_cpu $cpu"
        echo "qemu_mem $LIGHT_MEM"
        echo "kernel_package $(cat "$kd/.complete")"
        echo "capture_version $CAPTURE_VERSION"
    } >>"$part/layout.txt"
    mv "$part" "$OUTDIR/$name"
done
stamp_text >"$OUTDIR/stamp"
say "light guests took $(( $(date +%s) - T_LIGHT )) s"
say "done in $(( $(date +%s) - T0 )) s: $OUTDIR/l4 $OUTDIR/l5 and the light guests"
