"""kit benchmarks against bpftrace and bcc's tools: `sudo ./bench/run` (see bench/__main__.py)."""
