"""Anchored outside ourselves: `legacy` and `best` against the official I-ViT's own outputs.

The fixtures (tests/qvit/fixtures/ivit_*.npz) were written by scripts/ivit_fixtures.py,
which ran zkkli/I-ViT's unmodified code on the CPU (the commit is in each file's ``meta``).
Every module output is compared in the integer domain (the integers q with x == q * scale,
or x / scale where I-ViT's output is not such a product) together with its scale, bit for
bit; so are the loss, the input's and every parameter's gradient, the parameters after an
AdamW step and the losses of the next steps (which see the running ranges' momentum). This
pins every I-ViT constant qvit carries (bit widths, GELU's sigmoid factor, the integer exp's
shift bounds, the Newton iterations and start, the window mask value, the range momentum,
the requantizer's 31 bits) to I-ViT's, and the arithmetic around them.
"""

import json
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

import qvit
from qvit import Flags
from qvit import modules as qm
from qvit.ivit import _swin_rename
from qvit.models import QuantSwin, QuantViT

FIXTURES = Path(__file__).parent / "fixtures"
QUANT_TYPES = ("QuantAct", "QuantLinear", "QuantConv2d", "QuantMatMul", "IntLayerNorm",
               "IntGELU", "IntSoftmax")

PRESETS = ("legacy", "best")


@pytest.fixture(autouse=True)
def _one_thread():
    """As the fixtures were made: I-ViT divides each quantized activation by its scale
    without rounding, so its GEMM inputs lie within an ulp of the integers, not on them,
    and their float32 sums depend on the order the kernel adds in (two threads split them
    otherwise than one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(name: str) -> dict:
    with np.load(FIXTURES / f"ivit_{name}.npz") as z:
        return {k: z[k] for k in z.files}


def meta(fx: dict) -> dict:
    return json.loads(str(fx["meta"]))


def compact(x: torch.Tensor, s: torch.Tensor) -> np.ndarray:
    """As scripts/ivit_fixtures.py stores a module output: the integers q (int32) where
    x == q * s exactly, else x / s (float32)."""
    x, s = x.detach(), s.detach()
    q = torch.round(x / s)
    if torch.equal(q * s, x) and q.abs().max() < 2**31:
        return q.numpy().astype(np.int32)
    return (x / s).numpy()


def record_quantized_modules(model: torch.nn.Module) -> list:
    """(name, class, compact output, scale) of every quantized module's call, in call order;
    IntSoftmax's input too (class "IntSoftmax.input": the window mask is added there)."""
    calls = []

    def hook(name, module, args, out):
        kind = type(module).__name__
        if kind == "IntSoftmax":
            calls.append((name, kind + ".input", compact(args[0], args[1]),
                          args[1].detach().numpy().copy()))
        calls.append((name, kind, compact(*out), out[1].detach().numpy().copy()))

    for name, m in model.named_modules():
        if type(m).__name__ in QUANT_TYPES:
            m.register_forward_hook(partial(hook, name))
    return calls


def test_fixtures_name_the_ivit_commit_they_came_from():
    for name in ("modules", "deit", "swin"):
        m = meta(load(name))
        assert m["source"] == "https://github.com/zkkli/I-ViT"
        assert m["commit"] == "380ba99144e7dedf428477826a6b3060bf9b85d2"


