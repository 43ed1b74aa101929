#!/usr/bin/env python3
"""Write the real-guest initramfs: a gzip'd cpio "newc" archive.

Usage: mkcpio.py OUT.cpio.gz BUSYBOX INIT_SCRIPT [MODULE.ko ...]

Contents: /bin/busybox, /init (the script), the directories the script uses and
the kernel modules given (as /lib/modules/NAME.ko), and
a /dev/console character device (5,1) so the kernel can give /init a console
before devtmpfs is mounted. Made without root and reproducibly (mtime 0).
"""
import gzip
import os
import stat
import sys


def entry(out, ino, name, mode, data=b"", rdev=(0, 0)):
    name_b = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
              len(name_b), 0]
    hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
    out.write(hdr + name_b)
    out.write(b"\0" * (-(len(hdr) + len(name_b)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def main():
    out_path, busybox, init_script = sys.argv[1:4]
    modules = sys.argv[4:]
    with open(busybox, "rb") as f:
        bb = f.read()
    with open(init_script, "rb") as f:
        init = f.read()
    items = [
        ("bin", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("dev", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("proc", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("sys", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("tmp", stat.S_IFDIR | 0o1777, b"", (0, 0)),
        ("bin/busybox", stat.S_IFREG | 0o755, bb, (0, 0)),
        ("bin/sh", stat.S_IFLNK | 0o777, b"busybox", (0, 0)),
        ("init", stat.S_IFREG | 0o755, init, (0, 0)),
        ("lib", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("lib/modules", stat.S_IFDIR | 0o755, b"", (0, 0)),
    ]
    for path in modules:
        with open(path, "rb") as f:
            items.append(("lib/modules/" + os.path.basename(path),
                          stat.S_IFREG | 0o644, f.read(), (0, 0)))
    with open(out_path + ".tmp", "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            for ino, (name, mode, data, rdev) in enumerate(items, start=1):
                entry(out, ino, name, mode, data, rdev)
            entry(out, 0, "TRAILER!!!", 0)
    os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":
    main()
