"""The runs table: one row per (run, epoch), as pandas, in ``<out>/runs.parquet`` (the
source of truth) and ``<out>/runs.csv``.

Every write is a read-modify-atomic-replace under a lock file, so a crash loses at most the
epoch in flight and concurrent writers on one machine do not interleave. A cluster executor
that cannot share one file writes one shard per run, ``<out>/shards/<run_id>.parquet``
(`write_shard`), and `merge_shards` folds them into the table.

The columns come from `columns()`: the run's identity, one column per flag (named exactly as
the flag, from `qvit.Flags.specs()`), the measurements, the status and the provenance.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from qvit import Flags

from .provenance import PROVENANCE_COLUMNS

__all__ = ["STATUSES", "ID_COLUMNS", "METRIC_COLUMNS", "columns", "empty_table",
           "append_rows", "read_table", "drop_run", "write_shard", "merge_shards",
           "normalize", "finished_run_ids", "TABLE", "CSV", "run_rows", "append_shard_rows",
           "drop_shard_rows_after", "resumable_epochs", "table_with_shards", "discard_run"]

TABLE = "runs.parquet"
CSV = "runs.csv"
STATUSES = ("ok", "oom", "nan", "error")
# Statuses after which a run is over for good (rerunning repeats the outcome). A run that
# ended in "error" (an exception, a killed child) is redone by the next sweep.
FINAL_STATUSES = ("oom", "nan")

ID_COLUMNS = {  # name -> dtype
    "run_id": "string", "config": "string", "model": "string", "dataset": "string",
    "float_reference": "bool", "repeat": "int64", "seed": "int64", "block": "int64",
    "order": "int64", "method": "string", "code_digest": "string", "threads": "int64",
    "epoch": "int64", "warmup": "bool", "resumed": "bool", "counted": "bool",
}
METRIC_COLUMNS = {
    "steps": "int64", "epoch_s": "float64", "train_s": "float64", "startup_s": "float64",
    "data_s": "float64", "compute_s": "float64", "eval_s": "float64", "plot_s": "float64",
    "compile_s": "float64", "step_s_median": "float64", "step_times": "string",
    "images_per_s": "float64", "peak_mem_mb": "float64", "syncs_per_step": "float64",
    "sync_kinds": "string", "top1": "float64", "top5": "float64", "eval_images": "int64",
    "train_loss": "float64", "eval_loss": "float64", "pretrained_top1": "float64",
    "ended": "string", "status": "string", "error": "string",
}
_FLAG_DTYPES = {bool: "bool", int: "int64", str: "string"}


def columns() -> dict[str, str]:
    """Every column of the table, in order, with its pandas dtype."""
    cols = dict(ID_COLUMNS)
    for spec in Flags.specs():
        cols[spec.name] = _FLAG_DTYPES[spec.type]
    cols.update(METRIC_COLUMNS)
    cols.update({c: ("bool" if c == "git_dirty" else "string") for c in PROVENANCE_COLUMNS})
    return cols


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=d) for c, d in columns().items()})


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """The table's columns in order with their dtypes; missing ones are filled (NaN, "" or
    False: rows from a code version that lacked a flag), unknown ones (a flag added by a
    newer version, in a table shared across commits) are kept after the known ones."""
    cols = columns()
    extra = [c for c in df.columns if c not in cols]
    out = {}
    for c, dtype in cols.items():
        if c in df.columns:
            s = df[c]
        elif dtype == "string":
            s = pd.Series([""] * len(df), index=df.index)
        elif dtype == "bool":
            s = pd.Series([False] * len(df), index=df.index)
        else:
            s = pd.Series([np.nan] * len(df), index=df.index)
        if dtype == "string":
            s = s.fillna("").astype(str)
        elif dtype == "int64":
            dtype = "Int64"  # nullable: an absent int (steps of a failed epoch) is <NA>,
            # and the column keeps one dtype whether or not the table holds such a row
        out[c] = s.astype(dtype)
    for c in extra:
        out[c] = df[c]
    return pd.DataFrame(out, index=df.index).reset_index(drop=True)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".runs.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_write(df: pd.DataFrame, path: Path, fmt: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return empty_table()
    return normalize(pd.read_parquet(path))


def _write(out_dir: Path, df: pd.DataFrame) -> None:
    df = normalize(df)
    _atomic_write(df, out_dir / TABLE, "parquet")
    _atomic_write(df, out_dir / CSV, "csv")


def _concat(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    parts = [p for p in (a, b) if len(p)]
    if not parts:
        return empty_table()
    return normalize(pd.concat(parts, ignore_index=True))


def read_table(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The table in ``out_dir`` (empty, with every column, if there is none yet)."""
    return _read(Path(out_dir) / TABLE)


def append_rows(out_dir: str | os.PathLike, rows: Iterable[dict]) -> pd.DataFrame:
    """Append rows (dicts keyed by column) to the table; replaces a row with the same
    (run_id, epoch). Atomic: readers see the old table or the new one, never half."""
    out_dir = Path(out_dir)
    new = normalize(pd.DataFrame(list(rows)))
    with _locked(out_dir):
        df = _read(out_dir / TABLE)
        if len(new):
            keys = set(zip(new["run_id"], new["epoch"], strict=False))
            keep = [k not in keys for k in zip(df["run_id"], df["epoch"], strict=False)]
            df = _concat(df[keep], new)
        _write(out_dir, df)
    return df


