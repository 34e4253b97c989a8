"""bulk: one TCP connection on 127.0.0.1 carrying BYTES as fast as it can, in
the network namespace it is started in, where the bench's nftables rule drops
every Nth segment on the input hook, so the sender retransmits thousands of
times a second (fast retransmits; the tcpretrans benchmark's workload).
Prints its own wall-clock time for the transfer.

    bulk PORT BYTES
"""

import json
import socket
import sys
import threading
import time


def main():
    port, total = int(sys.argv[1]), int(sys.argv[2])
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    got = [0]

    def sink():
        conn, _ = srv.accept()
        while True:
            b = conn.recv(1 << 20)
            if not b:
                break
            got[0] += len(b)
        conn.close()

    th = threading.Thread(target=sink)
    th.start()
    cli = socket.create_connection(("127.0.0.1", port))
    buf = b"x" * (1 << 20)
    sent = 0
    t = time.perf_counter()
    while sent < total:
        cli.sendall(buf)
        sent += len(buf)
    cli.shutdown(socket.SHUT_WR)
    th.join()
    t = time.perf_counter() - t
    cli.close()
    srv.close()
    print(json.dumps({"seconds": round(t, 6), "bytes": got[0]}))


if __name__ == "__main__":
    main()
