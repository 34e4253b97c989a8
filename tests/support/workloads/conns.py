"""TCP connections of known lifetime and byte counts to a loopback server, and some to a closed port
(refused: reset), in whatever network namespace it runs in. Gated: prints "ready", waits for a line, does
its work, prints "done <json of its own records>".

usage: conns.py HOST N REFUSED [hold]   (hold: stay alive, listening, until one more line)"""

import json
import socket
import sys
import threading
import time

LIFETIMES_MS = (30, 120)


def main():
    host, n, refused = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(fam)
    srv.bind((host, 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    closed = socket.socket(fam)
    closed.bind((host, 0))  # bound, never listening: a connect to it is reset
    closed_port = closed.getsockname()[1]

    def serve():
        for _ in range(n):
            conn, _ = srv.accept()
            want = int(conn.recv(16).split(b":")[0])
            got = len(b"".join(iter(lambda: conn.recv(65536), b"")))
            conn.sendall(b"y" * want)
            conn.close()
            del got

    t = threading.Thread(target=serve)
    t.start()
    print("ready", flush=True)
    sys.stdin.readline()
    records = []
    for i in range(n):
        up, down, life = 1000 + 37 * i, 50 + 11 * i, LIFETIMES_MS[i % 2]
        t0 = time.monotonic()
        c = socket.create_connection((host, port))
        c.sendall(f"{down}:".encode().ljust(16, b" ") + b"x" * (up - 16))
        time.sleep(life / 1000)
        c.shutdown(socket.SHUT_WR)
        got = len(b"".join(iter(lambda: c.recv(65536), b"")))
        sport = c.getsockname()[1]
        c.close()
        records.append({"sport": sport, "dport": port, "sent": up, "received": got, "hold_ms": life,
                        "measured_ms": (time.monotonic() - t0) * 1000})
    fails = 0
    for _ in range(refused):
        try:
            socket.create_connection((host, closed_port)).close()
        except ConnectionRefusedError:
            fails += 1
    t.join()
    print("done " + json.dumps({"conns": records, "refused": fails, "port": port, "closed_port": closed_port}),
          flush=True)
    if sys.argv[4:] == ["hold"]:
        sys.stdin.readline()


if __name__ == "__main__":
    main()
