"""Medians, spreads and side-by-side ratios over repetitions.

A ratio is taken inside each repetition (kit and the peer measured minutes
apart at most, in alternating order) and then summarized, so drift of the
shared machine between repetitions cancels instead of adding up.
"""

import statistics


class Figure:
    """Samples of one measured quantity, one per repetition (None where it could not be taken)."""

    def __init__(self, samples, unit=""):
        self.all = list(samples)
        self.samples = [s for s in self.all if s is not None]
        self.unit = unit

    def __bool__(self):
        return bool(self.samples)

    @property
    def median(self):
        return statistics.median(self.samples) if self.samples else None

    @property
    def lo(self):
        return min(self.samples) if self.samples else None

    @property
    def hi(self):
        return max(self.samples) if self.samples else None

    def fmt(self, digits=None):
        """`median [min–max] unit`; the range is the spread over repetitions."""
        if not self.samples:
            return "n/a"
        f = _fmt(digits, self.samples)
        unit = f" {self.unit}" if self.unit else ""
        if len(self.samples) == 1:
            return f"{f(self.median)}{unit}"
        return f"{f(self.median)} [{f(self.lo)}–{f(self.hi)}]{unit}"

    def to_json(self):
        return {"median": self.median, "min": self.lo, "max": self.hi, "samples": self.all, "unit": self.unit}


def _fmt(digits, samples):
    if digits is None:
        m = max(abs(s) for s in samples)
        if 0 < m < 0.01:
            return lambda v: f"{v:.2g}"
        digits = 0 if m >= 100 else 1 if m >= 10 else 2 if m >= 1 else 3
    return lambda v: f"{v:.{digits}f}"


def paired_ratio(a, b):
    """Per-repetition a/b where both exist and b is positive."""
    return Figure([x / y if x is not None and y is not None and y > 0 else None for x, y in zip(a.all, b.all)],
                  unit="×")


def noise_bound(fig):
    """True when the figure, a cost, is not resolved by the repetitions: some sample is not
    positive (a cost cannot be), or the samples spread wider than their median."""
    if not fig:
        return False
    return fig.lo <= 0 or (len(fig.samples) > 1 and fig.hi - fig.lo > abs(fig.median))
