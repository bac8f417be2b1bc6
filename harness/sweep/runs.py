"""A spec's plan (`harness.spec.planning`) as the run package's units: a `RunSpec` per planned
run of whole epochs, a `Session` per step-interleaved block."""

from __future__ import annotations

from harness.run.interleave import Session
from harness.run.runner import RunSpec
from harness.spec.ablation import AblationSpec
from harness.spec.designs import Config
from harness.spec.planning import PlannedRun, session_configs

__all__ = ["to_runspecs", "sessions_of"]


def to_runspecs(spec: AblationSpec, runs: list[PlannedRun]) -> list[RunSpec]:
    """The runner's RunSpec of each planned run: one training seed per block (configs in
    a block are paired: same seed, same data order, neighbours in time)."""
    return [RunSpec(config=r.config.name, flags=r.config.flags,
                    settings=spec.settings.replace(model=r.model,
                                                   seed=spec.settings.seed + r.block),
                    float_reference=r.config.float_reference, repeat=r.block, block=r.block,
                    order=r.order) for r in runs]


def sessions_of(spec: AblationSpec, configs: list[Config]) -> list[Session]:
    """``repeats`` step-interleaved sessions per model (`harness.run.interleave`; each its
    own process and seed: the method's blocks) of `session_configs`."""

    def session(m: str, b: int) -> Session:
        return Session(tuple(RunSpec(config=c.name, flags=c.flags,
                                     settings=spec.settings.replace(
                                         model=m, seed=spec.settings.seed + b),
                                     float_reference=c.float_reference)
                             for c in session_configs(spec, configs, m)),
                       rounds=spec.rounds, index=b)

    return [session(m, b) for b in range(spec.repeats) for m in spec.models]
