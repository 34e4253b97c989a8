"""kit: scoped, time-boxed eBPF probes for incident response."""

__version__ = "0.1.0"
