"""Quantized modules: a value and its scale travel together, ``(x, scale) -> (y, scale)``.

Every module binds its paths once per flag change: assigning ``module.flags`` (a
`qvit.Flags`; the model's `set_flags` assigns every module's) resolves them once
(`qvit.paths.Paths`, the one place where flags combine) and calls the module's ``_bind``,
which picks each part's implementation from its operation's file in `qvit.ops`; ``forward``
then calls what was chosen and reads no flag. `QuantModule.paths` says what was chosen: the
`Paths` fields the module reads (``PATH_FIELDS``).
Running ranges and activation scales are persistent buffers (a reloaded model evaluates
identically); integers derived from the weights are non-persistent, so a model's state dict
holds the same keys under every flag and loads across presets.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flags import Flags
from .ops import act_range, int_exp, layernorm, linear, quantize, requant
from .ops.gelu import GELU, SIGMOID_FACTOR
from .ops.softmax import SOFTMAX
from .paths import Paths

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
    PATH_FIELDS: tuple[str, ...] = ()  # the `Paths` fields this module's work reads

    @property
    def flags(self) -> Flags:
        return self._flags

    @flags.setter
    def flags(self, flags: Flags) -> None:
        self._flags = flags
        self._paths = flags.paths()
        self._bind(self._paths)

    def _bind(self, p: Paths) -> None:
        """Choose the implementations ``p`` names (called on every flag change)."""

    def paths(self) -> dict[str, object]:
        """The implementation bound for each part of this module's work: its
        ``PATH_FIELDS`` of the flags' `Paths`."""
        p = getattr(self, "_paths", None) or self._flags.paths()
        return {k: getattr(p, k) for k in self.PATH_FIELDS}

    def invalidate_cache(self) -> None:
        """Forget everything cached. Subclasses with caches extend this."""

    def _assign(self, **values) -> None:
        """Set buffers (registered ones, to new tensors) and plain attributes from a forward,
        without nn.Module.__setattr__: its checks, and the register_buffer it calls for a
        buffer, were a third of the bytecode dynamo traced in a compiled region (swin_micro:
        50k of 164k steps), the most of a warm compile start."""
        buffers = self._buffers
        for name, value in values.items():
            if name in buffers:
                buffers[name] = value
            else:
                self.__dict__[name] = value

    def _apply(self, fn, *args, **kwargs):
        self.invalidate_cache()
        return super()._apply(fn, *args, **kwargs)

    # fix()/unfix() are no-ops on modules without running statistics (I-ViT API).
    def fix(self) -> None:
        """Freeze what this module learns from data (only QuantAct has something)."""

    def unfix(self) -> None:
        """Unfreeze what `fix` froze."""


# --- activations ---------------------------------------------------------------------------

def _times_scale(q: Tensor, scale: Tensor) -> Tensor:
    return q * scale.view(-1)


class QuantAct(QuantModule):
    """Quantizes activations to ``activation_bit`` symmetric integers with a running range.

    Input quantization (no incoming scale) rounds ``x / scale``; requantization (incoming
    scale, optional residual ``identity``) goes through the dyadic requantizer
    (`qvit.ops.requant`). Statistics are collected in training mode unless frozen with
    `fix()` (`qvit.ops.act_range`).
    """

    PATH_FIELDS = ("act_quantize", "act_range", "act_scale_eval", "requant",
                   "requant_float", "multiplier", "frexp", "ste", "constants", "eps")

    def __init__(self, activation_bit: int = 8, act_range_momentum: float = 0.95):
        super().__init__()
        self.activation_bit = activation_bit
        self.act_range_momentum = act_range_momentum
        self.running_stat = True
        self.register_buffer("min_val", torch.zeros(1))
        self.register_buffer("max_val", torch.zeros(1))
        # The scale of the empty range [0, 0]: what both scale paths compute before any data.
        self.register_buffer("act_scaling_factor", torch.full((1,), quantize.EPS_F32))
        self._scale_key: tuple | None = None  # the range act_scaling_factor was derived from
        self.flags = self.flags

    def _bind(self, p: Paths) -> None:
        self._lean = p.act_quantize == "lean"  # (quantizer and requantizer alike)
        self._range_path = p.act_range
        self._eval_scale_cached = p.act_scale_eval == "cached"
        self._eps_constant = p.eps == "constant"
        fp64, frexp = p.requant_float == "float64", p.multiplier == "dyadic"
        self._quantize = partial(quantize.symmetric_quantize, is_weight=False, ste=p.ste,
                                 constants=p.constants)
        self._requantize = partial(requant.fixedpoint_mul, fp64=fp64, use_frexp=frexp,
                                   frexp="host" if p.frexp == "host" else "device",
                                   fused=p.requant == "fused", ste=p.ste)
        self._requantize_lean = partial(requant.requantize, fp64=fp64, use_frexp=frexp)

    def invalidate_cache(self) -> None:
        self._scale_key = None

    def extra_repr(self) -> str:
        return f"activation_bit={self.activation_bit}, momentum={self.act_range_momentum}"

    def fix(self) -> None:
        self.running_stat = False

    def unfix(self) -> None:
        self.running_stat = True

    def _observe(self, x_act: Tensor) -> None:
        lo, hi = act_range.observe(x_act, self.min_val, self.max_val, self.act_range_momentum,
                                   self._range_path)
        self._assign(min_val=lo, max_val=hi)

    def _update_scale(self) -> None:
        scale = quantize.symmetric_scale(self.activation_bit, self.min_val, self.max_val,
                                         eps_constant=self._eps_constant).reshape(1)
        # (traced: no key, the next eager call recomputes; see caches_enabled)
        self._assign(act_scaling_factor=scale,
                     _scale_key=(source_key(self.min_val, self.max_val, scale)
                                 if caches_enabled() else None))

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
                return quantize.quantize_act(x, scale, bits), scale
            return self._requantize_lean(x, pre_act_scaling_factor, scale, bits, identity,
                                         identity_scaling_factor), scale
        if pre_act_scaling_factor is None:
            return _times_scale(self._quantize(x, bits, scale), scale), scale
        return _times_scale(self._requantize(x, pre_act_scaling_factor, bits, scale, identity,
                                             identity_scaling_factor), scale), scale


