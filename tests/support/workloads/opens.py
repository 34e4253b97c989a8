"""Opens a known set of files, some missing and some denied, with known flags, and says what it did.
Gated: prints "ready", waits for a line, opens, prints "done <json of its own counts by path|errno>"
and "log <json list of every open in order: path, flags passed, errno name, fd>", exits on the next
line.

usage: opens.py DIR [NAME]  (DIR holds `present` (mode 644), `secret` (root's, mode 600) and a deep
tree; NAME, if given, becomes its comm). One path is exactly 255 bytes (all that kit keeps: not cut),
one is longer (cut). It drops to uid 65534 before opening, so `secret` is denied
(root's DAC override would allow it), and so is creating a file in DIR."""

import ctypes
import errno
import json
import os
import sys


def main():
    d = sys.argv[1]
    if len(sys.argv) > 2:
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(sys.argv[2].encode()[:15]), 0, 0, 0)  # PR_SET_NAME
    long_dir = os.path.join(d, *(["d" * 60] * 5))  # > 255 bytes of path
    plan = [(os.path.join(d, "present"), os.O_RDONLY, 7),
            (os.path.join(d, "present"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, 2),
            (os.path.join(d, "missing"), os.O_RDONLY, 5),
            (os.path.join(d, "missing"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 1),  # not ours to create: EACCES
            (os.path.join(d, "secret"), os.O_RDONLY, 3),
            (os.path.join(long_dir, "deep"), os.O_RDONLY, 2),
            (os.path.join(d, "m" * (254 - len(d))), os.O_RDONLY, 1)]  # exactly 255 bytes: kept whole, not cut
    os.setgid(65534)
    os.setuid(65534)
    print("ready", flush=True)
    sys.stdin.readline()
    books, log = {}, []
    for path, flags, times in plan:
        for _ in range(times):
            try:
                fd = os.open(path, flags, 0o600)
                os.close(fd)
                err = ""
            except OSError as e:
                fd, err = -1, errno.errorcode[e.errno]
            key = f"{path}|{err}"
            books[key] = books.get(key, 0) + 1
            log.append({"path": path, "flags": flags, "error": err, "fd": fd})
    print("done " + json.dumps(books), flush=True)
    print("log " + json.dumps(log), flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
