"""Facts about the host kit runs on: kernel features, BTF, perf events, /proc, sockets, targets."""
