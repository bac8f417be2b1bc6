"""Quantized modules: a value and its scale travel together, ``(x, scale) -> (y, scale)``.

Every module binds its paths once per flag change: assigning ``module.flags`` (a
`qvit.Flags`; the model's `set_flags` assigns every module's) calls its ``_bind``, which
picks the implementation each flag selects (a lean node of `qvit.lean`, or a reference
primitive of `qvit.primitives` with its options bound); ``forward`` then calls what was
chosen and reads no flag. `QuantModule.paths` says what was chosen.
Running ranges and activation scales are persistent buffers (a reloaded model evaluates
identically); integers derived from the weights are non-persistent, so a model's state dict
holds the same keys under every flag and loads across presets.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fused as FU
from . import lean as L
from . import primitives as P
from .flags import Flags

__all__ = [
    "source_key", "key_matches", "caches_enabled", "QuantModule", "QuantAct", "QuantLinear",
    "TerLinear", "QuantConv2d", "QuantMatMul", "IntLayerNorm", "IntGELU", "IntSoftmax",
]


def source_key(*sources: Tensor) -> tuple:
    """The key of a cached value: each tensor it is derived from, with its version counter.

    Holding the tensor itself (compared with ``is``) means its identity cannot be reused by
    a new tensor while the key lives; the version counter moves with every in-place update
    (an optimizer step, `load_state_dict`'s copy, timm ModelEmaV3's lerp of the EMA
    model's parameters and buffers), in any mode. A replaced buffer (QuantAct assigns new
    ranges and scales) is a different tensor. What this cannot see: writes through
    ``.data`` (a tensor with its own version counter) and `.data` reassignment, which
    `nn.Module._apply` (``.to()``, ``.half()``) does; `QuantModule._apply` drops the caches
    for that one."""
    return tuple((t, t._version) for t in sources)


def caches_enabled() -> bool:
    """Whether eval caches may be read and filled: not while torch.compile traces. A key's
    identity and version counter cannot be guarded on (a data-dependent guard: a graph
    break per cache, then recompiles); the graph recomputes the cached values instead (the
    same values: a cache only ever holds what the recomputation gives)."""
    return not torch.compiler.is_compiling()


def key_matches(key: tuple | None, *sources: Tensor) -> bool:
    """Whether a `source_key` still describes ``sources`` (same tensors, same versions);
    never while torch.compile traces (`caches_enabled`)."""
    return caches_enabled() and key is not None and all(
        s is t and v == t._version for (s, v), t in zip(key, sources, strict=True))


class QuantModule(nn.Module):
    """Base of modules with flag-selected paths and eval caches.

    Every cache (flags 10, 11, 12, 13) is keyed on the tensors it is derived from
    (`source_key`): it is refilled by the first use after any change to them, in any mode,
    whatever changed them (an optimizer step taken in eval, an EMA update, a load). Mode
    switches play no part. `set_flags` (paths may change values) and device or dtype moves
    (`_apply`, which swaps ``.data`` without a version bump) drop the caches explicitly.
    """

    _flags: Flags = Flags()

    @property
    def flags(self) -> Flags:
        return self._flags

    @flags.setter
    def flags(self, flags: Flags) -> None:
        self._flags = flags
        self._bind(flags)

    def _bind(self, flags: Flags) -> None:
        """Choose the implementations ``flags`` select (called on every flag change)."""

    def paths(self) -> dict[str, str]:
        """The implementation bound for each part of this module's work (for reading what
        a preset runs)."""
        return {}

    def invalidate_cache(self) -> None:
        """Forget everything cached. Subclasses with caches extend this."""

    def _apply(self, fn, *args, **kwargs):
        self.invalidate_cache()
        return super()._apply(fn, *args, **kwargs)

    # fix()/unfix() are no-ops on modules without running statistics (I-ViT API).
    def fix(self) -> None:
        """Freeze what this module learns from data (only QuantAct has something)."""

    def unfix(self) -> None:
        """Unfreeze what `fix` froze."""


# --- activations ---------------------------------------------------------------------------

def _batch_range(x_act: Tensor, *, whole: bool, aminmax: bool) -> tuple[Tensor, Tensor]:
    """The batch's range: over the whole tensor (global_act_minmax) or, as the legacy code,
    per channel of a transposed copy and then the global extreme (same values); by one
    aminmax pass (act_aminmax) or min() then max()."""
    if whole:
        return torch.aminmax(x_act) if aminmax else (x_act.min(), x_act.max())
    if x_act.dim() == 4:
        x_act = x_act.permute(0, 2, 3, 1)
    v = x_act.reshape(-1, x_act.shape[-1]).transpose(0, 1)
    if aminmax:
        return torch.aminmax(v, dim=1)
    return v.min(dim=1).values, v.max(dim=1).values


def _times_scale(q: Tensor, scale: Tensor) -> Tensor:
    return q * scale.view(-1)


class QuantAct(QuantModule):
    """Quantizes activations to ``activation_bit`` symmetric integers with a running range.

    Input quantization (no incoming scale) rounds ``x / scale``; requantization (incoming
    scale, optional residual ``identity``) goes through the dyadic `fixedpoint_mul`.
    Statistics are collected in training mode unless frozen with `fix()`.
    """

    def __init__(self, activation_bit: int = 8, act_range_momentum: float = 0.95):
        super().__init__()
        self.activation_bit = activation_bit
        self.act_range_momentum = act_range_momentum
        self.running_stat = True
        self.register_buffer("min_val", torch.zeros(1))
        self.register_buffer("max_val", torch.zeros(1))
        # The scale of the empty range [0, 0]: what both scale paths compute before any data.
        self.register_buffer("act_scaling_factor", torch.full((1,), P.EPS_F32))
        self._scale_key: tuple | None = None  # the range act_scaling_factor was derived from
        self._bind(self.flags)

    def _bind(self, f: Flags) -> None:
        # the lean node computes the exact I-ViT arithmetic (float64 dyadic): it stands in
        # for the paths that compute those values and leaves the seed's shortcuts alone
        self._lean = f.lean_quant_act and f.fp64_fixedpoint and f.use_frexp
        self._batch_range = partial(_batch_range, whole=f.global_act_minmax or self._lean,
                                    aminmax=f.act_aminmax or self._lean)
        self._range_update = (QuantAct._new_range_where
                              if f.act_init_without_sync or self._lean
                              else QuantAct._new_range_sync)
        self._eval_scale_cached = f.cache_eval_act_scale
        self._eps_constant = f.eps_constant
        ste = dict(inline_ste=f.inline_ste, lean=f.ste_lean)
        self._quantize = partial(P.symmetric_quantize, is_weight=False,
                                 constant_zero_point=f.reuse_constant_tensors, **ste)
        self._requantize = partial(P.fixedpoint_mul, fp64=f.fp64_fixedpoint,
                                   use_frexp=f.use_frexp, frexp_on_device=f.frexp_on_device,
                                   fused=f.requant_fused, **ste)

    def paths(self) -> dict[str, str]:
        return {"quantize": "lean node" if self._lean else "primitives",
                "range": self._range_update.__name__}

    def invalidate_cache(self) -> None:
        self._scale_key = None

    def extra_repr(self) -> str:
        return f"activation_bit={self.activation_bit}, momentum={self.act_range_momentum}"

    def fix(self) -> None:
        self.running_stat = False

    def unfix(self) -> None:
        self.running_stat = True

    def _new_range_where(self, cur_min: Tensor, cur_max: Tensor) -> tuple[Tensor, Tensor]:
        # first call (empty range) takes the batch range; decided on the device
        m = self.act_range_momentum
        first = torch.eq(self.min_val, self.max_val)
        return (torch.where(first, cur_min, self.min_val * m + cur_min * (1 - m)),
                torch.where(first, cur_max, self.max_val * m + cur_max * (1 - m)))

    def _new_range_sync(self, cur_min: Tensor, cur_max: Tensor) -> tuple[Tensor, Tensor]:
        m = self.act_range_momentum
        if torch.eq(self.min_val, self.max_val).all():  # a host sync on every call
            return cur_min, cur_max
        return self.min_val * m + cur_min * (1 - m), self.max_val * m + cur_max * (1 - m)

    def _observe(self, x_act: Tensor) -> None:
        new_min, new_max = self._range_update(self, *self._batch_range(x_act))
        if not self._lean:  # (lean: a global range, already one element each)
            new_min, new_max = new_min.min().reshape(1), new_max.max().reshape(1)
        self.min_val, self.max_val = new_min, new_max

    def _update_scale(self) -> None:
        self.act_scaling_factor = P.symmetric_scale(
            self.activation_bit, self.min_val, self.max_val,
            eps_constant=self._eps_constant).reshape(1)
        # (traced: no key, the next eager call recomputes; see caches_enabled)
        self._scale_key = (source_key(self.min_val, self.max_val, self.act_scaling_factor)
                           if caches_enabled() else None)

    def _scale_is_current(self) -> bool:
        """Whether act_scaling_factor is still the scale of the running range (flag 11's
        cache): neither the range nor the scale has been replaced or written since."""
        return key_matches(self._scale_key, self.min_val, self.max_val, self.act_scaling_factor)

    def forward(self, x: Tensor, pre_act_scaling_factor: Tensor | None = None,
                identity: Tensor | None = None, identity_scaling_factor: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            if self.training and self.running_stat:
                self._observe(x if identity is None else identity + x)
                self._update_scale()
            elif not self._eval_scale_cached or not self._scale_is_current():
                self._update_scale()  # legacy: every call, in eval too (seed change 11)
        scale = self.act_scaling_factor
        bits = self.activation_bit
        if self._lean and x.dtype == torch.float32:
            if pre_act_scaling_factor is None:
                return L.quantize_act(x, scale, bits), scale
            return L.requantize(x, pre_act_scaling_factor, scale, bits, identity,
                                identity_scaling_factor), scale
        if pre_act_scaling_factor is None:
            return _times_scale(self._quantize(x, bits, scale), scale), scale
        return _times_scale(self._requantize(x, pre_act_scaling_factor, bits, scale, identity,
                                             identity_scaling_factor), scale), scale


def _rescale(out: Tensor, scale: Tensor) -> Tensor:
    return out * scale


def _rescale_inplace(out: Tensor, scale: Tensor) -> Tensor:
    """``out * scale`` into ``out``, a product this module has just made (the same values;
    autograd's in-place multiply has the same backward, grad * scale)."""
    return out.mul_(scale)


# --- weights ----------------------------------------------------------------------------

class _QuantWeightMixin:
    """Weight quantization with the eval cache of seed change 10, done right: the cache is
    keyed on the weight tensor and its version counter (`source_key`), so it is refilled by
    the first eval forward after any weight change (the seed's reused the last training
    forward's weights, one step stale)."""

    weight_bit: int
    bias_bit: int | None

    def _init_quant(self, weight_bit: int, bias_bit: int | None, out_channels: int):
        self.weight_bit = weight_bit
        self.bias_bit = bias_bit
        # Derived from the weights: kept for inspection/export, not saved.
        self.register_buffer("weight_scaling_factor", torch.zeros(out_channels),
                             persistent=False)
        self._weight_cache: tuple | None = None
        self._bind(self.flags)

    def _bind(self, f: Flags) -> None:
        ste = dict(inline_ste=f.inline_ste, constant_zero_point=f.reuse_constant_tensors,
                   lean=f.ste_lean)
        self._symmetric = partial(P.symmetric_quantize, is_weight=True, **ste)
        self._ternary = partial(P.ternary_quantize, **ste)
        self._eps_constant = f.eps_constant
        self._eval_cached = f.cache_eval_weights
        self._lean = f.lean_linear
        self._rescale = _rescale_inplace if f.lean_linear else _rescale

    def paths(self) -> dict[str, str]:
        return {"rescale": self._rescale.__name__}

    def invalidate_cache(self) -> None:
        self._weight_cache = None

    def _weight_scale(self, w: Tensor) -> Tensor:
        v = w.reshape(w.shape[0], -1)
        # (lean: amin/amax, vectorized reductions: a tenth of min/max(dim)'s time, whose
        # indices nobody reads)
        lo, hi = ((v.amin(dim=1), v.amax(dim=1)) if self._lean
                  else (v.min(dim=1).values, v.max(dim=1).values))
        return P.symmetric_scale(self.weight_bit, lo, hi, eps_constant=self._eps_constant)

    def _quantize_weight(self, w: Tensor, scale: Tensor) -> Tensor:
        return self._symmetric(w, self.weight_bit, scale)

    def quantized_weight(self) -> tuple[Tensor, Tensor]:
        """(integer weight, per-output-channel scale), from the cache where it is valid."""
        w = self.weight
        cacheable = (self._eval_cached and not self.training and caches_enabled()
                     and not (torch.is_grad_enabled() and w.requires_grad))
        if cacheable and key_matches(self._weight_cache and self._weight_cache[0], w):
            return self._weight_cache[1], self._weight_cache[2]
        with torch.no_grad():
            scale = self._weight_scale(w)
        w_int = self._quantize_weight(w, scale)
        self.weight_scaling_factor = scale
        self._weight_cache = (source_key(w), w_int, scale) if cacheable else None
        return w_int, scale

    def quantized_bias(self, bias_scale: Tensor) -> Tensor | None:
        if self.bias is None:
            return None
        return self._symmetric(self.bias, self.bias_bit, bias_scale)


class QuantLinear(_QuantWeightMixin, QuantModule, nn.Linear):
    """Linear layer on integer inputs with per-output-channel symmetric integer weights and
    a 32-bit integer bias; output scale = weight scale x input scale."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 weight_bit: int = 8, bias_bit: int = 32):
        nn.Linear.__init__(self, in_features, out_features, bias)
        self._init_quant(weight_bit, bias_bit, out_features)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight_bit={self.weight_bit}"

    def forward(self, x: Tensor, prev_act_scaling_factor: Tensor) -> tuple[Tensor, Tensor]:
        w_int, w_scale = self.quantized_weight()
        bias_scale = w_scale * prev_act_scaling_factor
        x_int = x / prev_act_scaling_factor.view(1, -1)
        out = F.linear(x_int, w_int, self.quantized_bias(bias_scale))
        return self._rescale(out, bias_scale), bias_scale


class TerLinear(QuantLinear):
    """QuantLinear with ternary weights {-1, 0, 1} x mean|w| per output channel (the seed's
    TerLinear); bias and activations as in QuantLinear."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 bias_bit: int = 32):
        super().__init__(in_features, out_features, bias, weight_bit=2, bias_bit=bias_bit)

    def _weight_scale(self, w: Tensor) -> Tensor:
        abs_mean = w.reshape(w.shape[0], -1).abs().mean(dim=1)
        return abs_mean.clamp(min=P.float32_eps(self._eps_constant))

    def _quantize_weight(self, w: Tensor, scale: Tensor) -> Tensor:
        return self._ternary(w, scale)


class QuantConv2d(_QuantWeightMixin, QuantModule, nn.Conv2d):
    """Conv2d on integer inputs with per-output-channel integer weights (patch embedding)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias: bool = True, weight_bit: int = 8,
                 bias_bit: int = 32):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           dilation, groups, bias)
        self._init_quant(weight_bit, bias_bit, out_channels)

    def forward(self, x: Tensor, prev_act_scaling_factor: Tensor) -> tuple[Tensor, Tensor]:
        w_int, w_scale = self.quantized_weight()
        bias_scale = w_scale * prev_act_scaling_factor
        x_int = x / prev_act_scaling_factor.view(1, -1, 1, 1)
        out = F.conv2d(x_int, w_int, self.quantized_bias(bias_scale), self.stride,
                       self.padding, self.dilation, self.groups)
        out_scale = bias_scale.view(1, -1, 1, 1)
        return self._rescale(out, out_scale), out_scale


class QuantMatMul(QuantModule):
    """Product of two quantized tensors; the output scale is the product of their scales."""

    def __init__(self):
        super().__init__()
        self._bind(self.flags)

    def _bind(self, f: Flags) -> None:
        self._rescale = _rescale_inplace if f.lean_linear else _rescale

    def paths(self) -> dict[str, str]:
        return {"rescale": self._rescale.__name__}

    def forward(self, a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor
                ) -> tuple[Tensor, Tensor]:
        scale = a_scale * b_scale
        return self._rescale((a / a_scale) @ (b / b_scale), scale), scale


# --- integer nonlinearities ---------------------------------------------------------------

class IntLayerNorm(QuantModule, nn.LayerNorm):
    """I-LayerNorm: integer mean/variance, integer Newton sqrt, output scale sqrt(C)/2^30 x
    weight. The bias enters as integers of ``bias / weight`` (no gradient, as in I-ViT)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6, elementwise_affine=True):
        nn.LayerNorm.__init__(self, normalized_shape, eps, elementwise_affine)
        dim = self.normalized_shape[-1]
        self.register_buffer("dim_sqrt", torch.sqrt(torch.tensor(float(dim))), persistent=False)
        self._bind(self.flags)

    def _bind(self, f: Flags) -> None:
        # the lean node carries the legacy gradient through the sqrt: not for "no_grad"
        self._lean = f.lean_layernorm and f.layernorm_newton != "no_grad"
        self._round = partial(P.round_ste, inline=f.inline_ste, lean=f.ste_lean)
        self._floor = partial(P.floor_ste, inline=f.inline_ste, lean=f.ste_lean)
        self._sqrt = partial(P.int_sqrt_newton, mode=f.layernorm_newton,
                             inline_ste=f.inline_ste, lean=f.ste_lean)

    def paths(self) -> dict[str, str]:
        return {"layernorm": "lean node" if self._lean else "chain"}

    def forward(self, x: Tensor, scaling_factor: Tensor) -> tuple[Tensor, Tensor]:
        if (self._lean and x.dtype == torch.float32 and self.weight is not None
                and not scaling_factor.requires_grad):
            out_scale = self.dim_sqrt / 2**30
            with torch.no_grad():
                bias_int = torch.floor(self.bias / self.weight / out_scale)
            y = L.int_layer_norm(x, scaling_factor, self.weight, bias_int, out_scale)
            return y, out_scale * self.weight
        return self._forward_chain(x, scaling_factor)

    def _forward_chain(self, x: Tensor, scaling_factor: Tensor) -> tuple[Tensor, Tensor]:
        x_int = x / scaling_factor
        mean_int = self._round(x_int.mean(dim=-1, keepdim=True))
        y_int = x_int - mean_int
        var_int = torch.sum(y_int**2, dim=-1, keepdim=True)
        std_int = self._sqrt(var_int)
        factor = self._floor((2**31 - 1) / std_int)
        y_int = self._floor(y_int * factor / 2)
        out_scale = self.dim_sqrt / 2**30
        bias_int = self._floor(self.bias.detach() / self.weight.detach() / out_scale)
        out_scale = out_scale * self.weight
        return (y_int + bias_int) * out_scale, out_scale


