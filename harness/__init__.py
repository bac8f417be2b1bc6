"""harness: train qvit models with any flag combination, measure honestly, record to pandas.

    python -m harness run --model ivit_micro --flags legacy --flags seed --epochs 3 --out DIR
    python -m harness ablate ablations/seed_timeline.toml --device cpu

Modules: `runner` (RunSpec, execute_run, run_sweep), `loop` (the training loop and its loop
flags), `data` (digits / CIFAR / ImageFolder / synthetic), `measure` (host-sync counting,
timing, memory), `records` (the runs table), `provenance`, `plots`, `cli`.
"""
