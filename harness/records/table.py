"""The runs table: one row per (run, epoch), as pandas, in ``<out>/runs.parquet`` and
``<out>/runs.csv`` (two copies of one table; each recovers the other).

Every write is a read-modify-atomic-replace (`harness.records.files`) under a lock file, so a
crash or a full disk loses at most the epoch in flight and concurrent writers on one machine
do not interleave. Tables are written with mode ``0o666 & ~umask`` (0644 under the usual
umask), like every other output.

Reading takes ``runs.parquet``; when it is missing, truncated or otherwise unreadable and
``runs.csv`` is intact, the csv is read instead, one line says so, and the parquet is
rewritten from it (and the other way round). A surviving copy is never replaced by one with
fewer rows; when neither copy can be read, a ValueError names both files.

A cluster executor that cannot share one file writes one shard per run,
``<out>/shards/<run_id>.parquet`` (`write_shard`), and `merge_shards` folds them into the
table (the one shard merge: a shard replaces its run's rows, a finished run is never replaced
by an unfinished redo, merging twice changes nothing).

The columns come from `columns()`: the run's identity, one column per flag (named exactly as
the flag, from `qvit.Flags.specs()`), the measurements, the status and the provenance. A new
column is one entry in `ID_COLUMNS` or `METRIC_COLUMNS`; tables written before it existed
stay readable (`normalize` fills it: "" / False / NaN).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from harness.records.files import atomic_file, write_text
from harness.records.provenance import PROVENANCE_COLUMNS
from qvit import Flags
from qvit.flags import RENAMED, migrate

__all__ = ["STATUSES", "FINAL_STATUSES", "ID_COLUMNS", "METRIC_COLUMNS", "columns",
           "empty_table", "append_rows", "read_table", "drop_run",
           "write_shard", "read_shard", "merge_shards", "current_rows", "normalize",
           "run_finished", "finished_run_ids", "resumable_epochs", "TABLE", "CSV", "run_rows",
           "append_shard_rows", "drop_shard_rows_after", "discard_run"]

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
    "cuda_debug_syncs_per_step": "float64", "sync_kinds": "string", "top1": "float64",
    "top5": "float64", "eval_images": "int64", "setup_s": "float64",
    "train_loss": "float64", "eval_loss": "float64", "pretrained_top1": "float64",
    "deployed_top1": "float64", "deployed_agreement": "float64",
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


def _filler(dtype: str, n: int, index) -> pd.Series:
    value = {"string": "", "bool": False}.get(dtype, np.nan)
    return pd.Series([value] * n, index=index)


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """The table's columns in order with their dtypes; missing ones are filled (NaN, "" or
    False: rows from a code version that lacked a column), unknown ones (a flag added by a
    newer version, in a table shared across commits) are kept after the known ones."""
    cols = columns()
    df = _migrate_flag_columns(df)
    out = {}
    for c, dtype in cols.items():
        s = df[c] if c in df.columns else _filler(dtype, len(df), df.index)
        if dtype == "string":
            s = s.fillna("").astype(str)
        elif dtype == "int64":
            dtype = "Int64"  # nullable: an absent int (steps of a failed epoch) is <NA>,
            # and the column keeps one dtype whether or not the table holds such a row
        out[c] = s.astype(dtype)
    for c in df.columns:
        if c not in cols:
            out[c] = df[c]
    return pd.DataFrame(out, index=df.index).reset_index(drop=True)


def _migrate_flag_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Rows recorded with qvit 0.1's flag columns (`qvit.flags.RENAMED`) get today's flag
    columns for the code they ran (`qvit.flags.migrate`); a row whose 0.1 combination runs no
    path of today keeps "" in the new choice columns. The old columns are kept after the
    known ones, so nothing recorded is lost."""
    old = [c for c in RENAMED if c in df.columns]
    if not old or len(df) == 0:
        return df
    names = [n for n in Flags.names() if n in df.columns] + old
    rows, migrated = [], {}  # a table holds few combinations: migrate each once
    for rec in df[names].to_dict("records"):
        rec = {k: v for k, v in rec.items() if not (isinstance(v, float) and np.isnan(v))}
        key = tuple(rec.items())
        if key not in migrated:
            try:
                migrated[key] = migrate(rec)
            except ValueError:
                migrated[key] = {}
        rows.append(migrated[key])
    df = df.copy()
    for n in Flags.names():
        if n in df.columns and not any(n in r for r in rows):
            continue
        default = "" if Flags.spec(n).choices is not None else np.nan
        recorded = df[n].tolist() if n in df.columns else [default] * len(df)
        df[n] = [r.get(n, v) for r, v in zip(rows, recorded, strict=True)]
    return df


# --- files: lock, atomic write, reading with recovery ------------------------------------------

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
    if fmt == "parquet":
        with atomic_file(path) as fh:
            df.to_parquet(fh, index=False)
    else:
        write_text(path, df.to_csv(index=False))


