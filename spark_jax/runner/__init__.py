"""Running one experiment from a config: build it, loop over rounds, keep what it produced.

  build          config -> `Setup` (mesh, model, data, partition, topology, the algorithm)
  experiment     the round loop: byte accounting, NaN guard, checkpoints, resume, the summary
  validation     a config's cross-cutting checks (one line per problem); run_budget, run_checks, run_data
  run_io, run_lock, run_signals, checkpoint, distributed   run directories, locks, signals, orbax, hosts
  run_summary, progress, curves, tensorboard_log           what a run prints and leaves
"""
