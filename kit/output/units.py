"""Human units for times: one rendering shared by tables, stack listings, flame graphs and reports."""

TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def duration(value, unit="us"):
    """A time given in `unit` as fixed-point text in the unit that reads best: 4.89 s, 12.3 ms, 850 µs."""
    if value is None:
        return ""
    if not value:
        return "0"
    secs = float(value) * TIME_UNITS[unit]
    if secs >= 1.0:
        return f"{secs:.2f} s"
    if secs >= 1e-3:
        return f"{secs * 1e3:.1f} ms"
    us = secs * 1e6
    return f"{us:.1f} µs" if us >= 1 else f"{us:.2f} µs"