# --- weights ----------------------------------------------------------------------------

class _QuantWeightMixin:
    """Weight quantization with the eval cache of seed change 10, done right: the cache is
    keyed on the weight tensor and its version counter (`source_key`), so it is refilled by
    the first eval forward after any weight change (the seed's reused the last training
    forward's weights, one step stale)."""

    weight_bit: int
    bias_bit: int | None
    PATH_FIELDS = ("weight_eval", "weight_range", "rescale", "ste", "constants", "eps")

    def _init_quant(self, weight_bit: int, bias_bit: int | None, out_channels: int):
        self.weight_bit = weight_bit
        self.bias_bit = bias_bit
        # Derived from the weights: kept for inspection/export, not saved.
        self.register_buffer("weight_scaling_factor", torch.zeros(out_channels),
                             persistent=False)
        self._weight_cache: tuple | None = None
        self.flags = self.flags

    def _bind(self, p: Paths) -> None:
        kw = dict(ste=p.ste, constants=p.constants)
        self._symmetric = partial(quantize.symmetric_quantize, is_weight=True, **kw)
        self._ternary = partial(quantize.ternary_quantize, **kw)
        self._eps_constant = p.eps == "constant"
        self._eval_cached = p.weight_eval == "cached"
        self._range_path = p.weight_range
        self._rescale = linear.RESCALE[p.rescale]

    def invalidate_cache(self) -> None:
        self._weight_cache = None

    def _weight_scale(self, w: Tensor) -> Tensor:
        lo, hi = linear.weight_range(w, self._range_path)
        return quantize.symmetric_scale(self.weight_bit, lo, hi,
                                        eps_constant=self._eps_constant)

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
        self._assign(weight_scaling_factor=scale,
                     _weight_cache=(source_key(w), w_int, scale) if cacheable else None)
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
        return abs_mean.clamp(min=quantize.float32_eps(self._eps_constant))

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

    PATH_FIELDS = ("rescale",)

    def __init__(self):
        super().__init__()
        self.flags = self.flags

    def _bind(self, p: Paths) -> None:
        self._rescale = linear.RESCALE[p.rescale]

    def forward(self, a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor
                ) -> tuple[Tensor, Tensor]:
        scale = a_scale * b_scale
        return self._rescale((a / a_scale) @ (b / b_scale), scale), scale


# --- integer nonlinearities ---------------------------------------------------------------

