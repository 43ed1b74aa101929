#!/bin/bash
# Boots the test hypervisor under Bochs, headless, and prints the serial log.
#
# usage: host-test/bochs/run.sh [ELF]
#   Without ELF, builds the image first (release) into $CARGO_TARGET_DIR, by default
#   ~/.cache/introvisor/bochs-target. As the crate's cargo runner (`cargo run --release`
#   inside host-test/bochs), cargo passes the ELF it built.
# Environment: BOCHS_TIMEOUT (seconds, default 120), BOCHS_CPU (Bochs CPU model, default
#   corei7_icelake_u), BOCHS_OUT (output folder, default
#   bochs-run/ beside the ELF). Output: $BOCHS_OUT/serial.txt (COM1), bochs.log, bochs.stdout.
# Needs: apt-get install -y bochs bochsbios vgabios bochs-term
# Exit status: 0 when the log ends with "RESULT pass", 1 otherwise.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target_dir=${CARGO_TARGET_DIR:-$HOME/.cache/introvisor/bochs-target}
elf=${1:-}
if [ -z "$elf" ]; then
    # The pinned toolchain's bare-metal target (rust-toolchain.toml lists it; a toolchain
    # installed before that line may lack it).
    if command -v rustup > /dev/null && ! (cd "$here" && rustup target list --installed | grep -qx x86_64-unknown-none); then
        (cd "$here" && rustup target add x86_64-unknown-none)
    fi
    (cd "$here" && CARGO_TARGET_DIR="$target_dir" cargo build --release)
    elf=$target_dir/x86_64-unknown-none/release/introvisor-bochs
fi
elf=$(cd "$(dirname "$elf")" && pwd)/$(basename "$elf")
out=${BOCHS_OUT:-$(dirname "$elf")/bochs-run}
mkdir -p "$out"

# The flat image: the ELF's loadable sections from 0x7C00 on, padded to a 1.44 MB floppy.
# GNU objcopy (binutils) or LLVM's, whichever runs.
objcopy=
for c in objcopy llvm-objcopy "$(cd "$here" && rustc --print sysroot)"/lib/rustlib/*/bin/rust-objcopy; do
    if "$c" --version > /dev/null 2>&1; then objcopy=$c; break; fi
done
[ -n "$objcopy" ] || { echo "run.sh: no working objcopy (apt-get install -y binutils)" >&2; exit 2; }
"$objcopy" -O binary "$elf" "$out/boot.img"
truncate -s 1474560 "$out/boot.img"

cat > "$out/bochsrc.txt" <<RC
# Written by host-test/bochs/run.sh. corei7_icelake_u is a CPU model whose VMX offers the
# monitor trap flag, EPT (4-level, execute-only, A/D), VMFUNC EPTP switching.
megs: 64
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
display_library: term
floppya: 1_44=$out/boot.img, status=inserted
boot: floppy
floppy_bootsig_check: disabled=0
cpu: model=${BOCHS_CPU:-corei7_icelake_u}, count=1, ips=50000000, reset_on_triple_fault=0, ignore_bad_msrs=1
clock: sync=none, time0=local
com1: enabled=1, mode=file, dev=$out/serial.txt
log: $out/bochs.log
panic: action=fatal
error: action=report
info: action=report
debug: action=ignore
mouse: enabled=0
speaker: enabled=0
sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy
RC
# The built-in debugger stops before the first instruction unless told to continue.
echo c > "$out/dbg.rc"

rm -f "$out/serial.txt" "$out/bochs.log"
status=0
TERM=xterm timeout "${BOCHS_TIMEOUT:-120}" bochs -q -f "$out/bochsrc.txt" -rc "$out/dbg.rc" \
    > "$out/bochs.stdout" 2>&1 < /dev/null || status=$?
# Bochs exits with 1 after the image's shutdown request; 124 is the timeout.
echo "bochs exit status $status (1 after the image's shutdown, 124 on timeout); log in $out" >&2
touch "$out/serial.txt"
cat "$out/serial.txt"
grep -q '^RESULT pass' "$out/serial.txt"
