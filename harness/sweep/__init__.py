"""Many runs: a spec's plan as runs (`runs`), the float twins trained first (`pretrain`),
and the executors that run blocks in child processes or Slurm jobs and merge their rows
(`executors`), resuming what a killed sweep left."""
