"""Calibrates what one offcpu block costs on this host, by running offcpu's own program.

offcpu's in-scope path is more than a stack capture: at switch-out both stack
ids, the walk that recovers callers libc's missing frame pointers hide, and
the start entry; at switch-in the lookup, the delete and the aggregation.
What that costs depends most on how warm the caches are: a block in a hot
loop (a ping-pong, a hundred thousand a second on one CPU) finds the
unwinder's tables, the maps and the stacks in cache; a block of a service
that blocks a thousand times a second does not, and costs two to three
times more here. So the recipe's own program, rendered and compiled as
`kit run offcpu --comm <ping-pong>` would, is attached around a ping-pong
pinned to one CPU, run back to back (hot) and paced (cold), and the
kernel's run time of the program (BPF_ENABLE_STATS) is divided by the blocks
kit counted. The ping-pong's own block shape (stack depths, the walk:
kit/guard/blockshape.py) is kept with the figures, so that a target's blocks are
priced by how they differ from it (kit/guard/costs.py, offcpu_price).

`kit calibrate` runs it with the other primitives; the first `kit run
offcpu` on a host without a calibration runs it once (about 2 s) and caches
what it measured (first_use).
"""

import datetime
import os
import signal
import statistics
import subprocess
import sys
import time

from kit.guard import blockshape, bpfstats, costs

COMM = "kit-calib-pp"
COMM_OUT = "kit-calib-out"  # a ping-pong the program filters out: its hot filtered switches
HOT_ROUNDS = 6000        # back to back: ~0.2 s, two blocks per round trip
COLD_PACE = 500          # round trips per second when paced: ~1500 blocks/s (the sleep is a block too)
COLD_S = 0.6
FIRST_USE_COLD_S = 0.3   # first use: three shorter paced windows, so that one crowded moment is outvoted
WARM_UP_S = 0.2          # paced, before measuring: kit learns the ping-pong's libc sites and sees the process
SHAPE_S = 0.1
FILTER_S = 0.1           # before each window: what the box's other switches cost the program to filter out
PR_SET_PDEATHSIG = 1
PINGPONG = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None)
libc.prctl(15, sys.argv[3].encode(), 0, 0, 0)  # PR_SET_NAME: the comm kit is scoped to
n, pace = int(sys.argv[1]), float(sys.argv[2])
a, b = os.pipe(), os.pipe()
if os.fork() == 0:
    libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL: gone with its parent
    os.close(a[1]); os.close(b[0])
    for _ in range(n):
        if not os.read(a[0], 1):
            break
        os.write(b[1], b"x")
    os._exit(0)
os.close(a[0]); os.close(b[1])
for _ in range(n):
    os.write(a[1], b"x"); os.read(b[0], 1)
    if pace:
        time.sleep(1 / pace)
os.wait()
"""


def _preexec():
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one CPU: its in-scope rate is the whole rate
    import ctypes
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # never outlives kit


def pingpong(rounds, pace=0.0, comm=COMM):
    """A ping-pong of `rounds` round trips (paced at `pace` per second, or back to back), started."""
    return subprocess.Popen([sys.executable, "-c", PINGPONG, str(rounds), str(pace), comm], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_preexec)


def _threads(p):
    """(pid, tid) of the ping-pong's two processes."""
    pids = [p.pid]
    try:
        with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
            pids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return [(pid, pid) for pid in pids]


def _shape(log):
    p = pingpong(int(COLD_PACE * (SHAPE_S + 0.2)), COLD_PACE)
    try:
        time.sleep(0.05)  # forked and running
        return blockshape.sample(_threads(p), SHAPE_S)
    except OSError as e:
        log(f"offcpu: block shape not sampled ({e})")
        return None
    finally:
        p.kill()
        p.wait()


class _Attached:
    """offcpu's own program, scoped to the ping-pong's comm, attached for a with-block."""

    def __enter__(self):
        from kit import catalog
        from kit.engine import program
        from kit.engine import contract
        recipe = catalog.load()["offcpu"]
        self.hooks = contract.hooks_of(recipe)
        self.ctx, text = program.prepare(recipe, {"comm": COMM})
        self.bpf = program.compile_program(text)
        try:
            self.hooks.attach(self.ctx, self.bpf)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        from kit.engine import teardown
        try:
            if self.hooks.detach:
                self.hooks.detach(self.ctx, self.bpf)
        finally:
            teardown.detach_all(self.bpf)
            if self.hooks.cleanup:
                self.hooks.cleanup(self.ctx)

    def _run_time(self, work):
        """(run_time_ns, run_cnt, events, filtered, seconds) of the program while work() runs."""
        from kit.engine import prelude
        w = bpfstats.Window(bpfstats.program_fds(self.bpf))
        s0, t0 = prelude.read_stats(self.bpf), time.monotonic()
        if not w.start(t0):
            raise OSError("BPF_ENABLE_STATS refused")
        try:
            work()
        finally:
            w.stop(time.monotonic())
        s1, t1 = prelude.read_stats(self.bpf), time.monotonic()
        r = w.result()
        return r["run_time_ns"], r["run_cnt"], s1["events"] - s0["events"], s1["filtered"] - s0["filtered"], t1 - t0

    def hot_filtered(self):
        """(body ns per filtered run, runs per second on its CPU) around a ping-pong out of scope, back to
        back on one CPU, or (None, 0)."""
        p = pingpong(HOT_ROUNDS, comm=COMM_OUT)
        try:
            ns, cnt, _events, filtered, seconds = self._run_time(p.wait)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        return (ns / cnt, filtered / seconds) if cnt >= 1000 else (None, 0.0)

    def window(self, start, seen=None):
        """(body ns per in-scope block, in-scope blocks per second) while the ping-pong start() makes runs
        to its end, or (None, 0) when the box's other switches drown it. seen: a list for the filtered
        runs' (run time, runs, seconds) just before."""
        # What a filtered run costs right now: the same program while nothing in scope runs.
        ns_f, cnt_f, events_f, _f, seconds_f = self._run_time(lambda: time.sleep(FILTER_S))
        per_filtered = ns_f / cnt_f if cnt_f else 0.0
        if seen is not None and events_f <= 0.01 * cnt_f:
            seen.append((ns_f, cnt_f, seconds_f))
        p = start()
        try:
            ns, cnt, events, filtered, seconds = self._run_time(p.wait)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        others = filtered * per_filtered
        if events < 100 or others > 0.8 * ns:
            return None, 0.0
        return (ns - others) / events, events / seconds