def assert_same_integers(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert got.dtype == ref.dtype, f"{what}: integer {ref.dtype == np.int32} in I-ViT"
    assert got.shape == ref.shape, f"{what}: shape {got.shape} vs I-ViT's {ref.shape}"
    if ref.dtype != np.int32:
        # not integral (a float sum of I-ViT's non-integral x / s, e.g. the patch conv's):
        # its last bits follow the platform's summation order (oneDNN's conv kernels differ
        # between machines), so only float32 rounding is allowed; a changed constant moves
        # these values by far more, and every integer output stays bit for bit
        tol = 64 * np.finfo(np.float32).eps * max(1.0, float(np.abs(ref).max()))
        bad = np.flatnonzero(np.abs(got.astype(np.float64) - ref) > tol)
    else:
        bad = np.flatnonzero(got != ref)
    if bad.size:
        raise AssertionError(f"{what}: {bad.size} of {ref.size} values differ from I-ViT's "
                             f"(first at {bad[0]}: {got.ravel()[bad[0]]} vs "
                             f"{ref.ravel()[bad[0]]})")


def assert_same_scale(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    # (I-ViT's activation scales are 0-d after its min/max reduction, ours hold one value)
    assert np.array_equal(got.reshape(-1), ref.reshape(-1)), (
        f"{what}: scale {got.reshape(-1)[:3]} vs I-ViT's {ref.reshape(-1)[:3]}")


def assert_equal_tensor(got: torch.Tensor, ref: np.ndarray, what: str) -> None:
    got = got.detach().numpy()
    assert got.shape == ref.shape, f"{what}: shape"
    if not np.array_equal(got, ref):
        diff = np.abs(got.astype(np.float64) - ref).max()
        raise AssertionError(f"{what} differs from I-ViT's (max |diff| {diff:.3g})")


# --- the models ------------------------------------------------------------------------------

def _model(name: str, flags: Flags, fx: dict):
    config = meta(fx)["config"]
    cfg = {k: v for k, v in config.items() if k not in ("family", "batch")}
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    family = config["family"]
    cls = QuantViT if family == "vit" else QuantSwin
    model = cls(flags=flags, drop_path_rate=0.0, **cfg).train()
    # I-ViT's state: its parameters and (unobserved) quantizer scales, loaded by its names
    state = {k[len("init/"):]: torch.from_numpy(v) for k, v in fx.items()
             if k.startswith("init/")}
    for act in json.loads(str(fx["state_names"])):
        state[f"{act}.act_scaling_factor"] = torch.zeros(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no usable activation scale": none observed yet
        qvit.load_ivit_checkpoint(model, state)
    rename = _swin_rename if family == "swin" else (lambda k: k)
    return model, rename


def _run(name: str, flags: Flags, fx: dict):
    model, rename = _model(name, flags, fx)
    calls = record_quantized_modules(model)
    opt = torch.optim.AdamW(model.parameters(), **meta(fx)["adamw"])
    got = {"calls": [], "loss": []}
    for step in range(meta(fx)["steps"]):
        calls.clear()
        x = torch.from_numpy(fx[f"step{step}/x"]).clone().requires_grad_(True)
        y = torch.from_numpy(fx[f"step{step}/y"])
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        got["loss"].append(loss.detach())
        if step == 0:
            got["calls"] = list(calls)
            got["input_grad"] = x.grad
            got["grads"] = {n: p.grad.clone() for n, p in model.named_parameters()
                            if p.grad is not None}
            got["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    return got, rename


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", ["deit", "swin"])
def test_training_equals_official_ivit_bit_for_bit(name, preset):
    fx = load(name)
    got, rename = _run(name, Flags.preset(preset), fx)
    order = json.loads(str(fx["calls"]))[0]
    assert [c[1] for c in got["calls"]] == [t for _, t in order], (
        "the quantized modules run in another order than I-ViT's")
    for i, ((ours, kind, q, s), (theirs, _)) in enumerate(zip(got["calls"], order,
                                                                strict=True)):
        what = f"call {i} ({kind}: ours {ours}, I-ViT {theirs})"
        assert_same_scale(s, fx[f"step0/call{i:03d}/scale"], what)
        assert_same_integers(q, fx[f"step0/call{i:03d}/int"], what)
    assert_equal_tensor(got["loss"][0], fx["step0/loss"], "loss")
    assert_equal_tensor(got["input_grad"], fx["step0/input_grad"], "input gradient")
    theirs = {rename(k[len("step0/grad/"):]): v for k, v in fx.items()
              if k.startswith("step0/grad/")}
    assert set(got["grads"]) == set(theirs), "parameters with a gradient"
    for n, g in got["grads"].items():
        assert_equal_tensor(g, theirs[n], f"gradient of {n}")
    after = {rename(k[len("step0/param/"):]): v for k, v in fx.items()
             if k.startswith("step0/param/")}
    assert set(got["params"]) == set(after)
    for n, p in got["params"].items():
        assert_equal_tensor(p, after[n], f"{n} after an AdamW step")
    for step in range(1, meta(fx)["steps"]):  # the momentum of the ranges, the updated weights
        assert_equal_tensor(got["loss"][step], fx[f"step{step}/loss"], f"loss of step {step}")


# --- the module classes alone ------------------------------------------------------------

def _case(fx: dict, case: str) -> dict:
    return {k[len(case) + 1:]: v for k, v in fx.items() if k.startswith(case + "/")}


def _modules(fx: dict) -> dict:
    def with_params(module, case):
        d = _case(fx, case)
        with torch.no_grad():
            for n, p in module.named_parameters():
                p.copy_(torch.from_numpy(d[f"param_{n}"]))
        return module

    cases = {"act_input": qm.QuantAct(8), "act_requant": qm.QuantAct(16),
             "act_requant_31bits": qm.QuantAct(16),
             "linear": with_params(qm.QuantLinear(12, 10), "linear"),
             "conv": with_params(qm.QuantConv2d(3, 6, 2, stride=2), "conv"),
             "matmul": qm.QuantMatMul(),
             "layernorm": with_params(qm.IntLayerNorm(16, eps=1e-6), "layernorm"),
             "gelu": qm.IntGELU(8), "softmax8": qm.IntSoftmax(8), "softmax16": qm.IntSoftmax(16)}
    return cases


@pytest.mark.parametrize("preset", PRESETS)
def test_each_module_equals_official_ivit_bit_for_bit(preset):
    fx = load("modules")
    for case, module in _modules(fx).items():
        module.flags = Flags.preset(preset)
        module.train()
        d = _case(fx, case)
        n_calls = 1 + max(int(k[2:].split("_")[0]) for k in d if k.startswith("in"))
        args_of = []
        for i in range(n_calls):
            args = []
            for j in range(4):
                if f"in{i}_{j}" not in d:
                    break
                t = torch.from_numpy(d[f"in{i}_{j}"]).clone()
                args.append(t.requires_grad_(f"grad_in{i}_{j}" in d))
            args_of.append(args)
        loss = 0.0
        for i, args in enumerate(args_of):
            x, s = module(*args)
            what = f"{case} ({preset}) output {i}"
            assert_same_scale(s.detach().numpy(), d[f"out{i}/scale"], what)
            assert_same_integers(compact(x, s), d[f"out{i}/int"], what)
            loss = loss + (x * torch.from_numpy(d[f"up{i}"])).sum()
        loss.backward()
        for i, args in enumerate(args_of):
            for j, a in enumerate(args):
                if f"grad_in{i}_{j}" in d:
                    assert_equal_tensor(a.grad, d[f"grad_in{i}_{j}"],
                                        f"{case} ({preset}): gradient of input {i}.{j}")
        theirs = {k[len("grad_"):] for k in d if k.startswith("grad_") and
                  not k.startswith("grad_in")}
        ours = {n for n, p in module.named_parameters() if p.grad is not None}
        assert ours == theirs, f"{case}: parameters with a gradient"
        for n, p in module.named_parameters():
            if n in theirs:
                assert_equal_tensor(p.grad, d[f"grad_{n}"], f"{case} ({preset}): grad {n}")
