"""Golden outputs of the official I-ViT code (zkkli/I-ViT), for tests/qvit/test_ivit_golden.py.

Not run by CI: it needs a local checkout of I-ViT (its files unmodified) and runs it on the
CPU (``Tensor.cuda`` made a no-op for the run; its Swin's stray ``from tkinter import X`` is
given a stub module where tkinter is missing). It writes one ``.npz`` of numbers per
configuration into ``--out``:

* ``modules``: each I-ViT module class alone (QuantAct quantizing, requantizing with a
  residual, twice for the running range's momentum; QuantLinear, QuantConv2d, QuantMatMul,
  IntLayerNorm, IntGELU, IntSoftmax at 8 and 16 bits) on fixed inputs: outputs, output
  scales and the gradients of a fixed upstream gradient;
* ``deit`` and ``swin``: a DeiT and a Swin small enough for CI (every parameter random,
  biases and LayerNorm affine included), two training steps of AdamW: per step the output of
  every quantized module in call order, as value / scale and scale, the loss, the input's and
  every parameter's gradient, and the parameters after the step.

Each file carries what the test needs to repeat the run (``meta``: the I-ViT commit, the
architecture, the optimizer's settings, the number of steps; the inputs and labels), so
the test reads nothing of this script.

    python scripts/ivit_fixtures.py --ivit /path/to/I-ViT --commit <sha> \\
        --out tests/qvit/fixtures
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch

# Small enough that the integer sums of the linear layers, convolutions and attention
# products stay below 2^24 (exact in float32).
CONFIGS = {
    "deit": dict(family="vit", batch=2, img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2,
                 mlp_ratio=2.0, num_classes=3),
    # two stages: 2x2 windows on the 4x4 grid, the second block shifted (with its mask),
    # patch merging to 2x2 (one window)
    "swin": dict(family="swin", batch=1, img_size=8, patch_size=2, embed_dim=4,
                 depths=(2, 2), num_heads=(1, 2), window_size=2, mlp_ratio=2.0, num_classes=3),
}
STEPS = 3
ADAMW = dict(lr=1e-3, weight_decay=0.05, foreach=False)
QUANT_TYPES = ("QuantAct", "QuantLinear", "QuantConv2d", "QuantMatMul", "IntLayerNorm",
               "IntGELU", "IntSoftmax")


def random_parameters_(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random, in named order: weights around timm's init, biases and
    LayerNorm affine nonzero (the LayerNorm weight away from 0: its bias enters as
    bias / weight)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * r)
            elif name.endswith("bias"):
                p.copy_(0.1 * r)
            else:
                p.copy_(0.1 * r)


def record_quantized_modules(model: torch.nn.Module, types_: tuple[str, ...] = QUANT_TYPES):
    """Forward hooks on every quantized module; returns the list they fill, in call order,
    with (module name, class name, output as `compact` integers, scale). IntSoftmax's
    input is recorded too (as a call of its own, class "IntSoftmax.input"): Swin's window
    mask is added there, and the softmax's clamp hides its value from every output."""
    calls: list[tuple[str, str, np.ndarray, np.ndarray]] = []

    def hook(name, module, args, out):
        kind = type(module).__name__
        if kind == "IntSoftmax":
            calls.append((name, kind + ".input", compact(args[0], args[1]),
                          args[1].detach().numpy().copy()))
        x, s = out
        calls.append((name, kind, compact(x, s), s.detach().numpy().copy()))

    for name, m in model.named_modules():
        if type(m).__name__ in types_:
            m.register_forward_hook(partial(hook, name))
    return calls


