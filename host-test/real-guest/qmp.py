#!/usr/bin/env python3
"""Drive one real-guest capture over QMP (stdlib only).

Usage:
  qmp.py --mode 4|5 --out DIR --serial FILE --qmp-sock PATH -- QEMU ARGV...

Starts QEMU with the given argv (which must write the guest's serial console
to FILE and open a QMP server on PATH), waits for the guest's "@@READY"
marker, stops the VM and, with it stopped:
  * saves `info registers` (regs.txt, cr3.txt, mode.txt),
  * asks HMP `gva2gpa` for a few thousand virtual addresses in categories
    (translations.tsv),
  * reads bytes at a few hundred mapped addresses with QMP `memsave`
    (virtual) and `pmemsave` (physical, at gva2gpa's answer), checks they
    agree (bytes.tsv),
  * writes a raw ELF core with `dump-guest-memory` (dump.elf),
  * cross-checks everything against dump.elf with an independent page-table
    walk (pagesizes.tsv, counts.txt),
then quits QEMU. Any inconsistency is fatal (exit 1).
"""
import argparse
import json
import mmap
import os
import random
import re
import socket
import struct
import subprocess
import sys
import time

PAGE = 4096
GIB = 1 << 30
MIB = 1 << 20
M64 = (1 << 64) - 1


def log(msg):
    print("real-guest: " + msg, file=sys.stderr, flush=True)


class Fail(Exception):
    pass


# ---------------------------------------------------------------- QMP client

