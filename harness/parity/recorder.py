"""Recording what a model computes: forward hooks on every QuantAct (and the classifier head)
that keep each call's output and scale, check requantizations against the int64 deployment
reference, and force a reference model's values (teacher forcing); `TensorStats` counts how
far two recordings are apart in quantization steps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.parity.deployment import deployment_reference
from qvit.modules import QuantAct

__all__ = ["Records", "TensorStats", "ActivationRecorder", "compare_records"]

Records = dict  # (module name, call index) -> (output, scale)


@dataclass
class TensorStats:
    """Running comparison of tensors: largest difference in steps, differing elements."""

    max_steps: float = 0.0
    n_differ: int = 0
    n: int = 0
    worst: str = ""

    def add(self, a: Tensor, b: Tensor, step: Tensor, name: str,
            step_b: Tensor | None = None) -> None:
        """Compare ``b`` with ``a`` (integers times ``step``). Where both share the step, the
        difference is counted in whole integers (float32 products carry rounding noise)."""
        a, b = a.detach(), b.detach()
        if a.shape != b.shape:
            self.n += a.numel()
            self.n_differ += a.numel()
            self.max_steps, self.worst = math.inf, name
            return
        differ = a != b
        nd = int(differ.sum())
        self.n += a.numel()
        self.n_differ += nd
        if nd:
            s = step.detach().double().abs()
            if step_b is None or torch.equal(step.detach(), step_b.detach()):
                diff = (torch.round(a.double() / s) - torch.round(b.double() / s)).abs()
            else:
                diff = (a.double() - b.double()).abs() / s
            d = float(diff.max())
            d = math.inf if math.isnan(d) else d  # NaN differences count as infinitely far
            if d > self.max_steps:
                self.max_steps, self.worst = d, name

    def merge(self, o: TensorStats) -> None:
        self.n += o.n
        self.n_differ += o.n_differ
        if o.max_steps > self.max_steps:
            self.max_steps, self.worst = o.max_steps, o.worst

    @property
    def frac(self) -> float:
        return self.n_differ / self.n if self.n else 0.0


class ActivationRecorder:
    """Forward hooks on every QuantAct (and the classifier head) of a model: the output and
    scale of every call, keyed by (module name, call index within the forward); optionally
    each requantizing call's agreement with the int64 deployment reference, and teacher
    forcing (each hooked module's output replaced by a reference model's for the same call,
    so that every segment between two QuantActs starts from the reference's values and a
    difference measures that segment alone)."""

    def __init__(self, model: nn.Module):
        self.records: Records = {}
        self.deploy = TensorStats()
        self.check_deployment = False
        self.forcing: Records | None = None
        self._calls: dict[str, int] = {}
        self._handles = []
        for name, m in model.named_modules():
            if isinstance(m, QuantAct):
                self._handles.append(m.register_forward_hook(self._hook(name, m),
                                                             with_kwargs=True))
        head = getattr(model, "head", None)
        if isinstance(head, nn.Module):
            self._handles.append(head.register_forward_hook(self._hook("logits", None),
                                                            with_kwargs=True))

    def reset(self, *, check_deployment: bool = False, forcing: Records | None = None) -> None:
        """Start recording a new forward."""
        self.records, self._calls = {}, {}
        self.check_deployment, self.forcing = check_deployment, forcing

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def _hook(self, name: str, module: QuantAct | None):
        def hook(mod, args, kwargs, output):
            idx = self._calls.get(name, 0)
            self._calls[name] = idx + 1
            out, scale = output
            self.records[(name, idx)] = (out.detach().clone(), scale.detach().clone())
            if module is not None and self.check_deployment:
                self._check(name, module, args, kwargs, out, scale)
            if self.forcing is not None and (name, idx) in self.forcing:
                ref_out, ref_scale = self.forcing[(name, idx)]
                return ref_out.clone(), ref_scale.clone()
            return None
        return hook

    def _check(self, name, module, args, kwargs, out, scale) -> None:
        names = ("x", "pre_act_scaling_factor", "identity", "identity_scaling_factor")
        call = dict(zip(names, args, strict=False))
        call.update(kwargs)
        if call.get("pre_act_scaling_factor") is None:
            return  # input quantization, not a requantization
        try:
            ref = deployment_reference(call["x"], call["pre_act_scaling_factor"], scale,
                                       module.activation_bit, call.get("identity"),
                                       call.get("identity_scaling_factor"))
        except ValueError:
            return  # scale ratio outside the dyadic range: no reference
        q = torch.round(out.detach().double() / scale.detach().double().view(-1))
        self.deploy.add(q, ref.double(), torch.ones(()), name)


def compare_records(ra: Records, rb: Records) -> tuple[TensorStats, TensorStats]:
    """(every tensor, logits only), in units of the base tensor's quantization step."""
    every, logits = TensorStats(), TensorStats()
    for key in sorted(ra.keys() & rb.keys()):
        (a, sa), (b, sb) = ra[key], rb[key]
        name = f"{key[0]}[{key[1]}]"
        every.add(a, b, sa, name, sb)
        if key[0] == "logits":
            logits.add(a, b, sa, name, sb)
    return every, logits
