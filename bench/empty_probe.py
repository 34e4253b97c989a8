"""The floor: an empty BPF program (return 0) on each of kit's attach points,
loaded through BCC like kit's, held until SIGINT. What an event costs when
nothing at all is done with it, and the smallest BCC start-up there is.

    empty_probe.py HOOK TARGET [HOOK TARGET ...]
      raw_tracepoint NAME | tracepoint CATEGORY:NAME
      uprobe BINARY:SYMBOL | uretprobe BINARY:SYMBOL   (every process that maps BINARY)
      perf_event cpu-clock:HZ                         (a sampling event on every CPU)
"""

import signal
import sys

from bcc import BPF


def load(hooks):
    text = []
    for i, (hook, target) in enumerate(hooks):
        if hook == "raw_tracepoint":
            text.append(f"RAW_TRACEPOINT_PROBE({target}) {{ return 0; }}")
        elif hook == "tracepoint":
            cat, name = target.split(":")
            text.append(f"TRACEPOINT_PROBE({cat}, {name}) {{ return 0; }}")
        elif hook in ("uprobe", "uretprobe", "perf_event"):
            text.append(f"int empty{i}(void *ctx) {{ return 0; }}")
        else:
            raise SystemExit(f"empty_probe: unknown hook {hook!r}")
    b = BPF(text="\n".join(text))
    for i, (hook, target) in enumerate(hooks):
        if hook == "perf_event":  # as kit attaches its own (kit/host/perfevent.py attach_sampling)
            from kit.host import perfevent
            event, hz = target.split(":")
            ptype, config = perfevent.SAMPLING_EVENTS[event]
            b.attach_perf_event(ev_type=ptype, ev_config=config, fn_name=f"empty{i}".encode(), sample_freq=int(hz))
        if hook in ("uprobe", "uretprobe"):
            # attached the way kit attaches its own (BCC 0.26's attach_uprobe passes a garbage ref_ctr_offset)
            from kit.binaries import elf
            from kit.engine import uprobes
            binary, sym = target.rsplit(":", 1)
            with elf.Elf(binary) as e:
                offset = e.file_offset(elf.function(binary, sym).addr)
            err = uprobes.attach_one(b, binary, offset, f"empty{i}", ret=hook == "uretprobe", tag=str(i))
            if err is not None:
                raise SystemExit(f"empty_probe: the kernel refused a {hook} at {target}: {err}")
    return b


def main():
    args = sys.argv[1:]
    hooks = list(zip(args[::2], args[1::2]))
    b = load(hooks)
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    sys.stderr.write(f"empty program on {', '.join(f'{h} {t}' for h, t in hooks)}: ready\n")
    sys.stderr.flush()
    while not stop:
        signal.pause()
    b.cleanup()


if __name__ == "__main__":
    main()