def measure(rounds=1, log=None, cold_rounds=None, cold_s=COLD_S):
    """{"ns", "body_ns", "offcpu"} for kit/guard/costs.py, or None when offcpu could not run or count here.
    rounds: windows of each kind (cold_rounds: of the paced one, default the same), medians kept."""
    log = log or (lambda msg: None)
    cold_rounds = cold_rounds or rounds
    log(f"offcpu: its program around a ping-pong on one CPU, back to back and paced, {rounds} round(s)")
    shape = _shape(log)
    hot, cold, filt, filt_hot = [], [], [], []
    runs = {"hot": (hot, rounds, lambda: pingpong(HOT_ROUNDS)),
            "cold": (cold, cold_rounds, lambda: pingpong(int(COLD_PACE * cold_s), COLD_PACE))}
    with _Attached() as a:
        a.window(lambda: pingpong(int(COLD_PACE * WARM_UP_S), COLD_PACE))
        for i in range(max(rounds, cold_rounds) + 2):  # two more tries for windows a crowded moment spoilt
            for which in (("hot", "cold") if i % 2 == 0 else ("cold", "hot")):
                got, want, start = runs[which]
                if len(got) < want:
                    body, rate = a.window(start, filt)
                    # a paced block this much dearer than a back-to-back one was a crowded moment's
                    # (cold/hot stays under 3.5 here): retried
                    if body and not (which == "cold" and hot and body > costs.OFFCPU_COLD_MAX * min(
                            x[0] for x in hot)):
                        got.append((body, rate))
            if len(filt_hot) < rounds:
                body, rate = a.hot_filtered()
                if body:
                    filt_hot.append((body, rate))
    if not hot or not cold:
        return None
    body_hot, rate_hot = (statistics.median(x[i] for x in hot) for i in (0, 1))
    body_cold, rate_cold = (statistics.median(x[i] for x in cold) for i in (0, 1))
    body_cold = max(body_cold, body_hot)  # colder caches never make a block cheaper: a crowded moment did
    ref = dict(costs.OFFCPU_REF)
    if shape is not None:
        ref.update(kernel_depth=round(shape.kernel_depth, 1), user_depth=round(shape.user_depth, 1),
                   walk_share=round(shape.walk_share, 2))
    ref.update(hot_rate=round(rate_hot), cold_rate=round(rate_cold))
    # The filtered switches: the box's own, summed over the windows before each measurement (cold), and
    # a ping-pong's out of scope (hot). A box too quiet to filter 50 switches then keeps the defaults.
    filtered = None
    ns_f, cnt_f, seconds_f = (sum(x[i] for x in filt) for i in (0, 1, 2))
    if filt_hot and cnt_f >= 50:
        f_hot, f_hot_rate = (statistics.median(x[i] for x in filt_hot) for i in (0, 1))
        f_cold, f_cold_rate = ns_f / cnt_f, cnt_f / seconds_f / (os.cpu_count() or 1)
        filtered = (f_hot, max(f_cold, f_hot))
        ref.update(filtered_hot_rate=round(f_hot_rate), filtered_cold_rate=round(f_cold_rate))
    return costs.offcpu_calibration(body_hot, body_cold, ref, filtered)


def _can_time():
    fd = bpfstats.enable()
    if fd is None:
        return False
    os.close(fd)
    return True


def first_use(err, path=None, can_time=_can_time):
    """On a host with no calibration file at all, measure offcpu's block costs once and cache them.
    Returns the note to show, or None when nothing was measured."""
    path = path or costs.cache_path()
    if os.path.exists(path):
        return None  # calibrated (maybe not for offcpu: `kit calibrate` says so), or deliberately unusable
    if not can_time():
        return None  # the kernel's run-time statistics need CAP_SYS_ADMIN: nothing to measure with

    def log(msg):
        err.write(f"kit: {msg}\n")
        err.flush()

    log(f"first offcpu run on this host: measuring what a block costs here (about 2 s, once; cached in {path})")
    t0 = time.monotonic()
    try:
        off = measure(1, lambda msg: None, cold_rounds=3, cold_s=FIRST_USE_COLD_S)
    except Exception as e:  # noqa: BLE001 - a failed measurement leaves the defaults, never the run
        log(f"could not measure offcpu's block cost here ({e}); using defaults")
        return None
    if off is None:
        log("could not count blocks of the calibration ping-pong; using defaults")
        return None
    cal = {"version": costs.CALIBRATION_VERSION, "host": costs.host_key(), "partial": ["offcpu"],
           "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "method": "offcpu's program body per block (BPF_ENABLE_STATS) around a ping-pong, hot and paced",
           "ns": off["ns"], "body_ns": off["body_ns"], "offcpu": off["offcpu"]}
    try:
        costs.save_calibration(cal, path)
    except OSError as e:
        log(f"could not cache the offcpu calibration in {path} ({e})")
    return f"offcpu block costs measured on this host in {time.monotonic() - t0:.1f}s"