class IntLayerNorm(QuantModule, nn.LayerNorm):
    """I-LayerNorm (`qvit.ops.layernorm`): integer mean/variance, integer Newton sqrt,
    output scale sqrt(C)/2^30 x weight. The bias enters as integers of ``bias / weight``
    (no gradient, as in I-ViT, unless flag layernorm_bias_grad passes its STE's)."""

    PATH_FIELDS = ("layernorm", "newton", "layernorm_bias", "ste")

    def __init__(self, normalized_shape: int, eps: float = 1e-6, elementwise_affine=True):
        nn.LayerNorm.__init__(self, normalized_shape, eps, elementwise_affine)
        dim = self.normalized_shape[-1]
        self.register_buffer("dim_sqrt", torch.sqrt(torch.tensor(float(dim))), persistent=False)
        self.flags = self.flags

    def _bind(self, p: Paths) -> None:
        self._lean = p.layernorm == "lean"
        bias_grad = p.layernorm_bias == "straight_through"
        self._chain = partial(layernorm.layernorm_chain, newton=p.newton, ste=p.ste,
                              bias_grad=bias_grad)
        self._lean_node = partial(layernorm.layernorm_lean, newton=p.newton,
                                  bias_grad=bias_grad)

    def forward(self, x: Tensor, scaling_factor: Tensor) -> tuple[Tensor, Tensor]:
        args = (x, scaling_factor, self.weight, self.bias, self.dim_sqrt)
        if (self._lean and x.dtype == torch.float32 and self.weight is not None
                and not scaling_factor.requires_grad):
            return self._lean_node(*args)
        return self._chain(*args)


class _IntExpModule(QuantModule):
    """Shared by IntGELU and IntSoftmax: the shift-based integer exp with its x0 eval cache
    (seed change 12), keyed on the scale tensor it is derived from (the seed's was never
    refreshed). The path (`Paths.int_exp`) is one of the operation's table (``OP``); the
    chain takes over where the scale wants a gradient or the lean node's float32 is not
    given."""

    exp_bits: int  # the shift bound n of int_exp_shift
    OP: dict  # the operation's paths (qvit.ops.softmax.SOFTMAX, qvit.ops.gelu.GELU)
    PATH_FIELDS = ("int_exp", "exp_x0_eval", "constants", "ste")

    def __init__(self, output_bit: int):
        super().__init__()
        self.output_bit = output_bit
        self.register_buffer("out_unit", torch.tensor([1 / 2 ** (output_bit - 1)]),
                             persistent=False)
        self._x0_cache: tuple | None = None
        self.flags = self.flags

    def _bind(self, p: Paths) -> None:
        self._path = p.int_exp
        self._x0_cached = p.exp_x0_eval == "cached"
        self._constant_unit = p.constants == "buffer"
        self._node = partial(self.OP[p.int_exp], ste=p.ste)
        self._chain = partial(self.OP["chain"], ste=p.ste)

    def _op(self, x: Tensor, scaling_factor: Tensor):
        """The bound path, or the chain where only it applies to this call."""
        if scaling_factor.requires_grad or (self._path == "lean"
                                            and x.dtype != torch.float32):
            return self._chain
        return self._node

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
            return int_exp.exp_x0_int(scaling_factor)
        c = self._x0_cache
        if c is None or not key_matches(c[0], scaling_factor):
            c = (source_key(scaling_factor), int_exp.exp_x0_int(scaling_factor))
            self._assign(_x0_cache=c)
        return c[1]

    def _out_unit(self, like: Tensor) -> Tensor:
        if self._constant_unit:
            return self.out_unit
        return torch.Tensor([1 / 2 ** (self.output_bit - 1)]).to(like.device)


class IntGELU(_IntExpModule):
    """ShiftGELU (`qvit.ops.gelu`): x * sigmoid(1.702 x), the sigmoid from the shift-based
    integer exp."""

    exp_bits = 23
    OP = GELU

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
            return scaling_factor * SIGMOID_FACTOR
        c = self._sig_cache
        if c is None or not key_matches(c[0], scaling_factor):
            c = (source_key(scaling_factor), scaling_factor * SIGMOID_FACTOR)
            self._assign(_sig_cache=c)
        return c[1]

    def forward(self, x: Tensor, scaling_factor: Tensor) -> tuple[Tensor, Tensor]:
        x0 = self._x0(self._sig_scale(scaling_factor))
        out_scale = scaling_factor * self._out_unit(x)
        return self._op(x, scaling_factor)(x, scaling_factor, x0, self.exp_bits,
                                           self.output_bit, out_scale), out_scale


class IntSoftmax(_IntExpModule):
    """Shiftmax (`qvit.ops.softmax`): softmax over the last dim from the shift-based
    integer exp."""

    exp_bits = 15
    OP = SOFTMAX

    def __init__(self, output_bit: int = 8):
        super().__init__(output_bit)

    def forward(self, x: Tensor, scaling_factor: Tensor) -> tuple[Tensor, Tensor]:
        out_unit = self._out_unit(x)
        return self._op(x, scaling_factor)(x, scaling_factor, self._x0(scaling_factor),
                                           self.exp_bits, self.output_bit, out_unit), out_unit
