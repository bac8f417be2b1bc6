"""The runs table: schema from the flag declaration, atomic appends, shards, resume logic."""

import pandas as pd

from harness import records
from qvit import Flags

ISSUE_COLUMNS = ["config", "model", "dataset", "repeat", "seed", "epoch", "warmup", "train_s",
                 "eval_s", "images_per_s", "peak_mem_mb", "syncs_per_step", "top1", "top5",
                 "train_loss", "eval_loss", "status", "error"]
CONTRACT_COLUMNS = ["run_id", "block", "order", "float_reference", "steps", "step_s_median",
                    "compile_s", "epoch_s", "startup_s", "data_s", "compute_s", "step_times",
                    "plot_s", "eval_images", "pretrained_top1", "method", "code_digest",
                    "threads", "resumed", "counted", "sync_kinds", "ended"]
PROVENANCE = ["git_commit", "git_dirty", "torch_version", "timm_version", "cuda_version",
              "device_name", "cpu_model", "hostname"]


def _row(run_id="r1", epoch=1, **kw):
    row = dict(run_id=run_id, config="seed", model="m", dataset="digits", repeat=0, seed=0,
               block=0, order=0, epoch=epoch, warmup=epoch == 1, steps=3, train_s=1.0,
               eval_s=0.5, top1=50.0, status="ok")
    row.update(Flags.preset("seed").to_dict())
    row.update(kw)
    return row


def test_schema_has_every_flag_and_every_listed_column():
    cols = records.columns()
    for name in ISSUE_COLUMNS + CONTRACT_COLUMNS + PROVENANCE:
        assert name in cols, name
    for spec in Flags.specs():
        assert spec.name in cols
        assert cols[spec.name] == {bool: "bool", int: "int64", str: "string"}[spec.type]
    assert len(cols) == len(set(cols))
    assert list(records.empty_table().columns) == list(cols)


def test_tables_of_other_code_versions_stay_readable(tmp_path):
    records.append_rows(tmp_path, [_row("new", new_flag=True)])  # a newer version's flag
    old = _row("old")
    del old["use_frexp"]  # an older version without this flag
    t = records.append_rows(tmp_path, [old])
    assert list(t.columns)[-1] == "new_flag" and len(t) == 2
    assert list(t.columns)[:-1] == list(records.columns())


def test_append_writes_parquet_and_csv_and_replaces_same_epoch(tmp_path):
    records.append_rows(tmp_path, [_row(epoch=1)])
    records.append_rows(tmp_path, [_row(epoch=2)])
    records.append_rows(tmp_path, [_row(epoch=2, top1=99.0)])
    t = records.read_table(tmp_path)
    assert list(t["epoch"]) == [1, 2] and list(t["top1"]) == [50.0, 99.0]
    csv = pd.read_csv(tmp_path / "runs.csv")
    assert list(csv.columns) == list(records.columns()) and len(csv) == 2
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind
    assert t["use_frexp"].dtype == bool and t["layernorm_newton"].iloc[0] == "no_grad"


def test_drop_run_and_finished(tmp_path):
    records.append_rows(tmp_path, [_row("a", 1), _row("a", 2), _row("b", 1),
                                   _row("c", 1, status="oom"), _row("d", 1),
                                   _row("d", 2, status="error")])
    t = records.read_table(tmp_path)
    done = records.finished_run_ids(t, {"a": 2, "b": 2, "c": 2, "d": 2})
    assert done == {"a", "c"}  # b unfinished, d failed with an error: both are redone
    assert records.drop_run(tmp_path, "b") == 1
    assert set(records.read_table(tmp_path)["run_id"]) == {"a", "c", "d"}


