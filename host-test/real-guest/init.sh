#!/bin/busybox sh
# /init of the introvisor real-guest initramfs (see capture.sh, README.md).
# Sets the guest up, starts a few user processes (one busy-spins so that a
# stopped vCPU is almost surely running it), prints what the host needs to the
# serial console between "@@BEGIN name" / "@@END name" markers, then "@@READY".
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
# Keep kernel messages off the console while we print.
echo 1 > /proc/sys/kernel/printk
# Real (unhashed) kernel pointers in /proc/vmallocinfo for root.
echo 1 > /proc/sys/kernel/kptr_restrict
# Linux turns THP off on small guests; force it on (harmless otherwise).
echo always > /sys/kernel/mm/transparent_hugepage/enabled
echo always > /sys/kernel/mm/transparent_hugepage/defrag

# The modules of the kernel package that the initramfs carries (see capture.sh).
for m in /lib/modules/*.ko; do
    [ -e "$m" ] && insmod "$m"
done

sleep 1000001 &
sleep 1000002 &
sleep 1000003 &
# The spinner: first fills an 8 MiB shell variable (large anonymous memory,
# a candidate for transparent huge pages), then spins in user mode forever.
# It touches /tmp/spin-ready once its memory layout is final, so the maps we
# print are the ones the host will see.
sh -c 'x=$(yes introvisor | head -c 8388608); : >/tmp/spin-ready; while :; do :; done' &
SPIN=$!

# Wait for the spinner to be set up, at most ~120 s.
i=0
while [ ! -e /tmp/spin-ready ] && [ $i -lt 240 ]; do
    sleep 0.5
    i=$((i + 1))
done
sleep 1

section() { echo "@@BEGIN $1"; shift; "$@"; echo "@@END"; }

section uname uname -a
section cmdline cat /proc/cmdline
section spinner echo "$SPIN"
section maps cat /proc/$SPIN/maps
section smaps cat /proc/$SPIN/smaps
section status cat /proc/$SPIN/status
section meminfo cat /proc/meminfo
section iomem cat /proc/iomem
section thp cat /sys/kernel/mm/transparent_hugepage/enabled
section vmallocinfo cat /proc/vmallocinfo
# kallsyms is ~100k lines: send named anchors plus every 25th text and every
# 10th data/rodata/bss symbol of the kernel image (no modules are loaded).
section kallsyms awk '
    BEGIN {
        split("_text _stext _etext _sdata _edata __bss_start __bss_stop _end " \
              "__start_rodata __end_rodata _sinittext _einittext init_task " \
              "init_mm init_top_pgt level4_kernel_pgt page_offset_base " \
              "vmalloc_base vmemmap_base phys_base linux_banner " \
              "startup_64 __per_cpu_offset pgdir_shift ptrs_per_p4d " \
              "__pgtable_l5_enabled jiffies_64 idt_table", a, " ")
        for (k in a) want[a[k]] = 1
    }
    want[$3] { print; next }
    $2 ~ /^[Tt]$/ { if (nt++ % 25 == 0) print; next }
    $2 ~ /^[DdBbRr]$/ { if (nd++ % 10 == 0) print; next }
' /proc/kallsyms
section ps ps
# What the guest says about itself, last, with nothing of ours left running but
# this shell (pid 1) and the long sleep below, started first so it is listed:
# /proc/*/stat read by the shell's own builtins (no fork), /proc/modules, and a
# sample of /proc/kallsyms (every 500th kernel line and some named ones).
sleep 1000004 &
echo 0 > /proc/sys/kernel/kptr_restrict
section ksample awk '
    BEGIN { split("_text _stext _etext _end init_task init_top_pgt linux_banner " \
                  "modules page_offset_base __per_cpu_offset current_task pcpu_hot " \
                  "__start_BTF __stop_BTF start_kernel do_sys_open schedule", a, " ")
            for (k in a) want[a[k]] = 1 }
    $4 ~ /^\[/ { next }
    want[$3] || n++ % 500 == 0 { print }
' /proc/kallsyms
echo 1 > /proc/sys/kernel/kptr_restrict
section modules cat /proc/modules
procstat() {
    for d in /proc/[0-9]*; do
        read -r line < "$d/stat" && echo "$line"
    done
}
section procstat procstat
echo "@@READY"
wait