class _IntExpModule(QuantModule):
    """Shared by IntGELU and IntSoftmax: the shift-based integer exp with its x0 eval cache
    (seed change 12), keyed on the scale tensor it is derived from (the seed's was never
    refreshed)."""

    exp_bits: int  # the shift bound n of int_exp_shift

    def __init__(self, output_bit: int):
        super().__init__()
        self.output_bit = output_bit
        self.register_buffer("out_unit", torch.tensor([1 / 2 ** (output_bit - 1)]),
                             persistent=False)
        self._x0_cache: tuple | None = None
        self._bind(self.flags)

    def _bind(self, f: Flags) -> None:
        self._lean = f.lean_int_exp
        self._fused = f.fused_int_gelu if isinstance(self, IntGELU) else f.fused_int_softmax
        self._x0_cached = f.cache_exp_x0
        self._constant_unit = f.reuse_constant_tensors
        self._floor = partial(P.floor_ste, inline=f.inline_ste, lean=f.ste_lean)
        self._exp = partial(P.int_exp_shift, inline_ste=f.inline_ste, lean=f.ste_lean)

    def paths(self) -> dict[str, str]:
        return {"int_exp": "lean node" if self._lean else "fused node" if self._fused
                else "chain"}

    def _one_node(self, x: Tensor, scaling_factor: Tensor) -> str | None:
        """Which single-node path applies to this call: "lean", "fused" or None (chain)."""
        if scaling_factor.requires_grad:
            return None  # only the chain passes a gradient to the scale
        if self._lean and x.dtype == torch.float32:
            return "lean"
        return "fused" if self._fused else None

    def extra_repr(self) -> str:
        return f"output_bit={self.output_bit}"

    def invalidate_cache(self) -> None:
        self._x0_cache = None

    def _cache_x0(self) -> bool:
        return self._x0_cached and not self.training and caches_enabled()

    def _x0(self, scaling_factor: Tensor) -> Tensor:
        """x0_int = floor(-1 / scaling_factor); in eval (flag 12) from a cache keyed on the
        scale tensor (the QuantAct's buffer: the same tensor while its range holds)."""
        if not self._cache_x0():
            return P.exp_x0_int(scaling_factor)
        c = self._x0_cache
        if c is None or not key_matches(c[0], scaling_factor):
            c = self._x0_cache = (source_key(scaling_factor), P.exp_x0_int(scaling_factor))
        return c[1]

    def _out_unit(self, like: Tensor) -> Tensor:
        if self._constant_unit:
            return self.out_unit
        return torch.Tensor([1 / 2 ** (self.output_bit - 1)]).to(like.device)

    def _normalize(self, exp_int: Tensor, exp_sum: Tensor) -> Tensor:
        """floor(exp_int / exp_sum * 2^(output_bit-1)) with integer ops only."""
        factor = self._floor(P.INT32_MAX / exp_sum.clamp_max(P.INT32_MAX))
        return self._floor(exp_int * factor / 2 ** (31 - self.output_bit + 1))