def test_shards_merge_into_the_table(tmp_path):
    records.append_rows(tmp_path, [_row("a", 1), _row("b", 1, top1=1.0)])
    records.write_shard(tmp_path, "b", [_row("b", 1, top1=2.0), _row("b", 2, top1=3.0)])
    records.write_shard(tmp_path, "c", [_row("c", 1)])
    assert len(records.current_rows(tmp_path)) == 4  # reads only
    assert len(records.read_table(tmp_path)) == 2
    t = records.merge_shards(tmp_path)
    pairs = sorted(zip(t["run_id"], t["epoch"], strict=True))
    assert pairs == [("a", 1), ("b", 1), ("b", 2), ("c", 1)]
    assert list(t[t["run_id"] == "b"]["top1"]) == [2.0, 3.0]
    assert len(list((tmp_path / "shards").glob("*.parquet"))) == 2  # kept: jobs may write
    again = records.merge_shards(tmp_path, remove=True)  # idempotent
    assert again.equals(t) and records.read_table(tmp_path).equals(t)
    assert not list((tmp_path / "shards").glob("*.parquet"))


def test_merge_keeps_a_finished_run_and_merges_only_finished_when_asked(tmp_path):
    records.append_rows(tmp_path, [_row("a", 1), _row("a", 2)])
    records.write_shard(tmp_path, "a", [_row("a", 1, top1=7.0)])  # a redo that died
    records.write_shard(tmp_path, "b", [_row("b", 1)])  # still running (2 epochs)
    records.write_shard(tmp_path, "c", [_row("c", 1), _row("c", 2)])
    (tmp_path / "shards" / "d.parquet").write_bytes(b"garbage")
    t = records.merge_shards(tmp_path, {"a": 2, "b": 2, "c": 2}, only_finished=True,
                             remove=True)
    assert sorted(set(t["run_id"])) == ["a", "c"]
    assert list(t[t["run_id"] == "a"]["top1"]) == [50.0, 50.0]
    left = sorted(p.name for p in (tmp_path / "shards").glob("*.parquet"))
    assert left == ["a.parquet", "b.parquet", "d.parquet"]  # a: unfinished; d: unreadable
    t = records.merge_shards(tmp_path, {"a": 2, "b": 2})
    assert sorted(set(t["run_id"])) == ["a", "b", "c"]


def test_resumable_epochs_and_drop_shard_rows_after(tmp_path):
    records.append_rows(tmp_path, [_row("a", 1), _row("a", 2), _row("a", 3, status="error"),
                                   _row("a", 4), _row("b", 2), _row("c", 1)])
    t = records.read_table(tmp_path)
    assert records.resumable_epochs(t, "a") == 2  # epoch 3 failed: resume after 2
    assert records.resumable_epochs(t, "b") == 0  # no epoch 1
    assert records.resumable_epochs(t, "zz") == 0
    # the resume trims the run to its checkpoint's epoch, in the run's shard (from the table's
    # rows where the run has no shard); merging makes the table say the same
    records.drop_shard_rows_after(tmp_path, "a", 2)
    assert list(records.run_rows(tmp_path, "a")["epoch"]) == [1, 2]
    t = records.merge_shards(tmp_path, remove=True)
    assert sorted(zip(t["run_id"], t["epoch"], strict=True)) == [
        ("a", 1), ("a", 2), ("b", 2), ("c", 1)]
    records.drop_shard_rows_after(tmp_path, "a", 2)  # nothing after 2: nothing written
    assert not list((tmp_path / "shards").glob("*.parquet"))
    records.drop_shard_rows_after(tmp_path / "none", "a", 0)
    assert not (tmp_path / "none" / "shards").exists()


def test_a_new_column_is_one_entry_and_old_tables_stay_readable(tmp_path, monkeypatch):
    records.append_rows(tmp_path, [_row("old")])
    monkeypatch.setitem(records.ID_COLUMNS, "identity", "string")
    assert "identity" in records.columns()
    t = records.read_table(tmp_path)
    assert list(t.columns) == list(records.columns()) and list(t["identity"]) == [""]
    t = records.append_rows(tmp_path, [_row("new", identity="abc123")])
    assert list(t["identity"]) == ["", "abc123"]
    csv = pd.read_csv(tmp_path / "runs.csv", keep_default_na=False)
    assert list(csv["identity"]) == ["", "abc123"]