def batch(cfg: dict, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    s = cfg["img_size"]
    n = cfg["batch"]
    return (torch.randn(n, 3, s, s, generator=g),
            torch.randint(0, cfg["num_classes"], (n,), generator=g))


def compact(x: torch.Tensor, s: torch.Tensor) -> np.ndarray:
    """A module output ``x`` at scale ``s`` in the integer domain: the integers q (int32)
    where ``x == q * s`` exactly in float32, as every I-ViT module forms its output; else
    ``x / s`` as it is (float32). `tests/qvit/test_ivit_golden.py` compares both ways."""
    x, s = x.detach(), s.detach()
    q = torch.round(x / s)
    if torch.equal(q * s, x) and q.abs().max() < 2**31:
        return q.numpy().astype(np.int32)
    return (x / s).numpy()


def train_record(model, cfg, state_names) -> dict[str, np.ndarray]:
    """STEPS AdamW steps from the model as it is; arrays keyed ``step{i}/...``: the first
    step's module outputs, loss, input and parameter gradients and the parameters after
    it; the later steps' losses (they see the running ranges' momentum and the updated
    parameters)."""
    calls = record_quantized_modules(model)
    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
    out: dict[str, np.ndarray] = {}
    order = []
    for step in range(STEPS):
        calls.clear()
        x, y = batch(cfg, step)
        x.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out[f"step{step}/loss"] = loss.detach().numpy()
        out[f"step{step}/x"], out[f"step{step}/y"] = x.detach().numpy(), y.numpy()
        if step:
            continue
        for i, (_, _, v, s) in enumerate(calls):
            out[f"step{step}/call{i:03d}/int"] = v
            out[f"step{step}/call{i:03d}/scale"] = s
        order.append([(n, t) for n, t, _, _ in calls])
        out[f"step{step}/input_grad"] = x.grad.numpy()
        for n, p in model.named_parameters():
            if p.grad is not None:  # (I-ViT's LayerNorm biases get none)
                out[f"step{step}/grad/{n}"] = p.grad.numpy().copy()
            out[f"step{step}/param/{n}"] = p.detach().numpy().copy()
    out["calls"] = np.array(json.dumps(order))
    out["state_names"] = np.array(json.dumps(state_names))
    return out


def import_ivit(root: Path):
    torch.Tensor.cuda = lambda self, *a, **k: self  # I-ViT calls .cuda() inside its ops
    try:
        import tkinter  # noqa: F401  (I-ViT's swin_quant.py: `from tkinter import X`)
    except ImportError:
        sys.modules["tkinter"] = types.SimpleNamespace(X="x")
    sys.path.insert(0, str(root))
    import models  # I-ViT's package
    from models import quantization_utils as qu

    return models, qu


def build(models, qu, cfg: dict):
    kw = {k: v for k, v in cfg.items() if k not in ("family", "batch")}
    norm = partial(qu.IntLayerNorm, eps=1e-6)
    if cfg["family"] == "vit":
        return models.vit_quant.VisionTransformer(qkv_bias=True, norm_layer=norm, **kw)
    return models.swin_quant.SwinTransformer(qkv_bias=True, norm_layer=norm,
                                             drop_path_rate=0.0, **kw)


def model_fixture(models, qu, name: str) -> dict[str, np.ndarray]:
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = build(models, qu, cfg).train()
    random_parameters_(model, seed=1)
    out = {f"init/{n}": p.detach().numpy().copy() for n, p in model.named_parameters()}
    # the quantizers' (unobserved, zero) scales: what an I-ViT checkpoint of it would hold
    acts = [n for n, m in model.named_modules() if isinstance(m, qu.QuantAct)]
    out.update(train_record(model, cfg, acts))
    return out


def _requant_31bit_case(qu) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, scale) of integers z whose requantized value rounds otherwise with a 30-bit
    multiplier than with I-ViT's 31 bits (the largest z sets the range, so the ratio of
    scales is known beforehand); found with I-ViT's own batch_frexp."""
    s_in = torch.tensor([0.0123])
    z_max = 1_000_003
    probe = qu.QuantAct(16).train()
    probe(torch.tensor([[float(z_max)]]) * s_in, s_in)
    ratio = (s_in.double() / probe.act_scaling_factor.float().double()).view(1)
    z = torch.arange(1, z_max, dtype=torch.float64)
    out = {}
    for bits in (30, 31):
        m, e = qu.quant_utils.batch_frexp(ratio, max_bit=bits)
        out[bits] = torch.round(z * m.double() / 2.0 ** e)
    differ = z[out[30] != out[31]][:63]
    assert len(differ), "no z tells 30 from 31 bits: choose another z_max"
    zs = torch.cat([torch.tensor([float(z_max)]), differ.float()]).view(1, -1)
    return (zs * s_in).requires_grad_(True), s_in


