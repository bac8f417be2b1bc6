"""The deployed model against the QAT model it came from: per-layer differences of the
requantized integers, the logits' difference, top-1 agreement; and `evaluate_deployed`,
what a harness calls to evaluate both on a data loader.

The deployed model is exact integer arithmetic; the QAT model's float32 eval computes the
same formulas on integer-valued floats, and where float32 rounds (``q * s / s`` a hair off
the integer before a floor, sums beyond 2^24, floor(I / t) as a float reciprocal) an
integer moves. These functions count where.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..modules import QuantAct
from . import layers
from .convert import deploy
from .model import DeployedModel

__all__ = ["INTEGER_LAYERS", "record_deployed", "record_qat", "layer_differences",
           "evaluate_deployed"]

INTEGER_LAYERS = (layers.InputQuant, layers.Requant, layers.IntLinear, layers.IntMatMul,
                  layers.IntLayerNorm, layers.IntSoftmax, layers.IntGELU)


@contextlib.contextmanager
def record_deployed(deployed: nn.Module):
    """{module name: integer output} of every integer layer while inside (each layer run
    as its own module: `DeployedModel.layer_by_layer`)."""
    out: dict[str, Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: out.__setitem__(n, o))
             for n, m in deployed.named_modules() if isinstance(m, INTEGER_LAYERS)]
    layerwise = (deployed.layer_by_layer() if isinstance(deployed, DeployedModel)
                 else contextlib.nullcontext())
    try:
        with layerwise:
            yield out
    finally:
        for h in hooks:
            h.remove()


@contextlib.contextmanager
def record_qat(model: nn.Module):
    """{QuantAct name: its integers round(value / scale)} of a QAT model while inside."""
    out: dict[str, Tensor] = {}

    def hook(n):
        def rec(mod, args, o):
            out[n] = torch.round(o[0] / o[1]).to(torch.int64)
        return rec

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
             if isinstance(m, QuantAct)]
    try:
        yield out
    finally:
        for h in hooks:
            h.remove()


def layer_differences(model: nn.Module, deployed: DeployedModel, images: Tensor
                      ) -> dict[str, Any]:
    """One batch through both: for each requantizer (QuantAct), the fraction of elements
    that differ and the largest difference in integer steps; the logits' largest absolute
    difference and top-1 agreement."""
    model.eval()
    with torch.no_grad(), record_qat(model) as q, record_deployed(deployed) as d:
        qat_logits = model(images)
        dep_logits = deployed(images)
    per_layer = {}
    for name, qv in q.items():
        if name not in d:  # a constant's quantizer (q_pos, q_bias_table): folded away
            continue
        dv = d[name].to(torch.int64)
        diff = (qv.reshape(dv.shape) - dv).abs()
        per_layer[name] = dict(frac=(diff > 0).double().mean().item(),
                               max_steps=int(diff.max().item()), numel=diff.numel())
    return dict(layers=per_layer,
                logits_max_abs_diff=(qat_logits - dep_logits).abs().max().item(),
                top1_agreement=(qat_logits.argmax(1) == dep_logits.argmax(1))
                .double().mean().item())


def evaluate_deployed(model: nn.Module, loader: Iterable, deployed: DeployedModel | None = None,
                      *, device: torch.device | str | None = None,
                      max_batches: int | None = None) -> dict[str, Any]:
    """Evaluate the QAT ``model`` and its deployed integer model on ``loader`` (batches of
    (images, labels)). Returns dict(top1 (deployed), qat_top1, agreement (fraction of
    equal top-1 predictions), n, logits_max_abs_diff, disagreements (dataset positions)).
    ``deployed``: reuse one (else `deploy(model)`)."""
    deployed = deploy(model) if deployed is None else deployed
    if device is not None:
        model, deployed = model.to(device), deployed.to(device)
    dev = next(deployed.buffers()).device
    was_training = model.training
    model.eval()
    n = hit_d = hit_q = agree = 0
    worst = 0.0
    where: list[int] = []
    try:
        with torch.no_grad():
            for i, (x, y) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = x.to(dev), y.to(dev)
                lq, ld = model(x), deployed(x)
                pq, pd = lq.argmax(1), ld.argmax(1)
                hit_q += (pq == y).sum().item()
                hit_d += (pd == y).sum().item()
                same = pq == pd
                agree += same.sum().item()
                where += (n + torch.nonzero(~same).flatten()).tolist()
                worst = max(worst, (lq - ld).abs().max().item())
                n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate_deployed got no batches")
    return dict(top1=hit_d / n, qat_top1=hit_q / n, agreement=agree / n, n=n,
                logits_max_abs_diff=worst, disagreements=where)


def local_differences(model: nn.Module, deployed: DeployedModel, images: Tensor,
                      dtype: torch.dtype = torch.float32) -> dict[str, dict[str, Any]]:
    """Where the QAT arithmetic itself moves an integer: each QAT I-LayerNorm, Shiftmax
    and ShiftGELU run on the deployed model's own integer inputs (as value = q x scale,
    in ``dtype``), against the deployed layer's output. With float64 (a float32 scale and
    an 8/16-bit integer have an exact float64 product, and sums stay exact) what remains
    is what float32 rounding does not explain."""
    import copy

    from ..modules import IntGELU as QGELU
    from ..modules import IntLayerNorm as QLN
    from ..modules import IntSoftmax as QSoftmax
    from .convert import probe_scales

    scales = probe_scales(model)
    inputs: dict[str, Tensor] = {}
    hooks = [m.register_forward_hook(
        lambda mod, a, o, n=n: inputs.__setitem__(n, (a[0], o)))
        for n, m in deployed.named_modules()
        if isinstance(m, (layers.IntLayerNorm, layers.IntSoftmax, layers.IntGELU))]
    try:
        with torch.no_grad(), deployed.layer_by_layer():
            deployed(images)
    finally:
        for h in hooks:
            h.remove()
    twin = copy.deepcopy(model).to(dtype).eval()
    if dtype != torch.float32:  # (the lean nodes are float32 only; under `best` the
        # I-LayerNorm chain they fall back to refuses newton="in_layernorm": use the
        # legacy paths, the same values)
        from ..flags import Flags

        twin.set_flags(Flags.preset("legacy"))
    qat = dict(twin.named_modules())
    out = {}
    with torch.no_grad():
        for name, (x_int, y_int) in inputs.items():
            mod = qat[name]
            if not isinstance(mod, (QLN, QSoftmax, QGELU)):
                continue
            s = scales[name]["in"].to(dtype)
            y, ys = mod(x_int.to(dtype) * s.reshape(-1), s)
            q = torch.round(y / ys).to(torch.int64)
            diff = (q - y_int.to(torch.int64)).abs()
            out[name] = dict(frac=(diff > 0).double().mean().item(),
                             max_steps=int(diff.max().item()), numel=diff.numel())
    return out
