"""What a config runs (`qvit.paths`) is true: the declarations (requires, overrides, device,
family) explain every flag that cannot act and nothing else; every module flag move that
`Paths` calls inert leaves the work of a training step and of evals op for op the same,
and every move it calls acting changes it; the modules bind what `Paths` names; the parser
refuses a flag that cannot act, and old spellings name the new ones."""

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from qvit import Flags
from qvit.flags import RENAMED, migrate
from qvit.modules import QuantModule
from qvit.paths import Paths, _values, acts, inert, why_inert, why_same

from ._util import small_batch, small_model

PRESETS = ("legacy", "seed", "best")
# bases the moves are taken from: the presets, and the float32-dyadic and no-frexp corners
BASES = {p: Flags.preset(p) for p in PRESETS}
BASES["seed+frexp"] = Flags.preset("seed").replace(use_frexp=True)
BASES["legacy-frexp"] = Flags.preset("legacy").replace(use_frexp=False)
# Paths fields whose paths differ only on the host (no tensor op tells them apart)
HOST_ONLY = {"eps"}


def _moves(base: Flags, scope="module"):
    return [(n, v) for n in Flags.names(scope) for v in _values(Flags(), n)
            if v != getattr(base, n)]


# --- the declarations explain what Paths finds ------------------------------------------------

@pytest.mark.parametrize("base", list(BASES))
def test_every_inert_move_has_a_declared_reason(base):
    flags = BASES[base]
    for name, value in _moves(flags, None):
        moved = flags.replace(**{name: value})
        if Paths.of(moved) == Paths.of(flags):
            why = why_inert(moved, name)
            assert why != "no value of it changes what runs here", (name, value, base)


def test_every_declaration_makes_something_inert():
    """A requires or overrides that no configuration needs is a stale declaration."""
    legacy = Flags.preset("legacy")
    for spec in Flags.specs():
        for value, needs in spec.requires.items():
            for other, allowed in needs.items():
                unmet = next(v for v in _values(Flags(), other) if v not in allowed)
                base = legacy.replace(**{other: unmet})
                vals = [v for v in _values(Flags(), spec.name)] if value == "*" else [value]
                assert any(not acts(base.replace(**{spec.name: v}), spec.name)
                           or Paths.of(base.replace(**{spec.name: v}))
                           == Paths.of(base.replace(**{spec.name: spec.legacy}))
                           for v in vals), (spec.name, value, other)
        for value, overridden in spec.overrides.items():
            base = legacy.replace(**{spec.name: value})
            for other in overridden:
                moves = [base.replace(**{other: v}) for v in _values(Flags(), other)]
                assert len({Paths.of(m) for m in moves}) < len(moves), (spec.name, other)


def test_best_acts_with_every_flag_the_table_does_not_name():
    """In best, only inline_ste (overridden by ste_impl=lean), num_workers (no DataLoader)
    and the compile options (best is eager) cannot act; in fastest (best compiled) the
    compile options act, CUDA graphs on CUDA only; device- and family-only flags act where
    their device or model is."""
    best = Flags.preset("best")
    compile_options = {"compile_scope", "compile_cuda_graphs"}
    assert set(inert(best)) == {"inline_ste", "num_workers"} | compile_options
    fastest = Flags.preset("fastest")
    assert set(inert(fastest)) == {"inline_ste", "num_workers"}
    assert set(inert(fastest, device_type="cpu")) == {
        "inline_ste", "num_workers", "cuda_synchronize_per_step", "compile_cuda_graphs"}
    assert fastest.paths(device_type="cuda").cuda_graphs == "replay"
    assert fastest.paths().compiled == "block"
    assert fastest.replace(compile_scope="model").paths().compiled == "model"
    assert "cuda_synchronize_per_step" in inert(best, device_type="cpu")
    assert "cuda_synchronize_per_step" not in inert(Flags.preset("legacy"), device_type="cuda")
    assert "cache_rel_pos_bias" in inert(best, family="vit")
    assert "cache_rel_pos_bias" not in inert(best, family="swin")


def test_why_same_names_each_moved_flag():
    best = Flags.preset("best")
    assert why_same(best, best.replace(cuda_synchronize_per_step=True)) is None
    text = why_same(best, best.replace(cuda_synchronize_per_step=True), device_type="cpu")
    assert "cuda_synchronize_per_step" in text and "CUDA only" in text
    text = why_same(best, best.replace(inline_ste=False))
    assert "ste_impl=lean overrides it" in text
    assert why_same(best, best) == "no flag differs"
    assert why_same(best, best.replace(requant_impl="fused")) is None


# --- the parser ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, match", [
    ("seed,requant_impl=device_frexp", "needs use_frexp=true"),
    ("best,inline_ste=false", "ste_impl=lean overrides it"),
    ("best,inline_ste=true", "ste_impl=lean overrides it"),
    ("best,num_workers=8", "needs preload_to_device=false"),
    ("best,layernorm_newton=ste", "layernorm_impl=lean overrides it"),
    ("seed,lean_quant_act=true", "is now requant_impl=lean"),
    ("best,fused_int_softmax=false", "is now int_exp_impl=fused"),
])
def test_parse_refuses_a_flag_that_cannot_act_and_names_old_spellings(text, match):
    with pytest.raises(ValueError, match=match):
        Flags.parse(text)


