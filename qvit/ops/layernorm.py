"""I-LayerNorm: integer mean and variance, the integer Newton square root, and the output
(floor(y * floor(I / sqrt_int(var)) / 2) + bias_int) at scale sqrt(C) / 2^30 * weight, with
y = x/s - round(mean(x/s)); the bias enters as integers of bias / weight / scale with no
gradient (as in I-ViT), or with its floor's straight-through gradient (`Paths.layernorm_bias`
"straight_through", flag layernorm_bias_grad; the weight in it stays detached).

The Newton sqrt's gradient (`Paths.newton`, flag layernorm_newton):
``ste`` (I-ViT: ten floor-STE steps under autograd), ``no_grad`` (seed change 5: none,
the std term of the input gradient is dropped) or ``node`` (one autograd node whose
backward replays the STE chain's, bit for bit: `_NewtonSqrtNode`).

The LayerNorm (`Paths.layernorm`): ``chain`` (`layernorm_chain`, STE primitives around the
sqrt) or ``lean`` (`layernorm_lean`: one node, in place, backward the chain's formulas in
its order, the sqrt's gradient as the chain's or none).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from .int_exp import INT32_MAX
from .ste import FLOOR, ROUND

__all__ = ["NEWTON_MODES", "NEWTON_ITERATIONS", "NEWTON_START", "OUT_SCALE_BITS",
           "SQRT_MODES", "newton_sqrt_forward", "newton_sqrt_backward", "int_sqrt_newton",
           "layernorm_chain", "layernorm_node", "layernorm_lean"]

NEWTON_MODES = ("ste", "no_grad", "no_grad_sqrt_grad")
NEWTON_ITERATIONS = 10
NEWTON_START = 2**16
OUT_SCALE_BITS = 30  # the output scale sqrt(C) / 2^30


# --- the integer Newton square root -------------------------------------------------------

def newton_sqrt_forward(v: Tensor, iterations: int) -> tuple[Tensor, tuple]:
    """The integer Newton square root of ``v`` (no autograd) and what its backward needs:
    each step's k and v / k."""
    k = v.new_full(v.shape, NEWTON_START)
    ks, vks = [], []
    for _ in range(iterations):
        vk = v / k
        ks.append(k)
        vks.append(vk)
        # floor((k + floor(v / k)) / 2), in one new buffer: a sum commutes, / 2 == * 0.5
        k = torch.floor(vk).add_(k).mul_(0.5).floor_()
    return k, (*ks, *vks)


def newton_sqrt_backward(g: Tensor, saved: tuple) -> Tensor:
    """d loss / d v of the STE chain of the Newton steps, from g = d loss / d k, run in
    reverse mode with the chain's operations in its order: for each step i (last first),
    k_i = floor((k + floor(v / k)) / 2) hands g / 2 to its sum; v receives (g / 2) / k
    (accumulated last step first, as autograd's input buffer does) and k receives
    g / 2 - (g / 2) * ((v / k) / k) (torch's div backward for the divisor)."""
    n = len(saved) // 2
    ks, vks = saved[:n], saved[n:]
    acc = None
    for i in reversed(range(n)):
        gs = g * 0.5  # (== g / 2)
        c = gs / ks[i]
        acc = c if acc is None else acc.add_(c)
        if i:  # the first step divides by the constant 2^16: no gradient to it
            g = gs.sub_(torch.div(vks[i], ks[i]).mul_(gs))  # gs * (v/k / k): a product commutes
    return acc


class _NewtonSqrtNode(Function):
    """The integer Newton square root under no_grad, one autograd node whose backward is the
    STE chain's (`newton_sqrt_backward`). Bit-identical to mode ``ste``, without its 40
    autograd nodes."""

    @staticmethod
    def forward(ctx, v, iterations):
        k, saved = newton_sqrt_forward(v, iterations)
        ctx.save_for_backward(*saved)
        return k

    @staticmethod
    def backward(ctx, g):
        return newton_sqrt_backward(g, ctx.saved_tensors), None


def _newton_no_grad(v: Tensor, iterations: int) -> Tensor:
    k = v.new_full(v.shape, NEWTON_START)
    for _ in range(iterations):
        k = torch.floor((k + torch.floor(v / k)) / 2)
    return k


def int_sqrt_newton(var_int: Tensor, mode: str, *, ste: str = "inline",
                    iterations: int = NEWTON_ITERATIONS) -> Tensor:
    """Integer square root by ``iterations`` Newton steps from 2^16 (I-LayerNorm):
    k <- floor((k + floor(var / k)) / 2).

    ``ste``: under autograd with floor STE (the gradient through every step);
    ``no_grad``: no gradient through the std at all (seed change 5);
    ``no_grad_sqrt_grad``: the same forward under no_grad in one autograd node whose
    backward is the ``ste`` chain's, bit for bit (`_NewtonSqrtNode`). Where ten steps from
    2^16 have converged that gradient is 1/(2 sqrt(var)); where they have not (small
    variances), it follows the iteration, as the legacy one does.
    """
    if mode == "ste":
        floor = FLOOR[ste]
        k = NEWTON_START
        for _ in range(iterations):
            k = floor((k + floor(var_int / k)) / 2)
        return k
    if mode not in NEWTON_MODES:
        raise ValueError(f"layernorm_newton must be one of {NEWTON_MODES}, got {mode!r}")
    if mode == "no_grad_sqrt_grad" and torch.is_grad_enabled() and var_int.requires_grad:
        return _NewtonSqrtNode.apply(var_int, iterations)
    with torch.no_grad():
        return _newton_no_grad(var_int.detach(), iterations)


# --- I-LayerNorm --------------------------------------------------------------------------

