"""One module per recipe, named as in the catalog, for what is not data:

  prepare(ctx)       resolve and check inputs that need the system (binaries, symbols)
  extra(ctx)         integers computed by kit for the template (BTF offsets, feature flags)
  attach(ctx, bpf)   explicit attach points (uprobes); tracepoints attach themselves
  collect(ctx, bpf)  read the maps into {"rows": [...], "histograms": {...}, "notes": [...]}
  detach(ctx, bpf)   stop what attach started (threads polling perf buffers) before BCC cleans up
  cleanup(ctx)       release what prepare opened
"""
