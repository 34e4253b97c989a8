"""The floor: an empty BPF program (return 0) on one hook, loaded through BCC
like kit's, held until SIGINT. What an event costs when nothing at all is
done with it, and the smallest BCC start-up there is.

    empty_probe.py raw_tracepoint NAME
    empty_probe.py tracepoint CATEGORY:NAME
"""

import signal
import sys

from bcc import BPF


def load(hook, target):
    if hook == "raw_tracepoint":
        return BPF(text=f"RAW_TRACEPOINT_PROBE({target}) {{ return 0; }}")
    if hook == "tracepoint":
        cat, name = target.split(":")
        return BPF(text=f"TRACEPOINT_PROBE({cat}, {name}) {{ return 0; }}")
    raise SystemExit(f"empty_probe: unknown hook {hook!r}")


def main():
    hook, target = sys.argv[1], sys.argv[2]
    b = load(hook, target)
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    sys.stderr.write(f"empty {hook} {target}: ready\n")
    sys.stderr.flush()
    while not stop:
        signal.pause()
    b.cleanup()


if __name__ == "__main__":
    main()