def module_fixture(qu) -> dict[str, np.ndarray]:
    """Each module class alone; arrays keyed ``<case>/...``."""
    g = torch.Generator().manual_seed(7)
    out: dict[str, np.ndarray] = {}

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    def save(case, inputs, outputs, grads):
        for k, v in {**inputs, **grads}.items():
            out[f"{case}/{k}"] = v.detach().numpy().copy()
        for i, (x, s) in enumerate(outputs):
            out[f"{case}/out{i}/int"] = compact(x, s)
            out[f"{case}/out{i}/scale"] = s.detach().numpy()

    def run(case, module, calls, params=()):
        """calls: list of argument tuples (tensors needing grad are leaves); the outputs'
        sum weighted by fixed random upstream gradients (``up{i}``) is backpropagated
        once."""
        module.train()
        outputs, loss, inputs = [], 0.0, {}
        for i, args in enumerate(calls):
            for j, a in enumerate(args):
                if isinstance(a, torch.Tensor):
                    inputs[f"in{i}_{j}"] = a
            x, s = module(*args)
            outputs.append((x, s))
            inputs[f"up{i}"] = rnd(*x.shape)
            loss = loss + (x * inputs[f"up{i}"]).sum()
        loss.backward()
        grads = {f"grad_in{i}_{j}": a.grad for i, args in enumerate(calls)
                 for j, a in enumerate(args)
                 if isinstance(a, torch.Tensor) and a.grad is not None}
        grads.update({f"grad_{n}": p.grad for n, p in module.named_parameters()
                      if p.grad is not None})
        params = {f"param_{n}": p for n, p in module.named_parameters()}
        save(case, {**inputs, **params}, outputs, grads)

    def leaf(t):
        return t.requires_grad_(True)

    # QuantAct: input quantization twice (the second call moves the range by the momentum)
    run("act_input", qu.QuantAct(8), [(leaf(rnd(2, 5, 6)),), (leaf(rnd(2, 5, 6, scale=1.3)),)])
    # requantization with a residual, 16 bits, twice
    s_in, s_id = torch.tensor([0.0123]), torch.tensor([0.00071])
    calls = [(leaf(torch.round(rnd(2, 5, 6, scale=40)) * s_in), s_in,
              leaf(torch.round(rnd(2, 5, 6, scale=900)) * s_id), s_id) for _ in range(2)]
    run("act_requant", qu.QuantAct(16), calls)
    # requantization where the 31st bit of the dyadic multiplier decides the rounding
    run("act_requant_31bits", qu.QuantAct(16), [_requant_31bit_case(qu)])
    # the linear layers: per-channel 8-bit weights, 32-bit bias at weight x input scale
    lin = qu.QuantLinear(12, 10)
    conv = qu.QuantConv2d(3, 6, kernel_size=2, stride=2)
    for m in (lin, conv):
        with torch.no_grad():
            m.weight.copy_(rnd(*m.weight.shape, scale=0.2))
            m.bias.copy_(rnd(*m.bias.shape, scale=0.05))
    s8 = torch.tensor([0.021])
    run("linear", lin, [(leaf(torch.round(rnd(2, 5, 12, scale=30)).clamp(-128, 127) * s8), s8)])
    run("conv", conv, [(leaf(torch.round(rnd(2, 3, 4, 4, scale=30)).clamp(-128, 127) * s8),
                        s8)])
    sa, sb = torch.tensor([0.013]), torch.tensor([0.027])
    run("matmul", qu.QuantMatMul(),
        [(leaf(torch.round(rnd(2, 2, 5, 4, scale=30)) * sa), sa,
          leaf(torch.round(rnd(2, 2, 4, 5, scale=30)) * sb), sb)])
    ln = qu.IntLayerNorm(16, eps=1e-6)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.2 * rnd(16))
        ln.bias.copy_(0.1 * rnd(16))
    s16 = torch.tensor([0.00093])
    # small and large variances: the Newton iteration from 2^16 both unconverged and not
    x_ln = torch.cat([torch.round(rnd(2, 3, 16, scale=3)), torch.round(rnd(2, 3, 16, scale=9000))],
                     dim=1)
    run("layernorm", ln, [(leaf(x_ln * s16), s16)])
    # GELU and softmax over wide input ranges (the clamp at n * x0 and the shifts)
    run("gelu", qu.IntGELU(8), [(leaf(torch.round(rnd(2, 5, 16, scale=60)).clamp(-128, 127)
                                      * torch.tensor([0.04])), torch.tensor([0.04]))])
    for bits in (8, 16):
        s = torch.tensor([0.011])
        x = torch.round(rnd(2, 2, 6, 16, scale=50)).clamp(-128, 127)
        x[0, 0, 0] = -128  # a wide row: exp's shift beyond n
        run(f"softmax{bits}", qu.IntSoftmax(bits), [(leaf(x * s), s)])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ivit", required=True, type=Path, help="checkout of zkkli/I-ViT")
    ap.add_argument("--commit", default=None, help="its commit (default: git rev-parse)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    commit = args.commit or subprocess.run(["git", "-C", str(args.ivit), "rev-parse", "HEAD"],
                                           capture_output=True, text=True,
                                           check=True).stdout.strip()
    torch.set_num_threads(1)
    models, qu = import_ivit(args.ivit)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(source="https://github.com/zkkli/I-ViT", commit=commit,
                torch=torch.__version__, script="scripts/ivit_fixtures.py")
    fixtures = {"modules": module_fixture(qu)}
    for name in CONFIGS:
        fixtures[name] = model_fixture(models, qu, name)
    for name, arrays in fixtures.items():
        extra = dict(config=CONFIGS[name], adamw=ADAMW, steps=STEPS) if name in CONFIGS else {}
        arrays["meta"] = np.array(json.dumps({**meta, **extra}))
        path = args.out / f"ivit_{name}.npz"
        np.savez_compressed(path, **arrays)
        print(f"{path}: {len(arrays)} arrays, {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
