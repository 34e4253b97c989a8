"""O_DIRECT I/O of known count and size on a block device, gated like the C workloads:
prints "ready", waits for "go", does the I/O, prints "done <json of its own counts>", exits on the next line.

usage: dio.py DEVICE WRITES READS BLOCK_BYTES [SLOW_EVERY]"""

import json
import mmap
import os
import sys
import time


def main():
    dev, writes, reads, block = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
    buf.write(b"k" * block)
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    print("ready", flush=True)
    sys.stdin.readline()
    done = {"writes": 0, "reads": 0, "bytes_written": 0, "bytes_read": 0, "pid": os.getpid()}
    t0 = time.monotonic()
    for i in range(writes):  # distinct, non-adjacent offsets: requests cannot merge
        done["bytes_written"] += os.pwritev(fd, [buf], (2 * i) * block)
        done["writes"] += 1
    for i in range(reads):
        done["bytes_read"] += os.preadv(fd, [buf], (2 * i) * block)
        done["reads"] += 1
    done["seconds"] = time.monotonic() - t0
    os.close(fd)
    print("done " + json.dumps(done), flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
