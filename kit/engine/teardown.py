"""Detaching everything a BCC object attached, even where BCC's own cleanup would stop half-way.

BCC 0.26 detaches a uprobe in two steps: close its perf event fd (which removes
the probe), then remove its tracefs event (uprobe_events) in case it was made
through tracefs. Without a readable tracefs the second step fails even for a
probe the perf PMU made, and the exception aborts cleanup() before the other
probes are closed. Here the probes are closed first, and the tracefs step is
skipped when no tracefs event can have been made: tracefs is not mounted or
not readable, or lockdown=confidentiality refuses opening uprobe_events
(measured on Debian's 6.1 under qemu, whether locked at boot or later).
"""

from kit.host import features


def detach_all(bpf):
    """Closes every probe, perf buffer and program of a BPF object. Returns problems, for the notes."""
    problems = []
    if features.tracefs_problem() is not None or features.lockdown() == "confidentiality":
        from bcc import lib
        for ev, fd in list(bpf.uprobe_fds.items()):
            if lib.bpf_close_perf_event_fd(fd) < 0:
                problems.append(f"could not close uprobe {ev.decode(errors='replace')}")
            bpf._del_uprobe_fd(ev)
    for key in list(getattr(bpf, "open_perf_events", {})):  # sampling events first: nothing may stop them closing
        try:
            bpf.detach_perf_event(*key)
        except Exception as e:
            problems.append(f"could not close perf event {key}: {e}")
    try:
        bpf.cleanup()
    except Exception as e:  # what is left dies with the process: every probe is held by an fd
        problems.append(f"cleanup: {e}")
        try:
            bpf.close()
        except Exception:
            pass
    return problems
