"""scripts/profile_step.py's grouping of a compiled step's profiler events."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

_PATH = Path(__file__).parents[2] / "scripts" / "profile_step.py"


@pytest.fixture(scope="module")
def profile_step():
    spec = importlib.util.spec_from_file_location("profile_step", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _event(key, us, count=1):
    return SimpleNamespace(key=key, self_cpu_time_total=us, count=count)


def test_compiled_step_groups(profile_step):
    events = [_event("aten::mm", 4000, 6), _event("aten::_scaled_dot_product_flash_attention_"
                                                  "for_cpu_backward", 2000, 2),
              _event("graph_0_cpp_fused_add_div_floor_3", 3000, 2),
              _event("qvit::aten_reduce", 500, 10), _event("aten::sum", 500, 10),
              _event("Optimizer.step#AdamW.step", 600), _event("aten::copy_", 400, 20)]
    table = profile_step._group_table(events, steps=2, total=5.5)
    rows = {r.split(" | ")[0].strip("| "): r.split(" | ")[1:] for r in table.splitlines()[2:]}
    assert rows["matmul, conv (aten)"] == ["3.00", "54.5", "4 |"]
    assert rows["inductor kernels"] == ["1.50", "27.3", "1 |"]
    assert rows["qvit opaque aten calls"] == ["0.50", "9.1", "10 |"]
    assert rows["optimizer"] == ["0.30", "5.5", "0 |"]
    assert rows["other"] == ["0.20", "3.6", "10 |"]


def test_modules_and_compile_are_refused_together(profile_step, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["profile_step.py", "ivit_micro", "best", "--modules",
                                     "--compile"])
    with pytest.raises(SystemExit):
        profile_step.main()
    assert "use one of --modules and --compile" in capsys.readouterr().err


def test_short_names(profile_step):
    assert profile_step._short("aten::mm") == "aten::mm"
    long = "graph_0_cpp_fused_" + "x" * 200
    assert len(profile_step._short(long)) == 90 and profile_step._short(long).endswith("...")


def test_deployed_forwards_put_the_integer_gemms_in_the_matmul_group(profile_step,
                                                                     monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["profile_step.py", "ivit_micro", "best", "--deployed"])
    monkeypatch.setenv("BATCH", "2")
    monkeypatch.setenv("STEPS", "1")
    monkeypatch.setenv("NT", "1")
    profile_step.main()
    out = capsys.readouterr().out
    assert "## ivit_micro `best` deployed: batch 2" in out and "ms/forward" in out
    rows = {r.split(" | ")[0].strip("| "): r.split(" | ")[1:] for r in out.splitlines()
            if r.startswith("| ")}
    # qkv, proj, fc1, fc2 per block, the patch embedding and the head: 4 x 4 + 2 int8 GEMMs,
    # and the two attention products (q k^T, and P v by its two bytes) per block: 4 x 3
    assert rows["matmul, conv (aten)"][2] == "30 |"
    assert rows["optimizer"][0] == "0.00"


@pytest.mark.parametrize("argv, message", [
    (["float", "--deployed"], "--deployed deploys a quantized model"),
    (["best", "--deployed", "--modules"], "use one of --modules and --deployed")])
def test_deployed_refuses_what_it_cannot_profile(profile_step, monkeypatch, capsys, argv,
                                                 message):
    monkeypatch.setattr("sys.argv", ["profile_step.py", "ivit_micro", *argv])
    with pytest.raises(SystemExit):
        profile_step.main()
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flags, float_reference, scope", [
    ("best", False, "block"), ("fastest", False, "block"),
    ("fastest,compile_scope=model", False, "model"), ("best", True, "block")])
def test_compile_profiles_what_the_flags_compile(profile_step, monkeypatch, flags,
                                                 float_reference, scope):
    """--compile compiles as a harness run with these flags does (it compiled every model
    whole whatever compile_scope said, so `fastest` profiled another step than it runs)."""
    from harness.run import loop
    from harness.spec.settings import RunSettings
    from qvit import Flags

    seen = {}
    monkeypatch.setattr(profile_step, "_profile_kernels", lambda: None)
    monkeypatch.setattr(loop, "compile_model", lambda model, **kw: seen.update(kw) or model)
    model = object()
    assert profile_step._compiled(model, Flags.parse(flags), float_reference) is model
    s = RunSettings()
    backend = s.float_compile_backend if float_reference else s.compile_backend
    assert seen == {"backend": backend, "scope": scope, "cuda_graphs": False}
