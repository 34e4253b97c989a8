"""Looks for one file name in a list of directories, as a loader walks a search path, and says what it
did. Gated: prints "ready", waits for a line, does ROUNDS rounds, prints "done <json of its own counts
per path and errno>"; on the next line it searches again every 20 ms (for a tracer attached now) until
a third line, then exits.

usage: searchpath.py TOP NAME DIRS ROUNDS   (TOP/d0 .. TOP/dN-1; only the last holds NAME)"""

import errno
import json
import os
import sys
import threading


def search(paths, books):
    for p in paths:
        try:
            os.close(os.open(p, os.O_RDONLY))
            err = ""
        except OSError as e:
            err = errno.errorcode[e.errno]
        if books is not None:
            books[f"{p}|{err}"] = books.get(f"{p}|{err}", 0) + 1
        if not err:
            return


def main():
    top, name, ndirs, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    paths = [os.path.join(top, f"d{i}", name) for i in range(ndirs)]
    print("ready", flush=True)
    sys.stdin.readline()
    books = {}
    for _ in range(rounds):
        search(paths, books)
    print("done " + json.dumps(books), flush=True)
    sys.stdin.readline()
    stop = threading.Event()

    def again():
        while not stop.wait(0.02):
            search(paths, None)

    t = threading.Thread(target=again)
    t.start()
    sys.stdin.readline()
    stop.set()
    t.join()


if __name__ == "__main__":
    main()