# `Paths.newton` of the chain -> int_sqrt_newton's mode (flag layernorm_newton's values)
# Paths.newton -> the Newton sqrt's mode; "in_layernorm" (the lean node's own gradient,
# the chain's) falls back to the node with that gradient where the chain runs instead
SQRT_MODES = {"ste": "ste", "no_grad": "no_grad", "node": "no_grad_sqrt_grad",
              "in_layernorm": "no_grad_sqrt_grad"}


def layernorm_chain(x: Tensor, scale: Tensor, weight: Tensor, bias: Tensor,
                    dim_sqrt: Tensor, newton: str, ste: str = "inline", bias_grad: bool = False
                    ) -> tuple[Tensor, Tensor]:
    """The chain: values and output scale; gradients by autograd (none to the bias unless
    ``bias_grad``). ``newton``: the sqrt's gradient, "ste", "no_grad" or "node"
    (`Paths.newton`)."""
    rnd, floor = ROUND[ste], FLOOR[ste]
    x_int = x / scale
    mean_int = rnd(x_int.mean(dim=-1, keepdim=True))
    y_int = x_int - mean_int
    var_int = torch.sum(y_int**2, dim=-1, keepdim=True)
    std_int = int_sqrt_newton(var_int, SQRT_MODES[newton], ste=ste)
    factor = floor(INT32_MAX / std_int)
    y_int = floor(y_int * factor / 2)
    out_scale = dim_sqrt / 2**OUT_SCALE_BITS
    bias_int = floor((bias if bias_grad else bias.detach()) / weight.detach() / out_scale)
    out_scale = out_scale * weight
    return (y_int + bias_int) * out_scale, out_scale


class _IntLayerNormLean(Function):
    """The chain's forward and its backward to x and the weight, each node's formula as
    torch writes it (mean: g / C; pow: g * (2 y); reciprocal: -g * (r * r); mul: g *
    other, summed to the operand's shape by sum_to_size, autograd's own reduction); the two
    tensors that take two gradients (y and x/s) sum them in either order (a two-term sum
    commutes). ``sqrt_grad`` False: the sqrt passes none (mode no_grad)."""

    @staticmethod
    def forward(ctx, x, scale, weight, bias_int, s0, iterations, sqrt_grad):
        # (bias_int's gradient, where it needs one, is the chain's: g * out_scale, summed)
        y = torch.div(x, scale)
        mean = y.mean(dim=-1, keepdim=True).round_()
        y.sub_(mean)
        t = torch.mul(y, y)
        var = t.sum(dim=-1, keepdim=True)
        std, newton = newton_sqrt_forward(var, iterations)
        recip = std.reciprocal()
        factor = torch.floor(recip * INT32_MAX)
        # (traced: a new buffer, of t's layout; dynamo refuses out= where that is not
        # contiguous, as on Swin's channel-strided tokens)
        s = torch.mul(y, factor, out=None if torch.compiler.is_compiling() else t)
        s.mul_(0.5).floor_().add_(bias_int)
        out_scale = s0 * weight
        ctx.sqrt_grad = sqrt_grad
        ctx.bias_shape = bias_int.shape
        ctx.save_for_backward(y, s, factor, recip, out_scale, scale, s0,
                              *(newton if sqrt_grad else ()))
        return torch.mul(s, out_scale)

    @staticmethod
    def backward(ctx, g_out):
        y, s, factor, recip, out_scale, scale, s0, *newton = ctx.saved_tensors
        g_weight = None
        if ctx.needs_input_grad[2]:
            g_weight = torch.mul(g_out, s).sum_to_size(out_scale.shape).mul_(s0)
        g = torch.mul(g_out, out_scale)
        g_bias = g.sum_to_size(ctx.bias_shape) if ctx.needs_input_grad[3] else None
        g.mul_(0.5)  # into s, through the floor, / 2
        if ctx.sqrt_grad:
            g_factor = torch.mul(g, y).sum_to_size(factor.shape)
            g_std = g_factor.mul_(INT32_MAX).neg_().mul_(recip * recip)
            g_var = newton_sqrt_backward(g_std, tuple(newton))
            g.mul_(factor).add_(torch.mul(y, g_var).mul_(2))  # y's two gradients
        else:
            g.mul_(factor)
        g.add_(g.sum_to_size(factor.shape).neg_().div_(y.shape[-1]))  # mean's, then x/s's
        return g.div_(scale), None, g_weight, g_bias, None, None, None


def layernorm_node(x: Tensor, scale: Tensor, weight: Tensor, bias_int: Tensor, s0: Tensor,
                   iterations: int = NEWTON_ITERATIONS, sqrt_grad: bool = True) -> Tensor:
    """The lean node itself: the output values at scale ``s0 * weight`` from the integer
    bias ``bias_int``."""
    return _IntLayerNormLean.apply(x, scale, weight, bias_int, s0, iterations, sqrt_grad)


def layernorm_lean(x: Tensor, scale: Tensor, weight: Tensor, bias: Tensor, dim_sqrt: Tensor,
                   newton: str, ste: str = "inline", bias_grad: bool = False
                   ) -> tuple[Tensor, Tensor]:
    """The lean node: the chain's values and output scale, gradients to ``x`` and
    ``weight`` (and with ``bias_grad`` to ``bias``) as the chain's; ``newton`` "no_grad"
    passes none through the sqrt, any other the chain's (ste and node are bit-identical)."""
    out_scale = dim_sqrt / 2**OUT_SCALE_BITS
    if bias_grad:  # the floor's STE outside the node, as the chain's
        bias_int = FLOOR["inline"](bias / weight.detach() / out_scale)
    else:
        with torch.no_grad():
            bias_int = torch.floor(bias / weight / out_scale)
    y = layernorm_node(x, scale, weight, bias_int, out_scale, sqrt_grad=newton != "no_grad")
    return y, out_scale * weight
