"""O_DIRECT I/O of known count and size on a block device, gated like the C workloads:
prints "ready", waits for "go", does the I/O, prints "done <json of its own counts>", exits on the next line.

usage: dio.py DEVICE WRITES READS BLOCK_BYTES
Its books: requests and bytes per operation, the seconds each loop took and each operation's slowest
call (a request's time on the device is inside its call's)."""

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
    slowest = {"write": 0.0, "read": 0.0}  # each request's time as the workload saw it, in µs
    for i in range(writes):  # distinct, non-adjacent offsets: requests cannot merge
        t = time.monotonic()
        done["bytes_written"] += os.pwritev(fd, [buf], (2 * i) * block)
        slowest["write"] = max(slowest["write"], (time.monotonic() - t) * 1e6)
        done["writes"] += 1
    t_reads = time.monotonic()
    for i in range(reads):
        t = time.monotonic()
        done["bytes_read"] += os.preadv(fd, [buf], (2 * i) * block)
        slowest["read"] = max(slowest["read"], (time.monotonic() - t) * 1e6)
        done["reads"] += 1
    done["seconds"] = time.monotonic() - t0
    done["write_seconds"], done["read_seconds"] = t_reads - t0, time.monotonic() - t_reads
    done["max_us"] = slowest
    os.close(fd)
    print("done " + json.dumps(done), flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
