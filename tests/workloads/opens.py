"""Opens a known set of files, some missing and some denied, and says what it did. Gated: prints
"ready", waits for a line, opens, prints "done <json of its own counts>", exits on the next line.

usage: opens.py DIR  (DIR holds `present` (mode 644), `secret` (root's, mode 600) and a deep tree)
It drops to uid 65534 before opening, so `secret` is denied (root's DAC override would allow it)."""

import errno
import json
import os
import sys


def main():
    d = sys.argv[1]
    long_dir = os.path.join(d, *(["d" * 60] * 5))  # > 255 bytes of path
    plan = [(os.path.join(d, "present"), 7), (os.path.join(d, "missing"), 5), (os.path.join(d, "secret"), 3),
            (os.path.join(long_dir, "deep"), 2)]
    os.setgid(65534)
    os.setuid(65534)
    print("ready", flush=True)
    sys.stdin.readline()
    books = {}
    for path, times in plan:
        for _ in range(times):
            try:
                os.close(os.open(path, os.O_RDONLY))
                err = ""
            except OSError as e:
                err = errno.errorcode[e.errno]
            key = f"{path}|{err}"
            books[key] = books.get(key, 0) + 1
    print("done " + json.dumps(books), flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