def test_parse_accepts_what_acts():
    for text in ("seed,use_frexp=true,requant_impl=device_frexp", "best,layernorm_newton=no_grad",
                 "seed,requant_impl=lean", "best,ste_impl=reference,inline_ste=false",
                 "best,preload_to_device=false,num_workers=8", "legacy,layernorm_impl=lean"):
        assert Flags.parse(Flags.parse(text).describe()) == Flags.parse(text)


def test_every_old_spelling_is_refused_in_one_line():
    for old, new in RENAMED.items():
        with pytest.raises(ValueError, match=f"is now {new}") as e:
            Flags.spec(old)
        assert "\n" not in str(e.value)


def test_migrate_gives_the_flags_that_ran_the_same_code():
    best = Flags.preset("best").to_dict()
    old_best = {k: v for k, v in best.items() if not k.endswith("_impl")}
    old_best.update(ste_lean=True, requant_fused=True, frexp_on_device=True,
                    lean_quant_act=True, fused_int_softmax=True, fused_int_gelu=True,
                    lean_int_exp=True, lean_layernorm=True, lean_linear=True)
    assert Flags.from_dict(old_best) == Flags.preset("best")
    old_legacy = {k: v for k, v in Flags.preset("legacy").to_dict().items()
                  if not k.endswith("_impl") and k not in ("act_aminmax",)}
    old_legacy.update({k: False for k in RENAMED}, act_aminmax=False)
    assert Flags.from_dict(old_legacy) == Flags.preset("legacy")
    # 0.1's lean QuantAct forced the range paths on: the migrated flags say so
    forced = Flags.from_dict({**old_legacy, "lean_quant_act": True})
    assert forced.requant_impl == "lean" and forced.global_act_minmax and forced.act_aminmax
    with pytest.raises(ValueError, match="fused_int_softmax / fused_int_gelu alone"):
        migrate({**old_legacy, "fused_int_softmax": True})
    assert migrate(best) is best


# --- Paths is what runs: op traces of a training step and evals ---------------------------------

class _Trace(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _trace(name: str, flags: Flags):
    """The aten ops of a training step (forward, backward), then two evals (the second hits
    the caches), and the outputs, on a calibrated micro model."""
    model = small_model(name, flags)
    x, y = small_batch(3, name)
    with _Trace() as t:
        torch.manual_seed(0)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        model.eval()
        with torch.no_grad():
            logits = [model(x), model(x)]
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return t.ops, [loss.detach(), *logits, *grads]


@pytest.fixture(scope="module")
def traces():
    cache = {}

    def get(name, flags):
        if (name, flags) not in cache:
            cache[(name, flags)] = _trace(name, flags)
        return cache[(name, flags)]

    return get


CASES = [(m, b, n, v) for m, bases in (("ivit_micro", ("legacy", "seed+frexp", "best")),
                                       ("swin_micro", ("seed", "best")))
         for b in bases for n, v in _moves(BASES[b])]


@pytest.mark.parametrize("model_name, base, flag, value", CASES,
                         ids=[f"{m}-{b}:{n}={v}" for m, b, n, v in CASES])
def test_paths_say_what_a_step_and_an_eval_run(traces, model_name, base, flag, value):
    family = "vit" if model_name == "ivit_micro" else "swin"
    flags = BASES[base]
    moved = flags.replace(**{flag: value})
    p0, p1 = Paths.of(flags, family=family), Paths.of(moved, family=family)
    ops0, out0 = traces(model_name, flags)
    ops1, out1 = traces(model_name, moved)
    if p0 == p1:
        assert ops1 == ops0, f"{flag}={value} is declared inert here but changes the ops"
        assert all(torch.equal(a, b) for a, b in zip(out0, out1, strict=True))
    elif set(p0.diff(p1)) <= HOST_ONLY:
        assert ops1 == ops0
    else:
        assert ops1 != ops0, f"{flag}={value}: Paths differ {p0.diff(p1)}, the ops do not"


@pytest.mark.parametrize("model_name", ["ivit_micro", "swin_micro"])
@pytest.mark.parametrize("preset", PRESETS)
def test_every_module_binds_what_paths_names(model_name, preset):
    flags = Flags.preset(preset)
    model = small_model(model_name, flags)
    p = flags.paths()
    mods = [m for m in model.modules() if isinstance(m, QuantModule) and m.PATH_FIELDS]
    assert len({type(m).__name__ for m in mods}) >= 6
    for m in mods:
        assert m.paths() == {k: getattr(p, k) for k in m.PATH_FIELDS}


def test_every_paths_field_is_read_by_a_module_or_the_loop():
    module_fields = set(itertools.chain.from_iterable(
        c.PATH_FIELDS for c in _subclasses(QuantModule)))
    loop_fields = {"cuda_sync", "loss_read", "grad_scaler", "plot_every", "data", "workers",
                   "optimizer", "compiled", "cuda_graphs"}
    assert module_fields | loop_fields == set(Paths.__dataclass_fields__)


def _subclasses(cls):
    out = set()
    for c in cls.__subclasses__():
        out |= {c} | _subclasses(c)
    return out