class IntGELU(_IntExpModule):
    """ShiftGELU: x * sigmoid(1.702 x), the sigmoid from the shift-based integer exp."""

    exp_bits = 23

    def __init__(self, output_bit: int = 8):
        super().__init__(output_bit)
        self._sig_cache: tuple | None = None

    def invalidate_cache(self) -> None:
        super().invalidate_cache()
        self._sig_cache = None

    def _sig_scale(self, scaling_factor: Tensor) -> Tensor:
        """The sigmoid's scale 1.702 * scaling_factor; with the x0 cache, one tensor per
        input scale tensor (keyed like x0), so that x0's cache, keyed on it, holds."""
        if not self._cache_x0():
            return scaling_factor * 1.702
        c = self._sig_cache
        if c is None or not key_matches(c[0], scaling_factor):
            c = self._sig_cache = (source_key(scaling_factor), scaling_factor * 1.702)
        return c[1]

    def forward(self, x: Tensor, scaling_factor: Tensor) -> tuple[Tensor, Tensor]:
        node = self._one_node(x, scaling_factor)
        if node is not None:
            x0 = self._x0(self._sig_scale(scaling_factor))
            out_scale = scaling_factor * self._out_unit(x)
            if node == "lean":
                return L.int_gelu(x, scaling_factor, x0, self.exp_bits, self.output_bit,
                                  out_scale), out_scale
            y = FU.int_gelu(x, scaling_factor, x0, self.exp_bits, self.output_bit)
            return y * out_scale, out_scale
        pre_x_int = x / scaling_factor
        sig_scale = self._sig_scale(scaling_factor)
        x_int_max = pre_x_int.max(dim=-1, keepdim=True).values
        x0 = self._x0(sig_scale)
        exp_int, _ = self._exp(pre_x_int - x_int_max, sig_scale, self.exp_bits, x0_int=x0)
        exp_int_max, _ = self._exp(-x_int_max, sig_scale, self.exp_bits, x0_int=x0)
        sigmoid_int = self._normalize(exp_int, exp_int + exp_int_max)
        out_scale = scaling_factor * self._out_unit(x)
        return pre_x_int * sigmoid_int * out_scale, out_scale


class IntSoftmax(_IntExpModule):
    """Shiftmax: softmax over the last dim from the shift-based integer exp."""

    exp_bits = 15

    def __init__(self, output_bit: int = 8):
        super().__init__(output_bit)

    def forward(self, x: Tensor, scaling_factor: Tensor) -> tuple[Tensor, Tensor]:
        node = self._one_node(x, scaling_factor)
        out_scale = self._out_unit(x)
        if node == "lean":
            return L.int_softmax(x, scaling_factor, self._x0(scaling_factor), self.exp_bits,
                                 self.output_bit, out_scale), out_scale
        if node == "fused":
            return FU.int_softmax(x, scaling_factor, self._x0(scaling_factor), self.exp_bits,
                                  self.output_bit) * out_scale, out_scale
        x_int = x / scaling_factor
        x_int = x_int - x_int.max(dim=-1, keepdim=True).values
        exp_int, _ = self._exp(x_int, scaling_factor, self.exp_bits,
                               x0_int=self._x0(scaling_factor))
        return self._normalize(exp_int, exp_int.sum(dim=-1, keepdim=True)) * out_scale, out_scale