def _read_csv(path: Path) -> pd.DataFrame:
    text_end = b""
    with open(path, "rb") as fh:
        if fh.seek(0, os.SEEK_END):
            fh.seek(-1, os.SEEK_END)
            text_end = fh.read(1)
    if text_end != b"\n":  # to_csv ends every line: a file without one was cut short
        raise ValueError("truncated: the last line is incomplete")
    cols = columns()
    strings = {c: str for c, d in cols.items() if d == "string"}
    na = {c: [""] for c, d in cols.items() if d != "string"}  # "" is NA except in text
    df = pd.read_csv(path, dtype=strings, keep_default_na=False, na_values=na)
    if "run_id" not in df.columns or "epoch" not in df.columns:
        raise ValueError("no run_id/epoch columns: not a runs table")
    return df


def _try_read(path: Path, fmt: str) -> tuple[pd.DataFrame | None, str | None]:
    """(table, None), (None, None) when the file is absent, or (None, why unreadable)."""
    if not path.exists():
        return None, None
    try:
        df = pd.read_parquet(path) if fmt == "parquet" else _read_csv(path)
        return normalize(df), None
    except Exception as e:  # noqa: BLE001 - pyarrow and pandas raise many kinds for a bad file
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


_warned: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"[records] {message}", file=sys.stderr)


def _load(out_dir: Path) -> tuple[pd.DataFrame, bool]:
    """The table, and whether one copy must be rewritten from the other (the copy read is
    the readable one with the most rows; the parquet on a tie)."""
    pq, pq_err = _try_read(out_dir / TABLE, "parquet")
    csv, csv_err = _try_read(out_dir / CSV, "csv")
    if pq is None and csv is None:
        if pq_err is None and csv_err is None:
            return empty_table(), False
        raise ValueError(
            f"{out_dir / TABLE}: {pq_err or 'missing'}; {out_dir / CSV}: {csv_err or 'missing'}"
            f"; neither copy of the runs table can be read: restore one of them (from a backup"
            f" or git), or move both away to start a new table (finished runs are then redone)")
    if csv is not None and (pq is None or len(csv) > len(pq)):
        why = pq_err or ("missing" if pq is None else f"{len(pq)} rows only")
        _say_once(f"{TABLE} unreadable ({why}); recovered {len(csv)} rows from {CSV} in "
                  f"{out_dir}")
        return csv, True
    if csv is None or len(csv) < len(pq):
        why = csv_err or ("missing" if csv is None else f"{len(csv)} rows only")
        _say_once(f"{CSV} unreadable ({why}); rewriting it from {TABLE} ({len(pq)} rows) in "
                  f"{out_dir}")
        return pq, True
    return pq, False


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
    """The table in ``out_dir`` (empty, with every column, if there is none yet). A copy
    that is missing or unreadable is recovered from the other and rewritten (where the
    folder can be written; reading never needs that)."""
    out_dir = Path(out_dir)
    df, repair = _load(out_dir)
    if repair:
        with contextlib.suppress(OSError), _locked(out_dir):
            df, repair = _load(out_dir)  # again under the lock: a writer may have finished
            if repair:
                _write(out_dir, df)
    return df


@contextlib.contextmanager
def _update(out_dir: Path) -> Iterator[list[pd.DataFrame]]:
    """Under the lock: yields [table]; what the body leaves in the list is written (always
    when a copy needed recovery or there is no table yet, else only when it changed)."""
    with _locked(out_dir):
        df, repair = _load(out_dir)
        box = [df]
        yield box
        if repair or box[0] is not df or not (out_dir / TABLE).exists():
            _write(out_dir, box[0])


def append_rows(out_dir: str | os.PathLike, rows: Iterable[dict]) -> pd.DataFrame:
    """Append rows (dicts keyed by column) to the table; replaces a row with the same
    (run_id, epoch). Atomic: readers see the old table or the new one, never half."""
    out_dir = Path(out_dir)
    new = normalize(pd.DataFrame(list(rows)))
    with _update(out_dir) as box:
        df = box[0]
        keys = set(zip(new["run_id"], new["epoch"], strict=True))
        keep = [k not in keys for k in zip(df["run_id"], df["epoch"], strict=True)]
        box[0] = _concat(df[keep], new)
    return box[0]


def _drop(out_dir: Path, mask_of) -> int:
    if not (out_dir / TABLE).exists() and not (out_dir / CSV).exists():
        return 0
    with _update(out_dir) as box:
        mask = mask_of(box[0])
        if mask.any():
            box[0] = box[0][~mask].reset_index(drop=True)
    return int(mask.sum())


def drop_run(out_dir: str | os.PathLike, run_id: str) -> int:
    """Remove every row of ``run_id`` (before it is redone); returns how many went."""
    return _drop(Path(out_dir), lambda df: df["run_id"] == run_id)