def drop_run(out_dir: str | os.PathLike, run_id: str) -> int:
    """Remove every row of ``run_id`` (before it is redone); returns how many went."""
    out_dir = Path(out_dir)
    if not (out_dir / TABLE).is_file():
        return 0
    with _locked(out_dir):
        df = _read(out_dir / TABLE)
        mask = df["run_id"] == run_id
        if mask.any():
            _write(out_dir, df[~mask])
        return int(mask.sum())


def write_shard(out_dir: str | os.PathLike, run_id: str, rows: list[dict]) -> Path:
    """Write all rows so far of one run to ``<out>/shards/<run_id>.parquet`` (atomic)."""
    shard_dir = Path(out_dir) / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    path = shard_dir / f"{run_id}.parquet"
    _atomic_write(normalize(pd.DataFrame(rows)), path, "parquet")
    return path


def _shards(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "shards").glob("*.parquet"))


def table_with_shards(out_dir: str | os.PathLike) -> pd.DataFrame:
    """What the table will hold once the shards are merged (reads only)."""
    out_dir = Path(out_dir)
    df = read_table(out_dir)
    for path in _shards(out_dir):
        part = normalize(pd.read_parquet(path))
        df = _concat(df[~df["run_id"].isin(set(part["run_id"]))], part)
    return df


def merge_shards(out_dir: str | os.PathLike, *, remove: bool = True) -> pd.DataFrame:
    """Fold every shard into the table (one atomic replace under the table's lock): a
    shard holds every row of its run so far and replaces the table's rows of that run.
    ``remove`` deletes the merged shards (only when no process writes them any more)."""
    out_dir = Path(out_dir)
    with _locked(out_dir):
        shards = _shards(out_dir)
        df = _read(out_dir / TABLE)
        for path in shards:
            part = normalize(pd.read_parquet(path))
            df = _concat(df[~df["run_id"].isin(set(part["run_id"]))], part)
        if shards or not (out_dir / TABLE).is_file():
            _write(out_dir, df)
        if remove:
            for path in shards:
                path.unlink()
    return df


def discard_run(out_dir: str | os.PathLike, run_id: str) -> None:
    """Forget a run that is to be redone whole: its rows, shard and checkpoint."""
    out_dir = Path(out_dir)
    (out_dir / "shards" / f"{run_id}.parquet").unlink(missing_ok=True)
    (out_dir / "checkpoints" / f"{run_id}.pt").unlink(missing_ok=True)
    drop_run(out_dir, run_id)


def run_rows(out_dir: str | os.PathLike, run_id: str) -> pd.DataFrame:
    """Every row of one run so far: its shard while it has one, else the table's rows."""
    path = Path(out_dir) / "shards" / f"{run_id}.parquet"
    if path.is_file():
        return normalize(pd.read_parquet(path))
    table = read_table(out_dir)
    return table[table["run_id"] == run_id].reset_index(drop=True)


def append_shard_rows(out_dir: str | os.PathLike, run_id: str, rows: list[dict]) -> None:
    """Add rows to the run's shard (a row replaces the one of the same epoch)."""
    old = run_rows(out_dir, run_id)
    new = normalize(pd.DataFrame(rows))
    old = old[~old["epoch"].isin(set(new["epoch"]))]
    write_shard(out_dir, run_id, _concat(old, new).to_dict("records"))


def drop_shard_rows_after(out_dir: str | os.PathLike, run_id: str, epoch: int) -> None:
    """Keep the run's rows of epochs <= ``epoch`` only (what its checkpoint holds)."""
    rows = run_rows(out_dir, run_id)
    if len(rows) and (rows["epoch"] > epoch).any():
        write_shard(out_dir, run_id, rows[rows["epoch"] <= epoch].to_dict("records"))


def resumable_epochs(rows: pd.DataFrame, run_id: str) -> int:
    """How many epochs of the run, from epoch 1 on, finished "ok" without a gap."""
    rows = rows[(rows["run_id"] == run_id) & (rows["status"] == "ok")]
    have = set(rows["epoch"].astype(int))
    n = 0
    while n + 1 in have:
        n += 1
    return n


def finished_run_ids(table: pd.DataFrame, epochs: dict[str, int]) -> set[str]:
    """Runs that need no redo: every epoch recorded "ok", or ended in oom/nan.
    ``epochs`` maps run_id to its number of epochs."""
    done = set()
    for run_id, rows in table.groupby("run_id"):
        if run_id not in epochs:
            continue
        if rows["status"].isin(FINAL_STATUSES).any():
            done.add(run_id)
        elif (rows["status"] == "ok").all() and \
                set(rows["epoch"].astype(int)) >= set(range(1, epochs[run_id] + 1)):
            done.add(run_id)
    return done