class Qmp:
    def __init__(self, path, timeout=600.0):
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise Fail("cannot connect to QMP socket " + path)
                time.sleep(0.2)
        self.sock.settimeout(timeout)
        self.f = self.sock.makefile("rwb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise Fail("unexpected QMP greeting: %r" % greeting)
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.f.readline()
        if not line:
            raise Fail("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise Fail("QMP %s failed: %s" % (name, reply["error"]))
            return reply["return"]

    def hmp(self, line):
        return self.cmd("human-monitor-command", **{"command-line": line})

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ------------------------------------------------------------ guest output

def parse_sections(text):
    """'@@BEGIN name' ... '@@END' blocks of the serial log -> {name: [lines]}"""
    out = {}
    cur = None
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if line.startswith("@@BEGIN "):
            cur = line[8:].strip()
            out[cur] = []
        elif line == "@@END":
            cur = None
        elif cur is not None:
            out[cur].append(line)
    return out


def parse_regs(text):
    regs = {}
    for name, val in re.findall(r"\b(CR0|CR2|CR3|CR4|EFER|RIP|RSP|RBX|RBP|"
                                r"R12|CPL|HLT)=([0-9a-fA-F]+)", text):
        regs.setdefault(name, int(val, 16))
    for name, val in re.findall(r"\b(IDT|GDT|TR)\s*=\s*(?:[0-9a-f]{4} )?"
                                r"([0-9a-f]{16})", text):
        regs.setdefault(name, int(val, 16))
    for need in ("CR0", "CR3", "CR4", "EFER", "CPL"):
        if need not in regs:
            raise Fail("no %s in info registers:\n%s" % (need, text))
    return regs


def parse_kallsyms(lines):
    syms = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and len(parts[0]) == 16:
            syms.append((int(parts[0], 16), parts[1], parts[2]))
    return syms


def parse_ranges(lines, rx):
    """Parse 'start-end ...' lines (hex, inclusive or exclusive by caller)."""
    out = []
    for line in lines:
        m = rx.match(line)
        if m:
            out.append((int(m.group(1), 16), int(m.group(2), 16), line))
    return out


# -------------------------------------------------------------- ELF core

class Dump:
    """Physical memory of a QEMU 'dump-guest-memory' ELF core (paging=false)."""

    def __init__(self, path):
        self.fh = open(path, "rb")
        self.mm = mmap.mmap(self.fh.fileno(), 0, access=mmap.ACCESS_READ)
        mm = self.mm
        if mm[:4] != b"\x7fELF" or mm[4] != 2:
            raise Fail("dump.elf is not ELF64")
        (phoff,) = struct.unpack_from("<Q", mm, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", mm, 0x36)
        self.loads = []
        self.notes = 0
        for i in range(phnum):
            p_type, _flags, off, _vaddr, paddr, filesz, _memsz, _align = \
                struct.unpack_from("<IIQQQQQQ", mm, phoff + i * phentsize)
            if p_type == 1:
                self.loads.append((paddr, filesz, off))
            elif p_type == 4:
                self.notes += 1
        self.loads.sort()

    def read(self, pa, n):
        out = b""
        while n:
            for base, size, off in self.loads:
                if base <= pa < base + size:
                    take = min(n, base + size - pa)
                    out += self.mm[off + pa - base: off + pa - base + take]
                    pa += take
                    n -= take
                    break
            else:
                raise Fail("physical 0x%x is not in the dump" % pa)
        return out

    def has(self, pa):
        return any(b <= pa < b + s for b, s, _ in self.loads)

    def close(self):
        self.mm.close()
        self.fh.close()


def canonical(va, mode):
    bits = 48 if mode == 4 else 57
    top = va >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


def walk(dump, cr3, mode, va):
    """Independent 4/5-level walk over the dump: (gpa, page_size) or None."""
    if not canonical(va, mode):
        return None
    addr_mask = 0x000FFFFFFFFFF000
    table = cr3 & addr_mask
    shifts = [39, 30, 21, 12] if mode == 4 else [48, 39, 30, 21, 12]
    for shift in shifts:
        idx = (va >> shift) & 0x1FF
        pa = table + idx * 8
        if not dump.has(pa):
            return None
        (entry,) = struct.unpack("<Q", dump.read(pa, 8))
        if not entry & 1:
            return None
        if shift in (30, 21) and entry & 0x80:
            size = 1 << shift
            return (entry & addr_mask & ~(size - 1)) | (va & (size - 1)), size
        table = entry & addr_mask
    return table | (va & 0xFFF), PAGE


# ------------------------------------------------------- address selection

class Picker:
    def __init__(self, mode, rng):
        self.mode = mode
        self.rng = rng
        self.cat = {}
        self.order = []

    def add(self, cat, va):
        va &= M64
        if va not in self.cat:
            self.cat[va] = cat
            self.order.append(va)

    def rand(self, lo, hi):
        """uniform in [lo, hi)"""
        return self.rng.randrange(lo, hi)


def layout_holes(mode):
    """Canonical kernel-half ranges that Linux leaves unused in our guest
    (Documentation/arch/x86/x86_64/mm.rst; no KASAN, no EFI, nopti)."""
    common = [
        (0xFFFFFC0000000000, 0xFFFFFE0000000000),  # unused hole
        (0xFFFFFE8000000000, 0xFFFFFF0000000000),  # unused hole
        (0xFFFFFF8000000000, 0xFFFFFFEF00000000),  # unused hole
        (0xFFFFFFEF00000000, 0xFFFFFFFF00000000),  # EFI region (BIOS boot)
        (0xFFFFFFFF00000000, 0xFFFFFFFF80000000),  # unused hole
        (0xFFFFFFFFFFE00000, 0x10000000000000000),  # top unused hole
    ]
    if mode == 4:
        return [
            (0xFFFF800000000000, 0xFFFF880000000000),  # guard hole
            (0xFFFF880000000000, 0xFFFF888000000000),  # LDT remap (PTI off)
            (0xFFFFC88000000000, 0xFFFFC90000000000),  # unused hole
            (0xFFFFE90000000000, 0xFFFFEA0000000000),  # unused hole
            (0xFFFFEB0000000000, 0xFFFFEC0000000000),  # unused hole
            (0xFFFFEC0000000000, 0xFFFFFC0000000000),  # KASAN shadow (none)
        ] + common
    return [
        (0xFF00000000000000, 0xFF10000000000000),  # guard hole
        (0xFF10000000000000, 0xFF11000000000000),  # LDT remap (PTI off)
        (0xFF91000000000000, 0xFFA0000000000000),  # unused hole
        (0xFFD2000000000000, 0xFFD4000000000000),  # unused hole
        (0xFFD6000000000000, 0xFFDF000000000000),  # unused hole
        (0xFFDF000000000000, 0xFFFFFC0000000000),  # KASAN shadow (none)
    ] + common


def pick_addresses(mode, g, rng):
    p = Picker(mode, rng)
    sym = g["symaddr"]
    syms = g["syms"]
    img_lo, img_hi = sym["_text"], sym["_end"]
    stext, etext = sym["_stext"], sym["_etext"]

    # ktext: text symbols, random offsets in _stext.._etext, freed init text.
    text = [s for s in syms if s[1] in "Tt" and img_lo <= s[0] < img_hi]
    main_text = [s for s in text if stext <= s[0] < etext]
    init_text = [s for s in text if not stext <= s[0] < etext]
    for a, _t, _n in rng.sample(main_text, min(650, len(main_text))):
        p.add("ktext", a)
        if rng.random() < 0.3:
            p.add("ktext", a + rng.randrange(1, 64))
    for a, _t, _n in rng.sample(init_text, min(30, len(init_text))):
        p.add("ktext", a)
    for _ in range(350):
        p.add("ktext", p.rand(stext, etext))
    for a in (img_lo, stext, etext - 1, etext, etext + PAGE):
        p.add("ktext", a)

    # kdata: data/rodata/bss symbols and random offsets in those sections.
    data = [s for s in syms if s[1] in "DdBbRr" and img_lo <= s[0] < img_hi]
    for a, _t, _n in rng.sample(data, min(480, len(data))):
        p.add("kdata", a)
    for lo, hi in (("__start_rodata", "__end_rodata"), ("_sdata", "_edata"),
                   ("__bss_start", "__bss_stop")):
        if lo in sym and hi in sym and sym[lo] < sym[hi]:
            for _ in range(70):
                p.add("kdata", p.rand(sym[lo], sym[hi]))
    for name in ("init_task", "init_mm", "init_top_pgt", "page_offset_base",
                 "vmalloc_base", "vmemmap_base", "jiffies_64", "idt_table",
                 "linux_banner", "_sdata", "_edata", "__bss_start"):
        if name in sym:
            p.add("kdata", sym[name])
    p.add("kdata", img_hi - 1)
    p.add("kdata", img_hi)

    # directmap: all of RAM, linear sweeps of each GiB, what lies past RAM.
    pob = g["page_offset_base"]
    ram = g["ram"]
    ram_top = max(e for _, e in ram)
    total = sum(e - s for s, e in ram)
    for _ in range(520):
        off = p.rand(0, total)
        for s, e in ram:
            if off < e - s:
                p.add("directmap", pob + s + off)
                break
            off -= e - s
    for gib in range((ram_top + GIB - 1) // GIB):
        for k in range(32):
            p.add("directmap", pob + gib * GIB + k * 32 * MIB +
                  p.rand(0, 2 * MIB))
        for a in (gib * GIB, gib * GIB + PAGE, (gib + 1) * GIB - 1):
            p.add("directmap", pob + a)
    for a in (0, 0x1000, 0x9F000, 0xA0000, 0xC0000, 0xF0000, 0xFF000,
              0x100000, 0x1FF000, 0x200000, ram_top - 1, ram_top,
              ram_top + MIB, ram_top + 2 * MIB, 0xC0000000, 0xFEC00000,
              4 * GIB, 8 * GIB, 64 * GIB, 1 << 40):
        p.add("directmap", pob + a)
    for _ in range(30):
        p.add("directmap", pob + p.rand(ram_top, 1 << 45))

    # vmemmap: struct pages of RAM pfns and past the end of RAM.
    vmemmap = g["vmemmap_base"]
    for _ in range(120):
        p.add("vmemmap", vmemmap + (p.rand(0, ram_top) // PAGE) * 64 +
              rng.randrange(64))
    for a in (0, 64, (ram_top // PAGE - 1) * 64, (ram_top // PAGE) * 64,
              (ram_top // PAGE) * 64 + 2 * MIB, 1 << 36):
        p.add("vmemmap", vmemmap + a)

    # vmalloc: inside the areas of /proc/vmallocinfo (last page = guard).
    areas = g["vmalloc"]
    for s, e, _line in rng.sample(areas, min(95, len(areas))):
        p.add("vmalloc", s)
        p.add("vmalloc", e - 1)
        for _ in range(3):
            p.add("vmalloc", p.rand(s, e))

    # kother: cpu_entry_area (IDT/GDT/TSS), espfix stacks, fixmap, vsyscall.
    cea = 0xFFFFFE0000000000
    for k in range(48):
        p.add("kother", cea + k * PAGE + rng.randrange(PAGE))
    for name in ("IDT", "GDT", "TR"):
        if name in g["regs"]:
            p.add("kother", g["regs"][name])
    # (the espfix stack of CPU 0 sits at a random GiB above this base)
    for k in range(4):
        p.add("kother", 0xFFFFFF0000000000 + k * PAGE)
    # fixmap: indices below 0x200 are the vsyscall page and what lies above
    # it; the real slots grow down from FIXADDR_TOP - 0x200 pages.
    for k in range(64):
        p.add("kother", 0xFFFFFFFFFF5FF000 - k * PAGE)
    p.add("kother", 0xFFFFFFFFFF600000)

    # user: the spinner's mappings, its registers, and the gaps between.
    maps = g["maps"]
    user_top = (1 << 47) if mode == 4 else (1 << 56)
    regs = g["regs"]
    for s, e, _line in maps:
        n = 4 if e - s <= 16 * PAGE else 12
        for a in (s, e - 1, s + (e - s) // 2):
            p.add("user", a)
        for _ in range(n):
            p.add("user", p.rand(s, e))
    big = max(maps, key=lambda m: m[1] - m[0])
    for _ in range(48):
        p.add("user", p.rand(big[0], big[1]))
    for a in range((big[0] + 2 * MIB - 1) & ~(2 * MIB - 1), big[1], 2 * MIB):
        p.add("user", a)
        p.add("user", a - 1)
    for name in ("RIP", "RSP", "RBX", "RBP", "R12"):
        v = regs.get(name, 0)
        if 0 < v < user_top:
            p.add("user", v)
    if 0 < regs.get("RSP", 0) < user_top:
        for k in range(1, 9):
            p.add("user", regs["RSP"] - k * PAGE)
    bounds = [s for s, _, _ in maps] + [user_top]
    prev = 0
    for (s, e, _line), nxt in zip(maps, bounds[1:]):
        if s > prev:
            for _ in range(3):
                p.add("user", p.rand(prev, s))
        prev = e
        if nxt > e:
            p.add("user", e)
    for a in (0, 0x1000, 0x3FF000, user_top - PAGE, user_top - 1):
        p.add("user", a)

    # unmapped: canonical addresses in holes of both halves.
    def far_from_user(a):
        return all(a + GIB < s or a > e + GIB for s, e, _ in maps)
    n = 0
    while n < 70:
        hi = user_top if (mode == 5 and n % 2) else (1 << 47)
        a = p.rand(1 << 32, hi)
        if far_from_user(a):
            p.add("unmapped", a)
            n += 1
    for lo, hi in layout_holes(mode):
        for _ in range(12):
            p.add("unmapped", p.rand(lo, min(hi, 1 << 64)))
        p.add("unmapped", lo)
    vmb = g["vmalloc_base"]
    n = 0
    while n < 30:
        a = vmb + p.rand(1 << 36, 1 << 44)
        if all(a + 16 * MIB < s or a > e + 16 * MIB for s, e, _ in areas):
            p.add("unmapped", a)
            n += 1
    kimg_end = (img_hi + 2 * MIB - 1) & ~(2 * MIB - 1)
    for _ in range(12):
        p.add("unmapped", p.rand(0xFFFFFFFF80000000, img_lo))
        p.add("unmapped", p.rand(kimg_end, 0xFFFFFFFFC0000000))
        p.add("unmapped", p.rand(0xFFFFFFFFC0000000, 0xFFFFFFFFFF000000))
    if mode == 5:
        # 4-level layout addresses are canonical (and unused) under 5-level.
        for a in (0xFFFF888000000000, 0xFFFFC90000000000, 0xFFFFEA0000000000,
                  0x0000800000000000, 0x00FF000000000000,
                  0x00FFFFFFFFFFF000):
            p.add("unmapped", a)

    # noncanonical: fixed picks, aliases of mapped addresses, random.
    fixed = [0x0000800000000000, 0x0000800000001000, 0x00FF000000000000,
             0x0100000000000000, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000,
             0x8000000000400000, 0xFF11000000000000, 0xFFA0000000000000,
             0xFFFF7FFFFFFFFFFF, 0xFFFE000000000000, 0x1234567890ABCDEF,
             0xFEFFFFFF81000000]
    if mode == 5:
        fixed = [0x0100000000000000, 0x0100000000400000, 0x7F00000000000000,
                 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0x8000000000400000,
                 0xFE00000000000000, 0xFEFFFFFFFFFFFFFF, 0xFEFFFFFF81000000,
                 0x1234567890ABCDEF, 0x00FF000000000000 | (1 << 63)]
    bit = 48 if mode == 4 else 57
    for a in fixed:
        if not canonical(a, mode):
            p.add("noncanonical", a)
    for a in (stext, pob + GIB, maps[0][0]):
        p.add("noncanonical", a ^ (1 << bit))
    for _ in range(25):
        a = rng.getrandbits(64)
        if canonical(a, mode):
            a ^= 1 << rng.randrange(bit, 63)
        p.add("noncanonical", a)
    return p


# ----------------------------------------------------------------- capture

def wait_ready(proc, serial, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(serial, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            text = ""
        if "\n@@READY" in text:
            return text
        if proc.poll() is not None:
            raise Fail("QEMU exited (status %s) before READY; serial tail:\n%s"
                       % (proc.returncode, text[-3000:]))
        if time.monotonic() > deadline:
            raise Fail("no READY after %d s; serial tail:\n%s"
                       % (timeout, text[-3000:]))
        time.sleep(0.5)


def stop_in_user(q, tries=60):
    """Stop the VM while the vCPU runs user code (the spinner)."""
    for i in range(tries):
        q.cmd("stop")
        text = q.hmp("info registers")
        regs = parse_regs(text)
        if regs["CPL"] == 3 and regs.get("HLT", 0) == 0:
            return text, regs, i
        q.cmd("cont")
        time.sleep(0.05 + 0.01 * i)
    raise Fail("vCPU never stopped in user mode (CPL=3) in %d tries" % tries)


def translate(q, va):
    raw = q.hmp("gva2gpa 0x%x" % va).strip()
    # QEMU prints the gpa with "%#" PRIx64: physical 0 comes out as "gpa: 0".
    m = re.fullmatch(r"gpa: (0x[0-9a-fA-F]+|0)", raw)
    return (int(m.group(1), 16), raw) if m else (None, raw)


def capture(args, qemu_argv):
    out = args.out
    os.makedirs(out, exist_ok=True)
    scratch = os.path.join(out, ".scratch")
    os.makedirs(scratch, exist_ok=True)
    for path in (args.serial, args.qmp_sock):
        if os.path.exists(path):
            os.unlink(path)
    qlog = open(os.path.join(out, "qemu.log"), "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(qemu_argv, stdin=subprocess.DEVNULL,
                            stdout=qlog, stderr=subprocess.STDOUT)
    q = None
    try:
        text = wait_ready(proc, args.serial, args.timeout)
        log("l%d: guest READY after %.1f s" % (args.mode,
                                               time.monotonic() - t0))
        q = Qmp(args.qmp_sock)
        if args.light:
            return light_capture(args, q, proc, text)
        return with_vm(args, q, proc, text)
    finally:
        if q is not None:
            try:
                q.cmd("quit")
            except Exception:
                pass
            q.close()
        if proc.poll() is None:
            try:
                proc.wait(timeout=10 if q is not None else 0.1)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        qlog.close()


def write_guest_records(out, sec):
    """What the guest said about itself at dump time: /proc/*/stat, /proc/modules
    and a sample of /proc/kallsyms (read with kptr_restrict=0)."""
    for need in ("procstat", "modules", "ksample"):
        if need not in sec:
            raise Fail("guest printed no '%s' section" % need)
    if not any(l.startswith("1 (") for l in sec["procstat"]):
        raise Fail("procstat lacks pid 1")
    if not sec["modules"]:
        raise Fail("no module is loaded in the guest")
    for name in ("procstat", "modules", "ksample"):
        with open(os.path.join(out, name + ".txt"), "w") as f:
            f.write("\n".join(sec[name]) + "\n")


def light_capture(args, q, proc, serial_text):
    """Registers and a dump only (no address queries): for the Linux-layer guests."""
    out, mode = args.out, args.mode
    sec = parse_sections(serial_text)
    write_guest_records(out, sec)
    regs_text, regs, retries = stop_in_user(q)
    la57 = bool(regs["CR4"] & (1 << 12))
    if la57 != (mode == 5):
        raise Fail("CR4=0x%x: LA57 is %s but this is the %d-level guest"
                   % (regs["CR4"], "set" if la57 else "clear", mode))
    dump_path = os.path.join(out, "dump.elf")
    t0 = time.monotonic()
    q.cmd("dump-guest-memory", paging=False, protocol="file:" + dump_path,
          format="elf")
    os.chmod(dump_path, 0o644)
    log("l%d: light capture: stopped in user mode after %d retries, CR3=%x; "
        "dump took %.1f s" % (mode, retries, regs["CR3"], time.monotonic() - t0))
    q.cmd("quit")
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass

    def w(name, text):
        with open(os.path.join(out, name), "w") as f:
            f.write(text)

    w("serial.log", serial_text.replace("\r", ""))
    w("regs.txt", regs_text.replace("\r", ""))
    w("cr3.txt", "0x%x\n" % regs["CR3"])
    w("mode.txt", "%d\n" % mode)
    for name in ("kallsyms", "maps"):
        if name in sec:
            w(name + ".txt", "\n".join(sec[name]) + "\n")
    w("layout.txt", "\n".join([
        "mode %d" % mode, "cr3 0x%x" % regs["CR3"], "cr4 0x%x" % regs["CR4"],
        "cpl %d" % regs["CPL"],
        "spinner_pid %s" % sec.get("spinner", ["?"])[0].strip(),
        "uname %s" % " ".join(sec.get("uname", ["?"])),
        "cmdline %s" % " ".join(sec.get("cmdline", ["?"])),
    ]) + "\n")
    scratch = os.path.join(out, ".scratch")
    for name in os.listdir(scratch):
        os.unlink(os.path.join(scratch, name))
    os.rmdir(scratch)


def with_vm(args, q, proc, serial_text):
    out, mode = args.out, args.mode
    sec = parse_sections(serial_text)
    write_guest_records(out, sec)
    for need in ("kallsyms", "maps", "iomem", "vmallocinfo", "spinner"):
        if need not in sec:
            raise Fail("guest printed no '%s' section" % need)
    syms = parse_kallsyms(sec["kallsyms"])
    symaddr = {}
    for a, _t, n in syms:
        symaddr.setdefault(n, a)
    for need in ("_text", "_stext", "_etext", "_end", "page_offset_base",
                 "vmalloc_base", "vmemmap_base"):
        if need not in symaddr:
            raise Fail("kallsyms subset lacks " + need)
    rx_map = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\s")
    maps = parse_ranges(sec["maps"], rx_map)
    rx_vm = re.compile(r"^0x([0-9a-f]+)-0x([0-9a-f]+)\s")
    vmalloc = parse_ranges(sec["vmallocinfo"], rx_vm)
    if not vmalloc or vmalloc[0][0] < (1 << 63):
        raise Fail("vmallocinfo addresses look hashed: %r" % vmalloc[:1])
    rx_io = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) : System RAM$")
    ram = [(s, e + 1) for s, e, _ in parse_ranges(sec["iomem"], rx_io)]
    if not ram:
        raise Fail("no System RAM in the guest's /proc/iomem")

    regs_text, regs, retries = stop_in_user(q)
    log("l%d: stopped in user mode after %d retries; CR3=%x CR4=%x EFER=%x"
        % (mode, retries, regs["CR3"], regs["CR4"], regs["EFER"]))
    la57 = bool(regs["CR4"] & (1 << 12))
    if la57 != (mode == 5):
        raise Fail("CR4=0x%x: LA57 is %s but this is the %d-level guest"
                   % (regs["CR4"], "set" if la57 else "clear", mode))
    if not regs["EFER"] & (1 << 10) or not regs["CR0"] & (1 << 31):
        raise Fail("guest is not in long mode with paging: CR0=%x EFER=%x"
                   % (regs["CR0"], regs["EFER"]))

    scratch = os.path.join(out, ".scratch")

    def memsave(va, n):
        path = os.path.join(scratch, "v.bin")
        # QMP's 'val' is an int64: kernel addresses go as negative numbers.
        sval = va - (1 << 64) if va >> 63 else va
        q.cmd("memsave", val=sval, size=n, filename=path, **{"cpu-index": 0})
        with open(path, "rb") as f:
            return f.read()

    def pmemsave(pa, n):
        path = os.path.join(scratch, "p.bin")
        q.cmd("pmemsave", val=pa, size=n, filename=path)
        with open(path, "rb") as f:
            return f.read()

    layout = {}
    for name in ("page_offset_base", "vmalloc_base", "vmemmap_base"):
        layout[name] = struct.unpack("<Q", memsave(symaddr[name], 8))[0]
    g = {"syms": syms, "symaddr": symaddr, "maps": maps, "vmalloc": vmalloc,
         "ram": ram, "regs": regs}
    g.update(layout)

    rng = random.Random(0x1E7 + mode)
    picker = pick_addresses(mode, g, rng)
    t0 = time.monotonic()
    result = {}
    for va in picker.order:
        result[va] = translate(q, va)
    log("l%d: %d gva2gpa queries in %.1f s"
        % (mode, len(result), time.monotonic() - t0))

    # Byte reads: virtual (memsave) vs physical (pmemsave at gva2gpa's gpa).
    def in_ram(pa):
        return any(s <= pa < e for s, e in ram)

    def gpa_of(va, cat):
        # helper queries for the pages a read touches join the read's category
        if va not in result:
            result[va] = translate(q, va)
            picker.add(cat, va)
        return result[va][0]

    quotas = {"ktext": 70, "kdata": 50, "directmap": 60, "vmalloc": 30,
              "vmemmap": 15, "kother": 10, "user": 50}
    reads = []
    for cat, quota in quotas.items():
        mapped = [va for va in picker.order
                  if picker.cat[va] == cat and result[va][0] is not None
                  and in_ram(result[va][0])]
        for va in rng.sample(mapped, min(quota, len(mapped))):
            n = 64
            if rng.random() < 0.3:
                va = (va | 0xFFF) - rng.randrange(1, 63)  # cross a page
            elif rng.random() < 0.05:
                n = 8192 + rng.randrange(64)              # a long read
            reads.append((cat, va, n))
    byte_rows = []
    for cat, va, n in reads:
        pieces = []
        cur, left = va, n
        while left:
            take = min(left, PAGE - (cur & 0xFFF))
            pa = gpa_of(cur, cat)
            if pa is None or not in_ram(pa):
                pieces = None
                break
            pieces.append((pa, take))
            cur, left = cur + take, left - take
        if pieces is None:
            continue
        virt = memsave(va, n)
        phys = b"".join(pmemsave(pa, take) for pa, take in pieces)
        if virt != phys or len(virt) != n:
            raise Fail("memsave/pmemsave disagree at 0x%x (%d bytes)"
                       % (va, n))
        byte_rows.append((va, n, virt, pieces))
    log("l%d: %d byte reads agree (memsave vs pmemsave)"
        % (mode, len(byte_rows)))

    t0 = time.monotonic()
    dump_path = os.path.join(out, "dump.elf")
    q.cmd("dump-guest-memory", paging=False, protocol="file:" + dump_path,
          format="elf")
    os.chmod(dump_path, 0o644)  # QEMU creates it owner-read-only
    log("l%d: dump-guest-memory took %.1f s (%d MiB)"
        % (mode, time.monotonic() - t0, os.path.getsize(dump_path) >> 20))
    q.cmd("quit")
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass

    check_and_write(args, serial_text, sec, regs_text, regs, layout, g,
                    picker, result, byte_rows, dump_path)
    for name in os.listdir(scratch):
        os.unlink(os.path.join(scratch, name))
    os.rmdir(scratch)


def check_and_write(args, serial_text, sec, regs_text, regs, layout, g,
                    picker, result, byte_rows, dump_path):
    out, mode = args.out, args.mode
    cr3 = regs["CR3"]
    dump = Dump(dump_path)
    problems = []
    sizes = {}
    try:
        for va in picker.order:
            pa, raw = result[va]
            wk = walk(dump, cr3, mode, va)
            if (wk[0] if wk else None) != pa:
                problems.append("walk of dump disagrees with gva2gpa at 0x%x:"
                                " %s vs %r" % (va, wk and hex(wk[0]), raw))
            if wk:
                sizes[va] = wk[1]
        for va, n, data, pieces in byte_rows:
            got = b"".join(dump.read(pa, take) for pa, take in pieces)
            if got != data:
                problems.append("dump bytes differ at 0x%x" % va)
        nloads = len(dump.loads)
        load_desc = ", ".join("0x%x+0x%x" % (b, s) for b, s, _ in dump.loads)
    finally:
        dump.close()

    cat = picker.cat
    sym = g["symaddr"]
    pob = layout["page_offset_base"]
    for va in picker.order:
        pa, raw = result[va]
        c = cat[va]
        if c == "noncanonical" and pa is not None:
            problems.append("noncanonical 0x%x maps to 0x%x" % (va, pa))
        if c == "ktext" and sym["_stext"] <= va < sym["_etext"] and pa is None:
            problems.append("kernel text 0x%x is unmapped" % va)
        if c == "directmap" and any(s <= va - pob < e for s, e in g["ram"]):
            if pa != va - pob:
                problems.append("direct map 0x%x -> %r, not 0x%x"
                                % (va, raw, va - pob))
    dm_sizes = {sizes[va] for va in picker.order
                if cat[va] == "directmap" and va in sizes}
    if not {GIB, 2 * MIB} <= dm_sizes:
        problems.append("direct map lacks 1 GiB or 2 MiB pages: %s"
                        % sorted(dm_sizes))
    if not any(result[va][0] is not None for va in picker.order
               if cat[va] == "user"):
        problems.append("no user address of the spinner is mapped")
    # The stopped vCPU runs the spinner: its RIP and RSP are mapped and lie
    # in the mappings the guest printed.
    for name in ("RIP", "RSP"):
        v = regs.get(name)
        if v is None or result.get(v, (None,))[0] is None:
            problems.append("%s=%r is not mapped" % (name, v))
        elif not any(s <= v < e for s, e, _ in g["maps"]):
            problems.append("%s=0x%x is outside the spinner's maps" % (name, v))
    if problems:
        raise Fail("%d problems:\n  " % len(problems) +
                   "\n  ".join(problems[:40]))
    user_2m = sum(1 for va in picker.order
                  if cat[va] == "user" and sizes.get(va) == 2 * MIB)
    if not user_2m:
        log("l%d: note: no user address is in a 2 MiB page (no THP hit)"
            % mode)

    def w(name, text):
        with open(os.path.join(out, name), "w") as f:
            f.write(text)

    w("serial.log", serial_text.replace("\r", ""))
    w("regs.txt", regs_text.replace("\r", ""))
    w("cr3.txt", "0x%x\n" % cr3)
    w("mode.txt", "%d\n" % mode)
    for name in ("kallsyms", "maps", "vmallocinfo", "meminfo", "iomem",
                 "smaps"):
        if name in sec:
            w(name + ".txt", "\n".join(sec[name]) + "\n")
    rows = ["# va\tresult\tcategory"]
    for va in picker.order:
        pa, raw = result[va]
        if pa is None:
            rows.append("0x%x\tunmapped\t%s\t%s" % (va, cat[va], raw))
        else:
            rows.append("0x%x\t0x%x\t%s" % (va, pa, cat[va]))
    w("translations.tsv", "\n".join(rows) + "\n")
    rows = ["# va\tlen\thex"]
    for va, n, data, _pieces in byte_rows:
        rows.append("0x%x\t%d\t%s" % (va, n, data.hex()))
    w("bytes.tsv", "\n".join(rows) + "\n")
    rows = ["# va\tpage_size (from qmp.py's own walk of dump.elf; its gpa "
            "equals gva2gpa's for every line of translations.tsv)"]
    for va in picker.order:
        if va in sizes:
            rows.append("0x%x\t%d" % (va, sizes[va]))
    w("pagesizes.tsv", "\n".join(rows) + "\n")

    cats = []
    for va in picker.order:
        if cat[va] not in cats:
            cats.append(cat[va])
    rows = ["# category\ttotal\tmapped\tunmapped\t4K\t2M\t1G"]
    tot = [0] * 6
    for c in cats:
        vas = [va for va in picker.order if cat[va] == c]
        m = sum(1 for va in vas if result[va][0] is not None)
        s4 = sum(1 for va in vas if sizes.get(va) == PAGE)
        s2 = sum(1 for va in vas if sizes.get(va) == 2 * MIB)
        s1 = sum(1 for va in vas if sizes.get(va) == GIB)
        vals = [len(vas), m, len(vas) - m, s4, s2, s1]
        tot = [a + b for a, b in zip(tot, vals)]
        rows.append(c + "\t" + "\t".join(map(str, vals)))
    rows.append("total\t" + "\t".join(map(str, tot)))
    rows.append("# byte reads: %d (memsave == pmemsave == dump.elf)"
                % len(byte_rows))
    w("counts.txt", "\n".join(rows) + "\n")
    info = [
        "mode %d" % mode,
        "cr0 0x%x" % regs["CR0"], "cr3 0x%x" % cr3, "cr4 0x%x" % regs["CR4"],
        "efer 0x%x" % regs["EFER"], "cpl %d" % regs["CPL"],
        "spinner_pid %s" % sec["spinner"][0].strip(),
    ] + ["%s 0x%x" % kv for kv in sorted(layout.items())] + [
        "dump_pt_loads %d: %s" % (nloads, load_desc),
        "uname %s" % " ".join(sec.get("uname", ["?"])),
        "cmdline %s" % " ".join(sec.get("cmdline", ["?"])),
    ]
    w("layout.txt", "\n".join(info) + "\n")
    log("l%d: %d translations, %d byte reads, checks passed"
        % (mode, len(picker.order), len(byte_rows)))


def main():
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit(__doc__)
    i = argv.index("--")
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", type=int, choices=(4, 5), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--serial", required=True)
    ap.add_argument("--qmp-sock", required=True)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--light", action="store_true",
                    help="registers, guest records and the dump only")
    args = ap.parse_args(argv[:i])
    try:
        capture(args, argv[i + 1:])
    except Fail as e:
        log("l%d: FAIL: %s" % (args.mode, e))
        sys.exit(1)


if __name__ == "__main__":
    main()
