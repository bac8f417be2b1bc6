"""Step-interleaved measurement: the most precise method for what flags do to the arithmetic.

In one process, every config of a design gets its own model (the same starting weights, the
same pretrained start and calibration), its own optimizer, and the same batches. Then, round
after round, each config takes one training step in turn, in an order shuffled per round
(seeded); each step is timed alone (synced at both ends on CUDA). Configs are paired with
the baseline within a round, so the machine's drift falls on all configs alike. A session
is one process with one instance of each config's model; the method runs several sessions
per model (new processes, instances and batches), and its intervals are over sessions, not
rounds: an A/A pair of instances can differ by a few percent for a whole session (memory
placement), which rounds within one session cannot reveal. Loop-level costs
(data loading, workers, host reads, plots) are outside the step by construction: this
method measures model arithmetic and the optimizer step only, and the report says so.

Rows go to the runs table with ``method = "steps"``, one per (config, round); a config's
compile time (its warm-up rounds') on its first round's row.

    python -m harness.run.interleave PAYLOAD.json OUT      # the child process (executors.spawn)
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness import records
from harness.errors import child_main
from harness.run import measure
from harness.run.data import MEAN_STD, normalize_batch
from harness.run.loop import build_optimizer, compile_model, compile_seconds, train_step
from harness.run.process import apply_process_settings
from harness.run.runner import RunSpec, base_row, build_model, resolve_device, validate_spec
from harness.spec.settings import digest

__all__ = ["Session", "session_run_ids", "session_summary", "measure_session", "main"]


@dataclass(frozen=True)
class Session:
    """One interleaved measurement: the configs (RunSpecs, block/order ignored) of one model,
    ``rounds`` timed rounds after ``warmup`` untimed ones. A model's sessions run in
    separate processes (new model instances, new batches): they are the blocks of the
    method's intervals, because two instances of the same config can differ by a few
    percent for as long as they live."""

    specs: tuple[RunSpec, ...]
    rounds: int = 6
    warmup: int = 3
    index: int = 0  # the session's number among a model's sessions: its block

    def to_dict(self) -> dict[str, Any]:
        return {"specs": [s.to_dict() for s in self.specs], "rounds": self.rounds,
                "warmup": self.warmup, "index": self.index}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Session:
        return cls(tuple(RunSpec.from_dict(s) for s in d["specs"]), d["rounds"], d["warmup"],
                   d.get("index", 0))

    def run_id(self, spec: RunSpec, rnd: int) -> str:
        key = digest({"run": spec.run_id, "rounds": self.rounds, "warmup": self.warmup,
                      "configs": sorted(s.run_id for s in self.specs), "index": self.index})
        return f"{spec.run_id}-steps-{key}-b{self.index}r{rnd}"


def session_run_ids(session: Session) -> list[str]:
    return [session.run_id(s, r) for s in session.specs for r in range(session.rounds)]


def session_summary(session: Session, table) -> str:
    """A finished session in a few words: each config's median step time."""
    ids = set(session_run_ids(session))
    rows = table[table["run_id"].isin(ids) & (table["status"] == "ok")]
    med = rows.groupby("config", sort=False)["train_s"].median()
    return "step median " + ", ".join(f"{c} {1e3 * t:.1f} ms" for c, t in med.items())


def _models(session: Session, device: torch.device) -> tuple[list[tuple], Any]:
    from harness.run.pretrained import start_from_pretrained

    first = session.specs[0].settings
    bundle = validate_spec(first)
    out = []
    for spec in session.specs:
        torch.manual_seed(first.seed)  # every config starts from the same weights
        model = build_model(spec).to(device)
        if first.pretrained:
            start_from_pretrained(model, spec, bundle, device)
        model.train()
        if spec.flags.compile_model:  # compiled in the warm-up rounds
            model = compile_model(model, **spec.compile_options(device.type))
        opt = build_optimizer(model, opt=first.opt, lr=first.lr,
                              weight_decay=first.weight_decay,
                              fused=spec.flags.fused_optimizer, device=device)
        out.append((model, opt))
    return out, bundle


def _batches(bundle, settings, device: torch.device, n: int) -> list[tuple]:
    g = torch.Generator().manual_seed(settings.seed)
    x_all, y_all = bundle.train.all()
    out = []
    for _ in range(n):
        idx = torch.randint(0, len(y_all), (settings.batch_size,), generator=g)
        x = normalize_batch(x_all[idx].to(device), MEAN_STD[settings.dataset])
        out.append((x, y_all[idx].to(device)))
    return out


def _timed_step(model, opt, x, y, device: torch.device) -> float:
    measure.phase_boundary(device)
    t0 = time.perf_counter()
    train_step(model, x, y, optimizer=opt)
    measure.phase_boundary(device)
    return time.perf_counter() - t0


def _warm_up(session: Session, pairs, batches, device: torch.device, say) -> list[float]:
    """The untimed rounds; compiled models compile in the first (said, with its seconds).
    Returns each config's compile seconds in them."""
    compiled = [s.config for s in session.specs if s.flags.compile_model]
    if compiled:
        say(f"compiling {session.specs[0].model} {', '.join(compiled)} (torch.compile, in "
            f"the warm-up rounds)")
    t0 = time.perf_counter()
    compile_s = [0.0] * len(pairs)
    for r in range(session.warmup):
        for i, (model, opt) in enumerate(pairs):
            c0 = compile_seconds()
            _timed_step(model, opt, *batches[r % len(batches)], device)
            compile_s[i] += compile_seconds() - c0
    if compiled:
        say(f"compiled in {sum(compile_s):.1f} s (warm-up rounds "
            f"{time.perf_counter() - t0:.1f} s)")
    return compile_s


def measure_session(session: Session, out_dir: str | Path, *, progress: bool = False
                    ) -> None:
    """Run the session here; write one row per (config, round) to a shard per config.
    ``progress``: say when models compile and how long it took (on stderr)."""
    from harness.records.provenance import provenance

    def say(line: str) -> None:
        if progress:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    first = session.specs[0].settings
    device = resolve_device(first.device)
    process = apply_process_settings(first, device)
    pairs, bundle = _models(session, device)
    batches = _batches(bundle, first, device, 8)
    compile_s = _warm_up(session, pairs, batches, device, say)
    times: dict[int, list[float]] = {i: [] for i in range(len(pairs))}
    rng = random.Random(f"qvit-interleave:{first.seed}")
    for r in range(session.rounds):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for i in order:
            times[i].append(_timed_step(*pairs[i], *batches[r % len(batches)], device))
    prov = provenance(device, out_dir, **process)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for i, spec in enumerate(session.specs):
        rows = [{**base_row(spec, prov, process), "run_id": session.run_id(spec, r),
                 "block": session.index, "repeat": r, "order": 0, "method": "steps",
                 "epoch": 1, "warmup": False, "steps": 1, "train_s": t, "compute_s": t,
                 "step_s_median": t, "step_times": json.dumps([t]), "ended": stamp,
                 "compile_s": compile_s[i] if r == 0 else 0.0,  # (a session's: its sum)
                 "status": "ok", "error": ""}
                for r, t in enumerate(times[i])]
        records.write_shard(out_dir, f"{spec.run_id}-steps", rows)


@child_main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    payload, out = argv[0], argv[1]
    measure_session(Session.from_dict(json.loads(Path(payload).read_text())), out,
                    progress="--progress" in argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