def run_finished(rows: pd.DataFrame, epochs: int | None = None) -> bool:
    """Whether the rows of one run need no redo: every epoch 1..epochs recorded "ok", or it
    ended in oom/nan. ``epochs`` None: as many as the rows reach."""
    if not len(rows):
        return False
    if rows["status"].isin(FINAL_STATUSES).any():
        return True
    n = int(rows["epoch"].max()) if epochs is None else epochs
    return bool((rows["status"] == "ok").all()) and \
        set(rows["epoch"].astype(int)) >= set(range(1, n + 1))


def finished_run_ids(table: pd.DataFrame, epochs: dict[str, int]) -> set[str]:
    """Runs that need no redo (`run_finished`). ``epochs`` maps run_id to its number of
    epochs; runs not in it are left out."""
    return {run_id for run_id, rows in table.groupby("run_id")
            if run_id in epochs and run_finished(rows, epochs[run_id])}


def resumable_epochs(table: pd.DataFrame, run_id: str) -> int:
    """How many epochs of ``run_id``, counted from epoch 1 without a gap, finished "ok": a
    run resumed from the checkpoint of that epoch continues with the next one."""
    rows = table[table["run_id"] == run_id]
    ok = set(rows.loc[rows["status"] == "ok", "epoch"].astype(int))
    k = 0
    while k + 1 in ok:
        k += 1
    return k


# --- shards -------------------------------------------------------------------------------------

def write_shard(out_dir: str | os.PathLike, run_id: str, rows: list[dict]) -> Path:
    """Write all rows so far of one run to ``<out>/shards/<run_id>.parquet`` (atomic)."""
    shard_dir = Path(out_dir) / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    path = shard_dir / f"{run_id}.parquet"
    _atomic_write(normalize(pd.DataFrame(rows)), path, "parquet")
    return path


def read_shard(path: str | os.PathLike) -> pd.DataFrame | None:
    """A shard's rows, or None (said in one line) when the file cannot be read."""
    df, err = _try_read(Path(path), "parquet")
    if err is not None:
        _say_once(f"skipping unreadable shard {path}: {err}")
    return df


def _overlay(table: pd.DataFrame, shards: Iterable[Path], epochs: dict[str, int],
             only_finished: bool) -> tuple[pd.DataFrame, list[Path]]:
    used = []
    for path in shards:
        part = read_shard(path)
        if part is None:
            continue
        runs = list(part.groupby("run_id", sort=False))
        if only_finished and not all(run_finished(new, epochs.get(r)) for r, new in runs):
            continue
        used.append(path)
        for run_id, new in runs:
            old = table[table["run_id"] == run_id]
            n = epochs.get(run_id)
            if run_finished(old, n) and not run_finished(new, n):
                continue  # a redo that died does not replace the finished run
            table = _concat(table[table["run_id"] != run_id], new)
    return table, used


def _shard_paths(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "shards").glob("*.parquet"))


def current_rows(out_dir: str | os.PathLike, epochs: dict[str, int] | None = None
                 ) -> pd.DataFrame:
    """What the table will hold once the shards are merged (reads only)."""
    out_dir = Path(out_dir)
    return _overlay(read_table(out_dir), _shard_paths(out_dir), epochs or {}, False)[0]


def merge_shards(out_dir: str | os.PathLike, epochs: dict[str, int] | None = None, *,
                 only_finished: bool = False, remove: bool = False) -> pd.DataFrame:
    """Fold the shards into the table (one atomic replace under the table's lock) and
    return it. A shard holds all rows of its run so far and replaces the table's rows of
    that run, except that a run the table holds finished is kept against an unfinished shard
    (a redo that died). ``epochs`` (run_id -> epochs) says when a run is finished (default:
    as far as its rows reach). ``only_finished``: merge only shards whose runs are finished
    (the others stay, for a job still writing them). ``remove``: delete the merged shards
    (only when no job writes them any more: a job replaces its shard each epoch). Unreadable
    shards are left in place and said. Merging again changes nothing."""
    out_dir = Path(out_dir)
    with _update(out_dir) as box:
        shards = _shard_paths(out_dir)
        if shards:
            box[0], used = _overlay(box[0], shards, epochs or {}, only_finished)
        else:
            used = []
    if remove:
        for path in used:
            path.unlink(missing_ok=True)
    return box[0]


# --- one run's rows while it runs (its shard) --------------------------------------------------

def run_rows(out_dir: str | os.PathLike, run_id: str) -> pd.DataFrame:
    """Every row of one run so far: its shard while it has one, else the table's rows."""
    path = Path(out_dir) / "shards" / f"{run_id}.parquet"
    rows = read_shard(path) if path.is_file() else None
    if rows is None:
        table = read_table(out_dir)
        rows = table[table["run_id"] == run_id]
    return rows.reset_index(drop=True)


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


def discard_run(out_dir: str | os.PathLike, run_id: str) -> None:
    """Forget a run that is to be redone whole: its rows, shard and checkpoint."""
    out_dir = Path(out_dir)
    (out_dir / "shards" / f"{run_id}.parquet").unlink(missing_ok=True)
    (out_dir / "checkpoints" / f"{run_id}.pt").unlink(missing_ok=True)
    drop_run(out_dir, run_id)
