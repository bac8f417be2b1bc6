"""What a sweep shows while it runs: runs done / total, the block and config under way,
elapsed time, an ETA from the runs finished so far, and failures so far.

On a terminal: one tqdm bar (failures and compile lines are written above it). Off one (nox
logs, a Slurm job's output, CI): one log line per finished run, with its epoch time, top-1
and the ETA. ``enabled=False``: silent.

The runs execute in child processes (`harness.sweep.executors`); the submitting process
learns of them from what the children write anyway: the run each child is in
(``inflight.json``) and each run's shard (``<out>/shards/<run_id>.parquet``, replaced as
its epochs end). `RunWatcher.poll` looks at both, cheaply (a shard is read again only when
it changed), so the same watching serves local children and Slurm jobs alike.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

import pandas as pd
from tqdm import tqdm

from harness import records

__all__ = ["Progress", "RunWatcher", "EpochLog", "format_eta", "run_summary"]

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}{postfix}]"


def format_eta(seconds: float | None) -> str:
    return "?" if seconds is None else tqdm.format_interval(max(0.0, seconds))


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Items (runs, or interleaved sessions) done / total with an ETA. ``pending`` maps
    each item still to run to its group (items of one group take alike long: a model and
    config); the ETA is the sum over pending items of their group's mean duration so far
    (the mean of all groups before one of its own finished), less what the running ones
    have already spent, divided by the items running at once (``parallel``)."""

    def __init__(self, pending: dict[str, object], *, total: int, unit: str = "runs",
                 title: str = "sweep", enabled: bool = True, parallel: int = 1,
                 stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.pending = dict(pending)
        self.total, self.unit, self.title, self.parallel = total, unit, title, parallel
        self.failed: set[str] = set()
        self.durations: dict[object, list[float]] = {}
        self.running: dict[str, tuple[str, float]] = {}  # key -> (label, started)
        self.where = ""
        self.t0 = time.monotonic()
        self.bar = None
        if enabled and _isatty(self.stream):
            self.bar = tqdm(total=total, initial=self.done, file=self.stream, unit=unit,
                            desc=title, bar_format=BAR_FORMAT, leave=True, position=0)
            self._refresh()

    @property
    def done(self) -> int:
        return self.total - len(self.pending)

    def eta(self, now: float | None = None) -> float | None:
        spent = [d for ds in self.durations.values() for d in ds]
        if not self.pending:
            return 0.0
        if not spent:
            return None
        overall = statistics.fmean(spent)

        def est(key):
            own = self.durations.get(self.pending.get(key))
            return statistics.fmean(own) if own else overall

        now = time.monotonic() if now is None else now
        left = sum(est(k) for k in self.pending)
        left -= sum(min(now - t, est(k)) for k, (_, t) in self.running.items()
                    if k in self.pending)
        return max(0.0, left) / max(1, min(self.parallel, len(self.pending)))

    def at(self, where: str) -> None:
        """Where the sweep is (a block, a session), shown before the running items."""
        self.where = where
        self._refresh()

    def start(self, key: str, label: str, since: float | None = None) -> None:
        """Item ``key`` is running (since ``since``, a `time.monotonic` reading)."""
        self.running[key] = (label, time.monotonic() if since is None else since)
        self._refresh()

    def finish(self, key: str, ok: bool, text: str, duration: float | None = None) -> None:
        """Item ``key`` ended (ok, or failed); ``text`` says how, in one line."""
        if duration is None and key in self.running:
            duration = time.monotonic() - self.running[key][1]
        self.running.pop(key, None)
        group = self.pending.pop(key, None)
        if ok:
            self.failed.discard(key)
            if duration is not None and group is not None:
                self.durations.setdefault(group, []).append(duration)
        else:
            self.failed.add(key)
        where = f" ({self.where})" if self.where else ""
        tail = (f"; failed {len(self.failed)}; elapsed {format_eta(self.elapsed)}, "
                f"ETA {format_eta(self.eta())}")
        line = f"{self.unit[:-1] if self.unit.endswith('s') else self.unit} " \
               f"{self.done}/{self.total}{where} {text}"
        if self.bar is None:
            self.say(line + tail)
        else:
            self.bar.n = self.done
            if not ok:
                self.say(line)
        self._refresh()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, line: str) -> None:
        """A line for the log (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", file=self.stream, flush=True)

    def tick(self) -> None:
        """Redraw the bar (the elapsed time and the ETA count on between events)."""
        self._refresh()

    def _refresh(self) -> None:
        if self.bar is None:
            return
        now = [label for label, _ in self.running.values()]
        parts = [f"ETA {format_eta(self.eta())}", f"failed {len(self.failed)}"]
        if self.where:
            parts.append(self.where)
        if now:
            parts.append("now " + ", ".join(now[:2]) + (f" +{len(now) - 2}" if len(now) > 2
                                                         else ""))
        self.bar.set_postfix_str(", ".join(parts), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self._refresh()
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_summary(rows: pd.DataFrame) -> tuple[bool, str]:
    """A finished run's rows in a few words: whether it ended ok, and its epoch time (the
    median of its timed epochs) and final top-1, or how it failed."""
    bad = rows[rows["status"] != "ok"]
    if len(bad):
        last = bad.sort_values("epoch").iloc[-1]
        why = str(last["error"]).strip().splitlines()[-1:] or [""]
        return False, f"FAILED ({last['status']} in epoch {int(last['epoch'])}: {why[0][:160]})"
    timed = rows[~rows["warmup"].astype(bool) & ~rows["resumed"].astype(bool)]
    timed = timed if len(timed) else rows
    last = rows.sort_values("epoch").iloc[-1]
    return True, (f"ok, epoch {float(timed['epoch_s'].median()):.2f} s, "
                  f"top-1 {float(last['top1']):.1f}%")


class RunWatcher:
    """Follows the runs of a sweep from the submitting process (see the module's doc):
    ``poll()`` tells ``progress`` which runs started and ended; a run whose flags compile
    the model gets a line when it starts compiling and one with the seconds it took."""

    def __init__(self, specs: Iterable, out: Path, progress: Progress,
                 inflight: Callable[[int], Path]):
        self.specs = {s.run_id: s for s in specs}
        self.out, self.progress, self.inflight = Path(out), progress, inflight
        self.blocks: list[int] = []
        self.marks: dict[int, float] = {}  # block -> when its current run started
        self.stamps: dict[str, tuple[int, int]] = {}
        self.ended: dict[str, bool] = {}
        self.compiling: dict[str, bool] = {}

    @staticmethod
    def label(spec) -> str:
        return f"{spec.model} {spec.config}"

    def watch(self, blocks: Iterable[int], *, started: bool = True) -> None:
        """The blocks running now (``started``: from now on; else from when their first
        run is seen)."""
        self.blocks = sorted(blocks)
        now = time.monotonic()
        self.marks = {b: self.marks.get(b, now) for b in self.blocks} if started else \
            {b: t for b, t in self.marks.items() if b in self.blocks}

    def poll(self) -> None:
        """Look at the shards (runs that ended), then at the runs in flight."""
        shards = self.out / "shards"
        for run_id in self.specs:
            path = shards / f"{run_id}.parquet"
            try:
                st = path.stat()
            except OSError:
                continue
            stamp = (st.st_mtime_ns, st.st_size)
            if self.stamps.get(run_id) == stamp:
                continue
            rows = records.read_shard(path)
            if rows is None:
                continue
            self.stamps[run_id] = stamp
            self._rows(run_id, rows)
        for b in self.blocks:  # after the ends: a run starts where the one before it ended
            self._inflight(b)
        self.progress.tick()

    def _inflight(self, block: int) -> None:
        try:
            run_id = json.loads(self.inflight(block).read_text())["run_id"]
        except (OSError, ValueError, KeyError):
            return
        spec = self.specs.get(run_id)
        if spec is None or run_id in self.progress.running or run_id in self.ended:
            return
        since = self.marks.setdefault(block, time.monotonic())
        self.progress.start(run_id, self.label(spec), since)
        if spec.flags.compile_model and run_id not in self.compiling:
            self.compiling[run_id] = True
            self.progress.say(f"compiling {self.label(spec)} (torch.compile, in its first "
                              f"epoch)")

    def _rows(self, run_id: str, rows: pd.DataFrame) -> None:
        spec = self.specs[run_id]
        if self.compiling.get(run_id) and (rows["epoch"] == 1).any():
            first = rows[rows["epoch"] == 1].iloc[0]
            if first["status"] == "ok":
                self.progress.say(f"compiled {self.label(spec)} in "
                                  f"{float(first['compile_s']):.1f} s")
            self.compiling[run_id] = False
        ended = records.run_finished(rows, spec.epochs) or bool((rows["status"] == "error")
                                                                  .any())
        if not ended:
            return
        ok, text = run_summary(rows)
        if self.ended.get(run_id) == ok:
            return  # (the shard was rewritten, the outcome is the same)
        self.ended[run_id] = ok
        now = time.monotonic()
        since = self.marks.get(spec.block)
        if spec.block in self.marks:
            self.marks[spec.block] = now  # the block's next run starts here
        self.progress.finish(run_id, ok, f"{self.label(spec)}: {text}",
                             None if since is None else now - since)


class EpochLog:
    """Epochs of a float pretraining off a terminal: a line at most every ``every_s``
    seconds (and after the last epoch) with the top-1 and the ETA."""

    def __init__(self, what: str, epochs: int, every_s: float = 10.0,
                 stream: TextIO | None = None):
        self.what, self.epochs, self.every_s = what, epochs, every_s
        self.stream = stream or sys.stderr
        self.t0 = self.last = time.monotonic()

    def __call__(self, row: dict) -> None:
        now = time.monotonic()
        epoch = int(row["epoch"])
        if now - self.last < self.every_s and epoch < self.epochs:
            return
        self.last = now
        eta = (now - self.t0) / epoch * (self.epochs - epoch)
        top1 = float(row.get("top1", float("nan")))  # only evaluated epochs have one
        acc = "" if math.isnan(top1) else f"top-1 {top1:.1f}%, "
        print(f"[{time.strftime('%H:%M:%S')}] {self.what}: epoch {epoch}/{self.epochs}, "
              f"{acc}elapsed {format_eta(now - self.t0)}, ETA {format_eta(eta)}",
              file=self.stream, flush=True)
