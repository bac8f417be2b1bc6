"""The deployed model's leaf layers: integer tensors in, integer tensors out.

Each holds what its QAT module computes from its weights and scales, as integers: int8
weights, int32 biases, dyadic multipliers (m, e) and the integer constants of the
nonlinearities. Only `InputQuant` takes a float (the image) and only the model's last
multiply (logits = accumulator x scale) makes one. Names follow the QAT modules', so a
deployed model's state dict, intermediates and hooks line up with the trained model's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import arith
from .intmm import exact_matmul, linear_int8

__all__ = ["REQUANT_ARITHS", "FLOAT64_REQUANT_FAST", "check_requant", "resolve_requant",
           "InputQuant", "Requant", "IntLinear", "IntPatchConv", "IntMatMul",
           "IntLayerNorm", "IntSoftmax", "IntGELU"]


# The requantizers' arithmetic: "auto" (float64 where it is the faster one:
# `FLOAT64_REQUANT_FAST`), "int64" or "float64"; the same integers either way
REQUANT_ARITHS = ("auto", "int64", "float64")
# read once, at import (dynamo does not trace the probe): CPU vectors without AVX-512 have
# no int64 multiply, arithmetic shift or conversion to float; elsewhere (AVX-512, CUDA)
# int64 stays, unmeasured. Under float64 the layers feeding requantizers (the GEMMs where a
# float GEMM computed them, I-LayerNorm) hand on float64 too: on AVX2 the int32/int64 ->
# float64 conversions took most of a requantizer's time
FLOAT64_REQUANT_FAST = torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2")


def check_requant(choice: str) -> None:
    """Refuses (one line) a ``choice`` that is not one of `REQUANT_ARITHS`."""
    if choice not in REQUANT_ARITHS:
        raise ValueError(f"requant must be one of {', '.join(REQUANT_ARITHS)}, got {choice!r}")


def resolve_requant(choice: str, device: torch.device) -> str:
    """"int64" or "float64": what ``choice`` runs on ``device`` (int64 under ONNX export:
    the exported graph stays integer)."""
    if torch.onnx.is_in_onnx_export():
        return "int64"
    if choice == "auto":
        return "float64" if device.type == "cpu" and FLOAT64_REQUANT_FAST else "int64"
    return choice


def _zeros(*shape: int, dtype=torch.int64) -> Tensor:
    return torch.zeros(shape, dtype=dtype)


class InputQuant(nn.Module):
    """The input quantizer: clamp(round(fl32(1 / scale) * x)) to int8, from a float image
    (QuantAct's input quantization, as the QAT model computes it)."""

    def __init__(self, bits: int = 8):
        super().__init__()
        self.bits = bits
        self.register_buffer("scale", torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        n = 2 ** (self.bits - 1)
        return torch.mul(1.0 / self.scale, x).round_().clamp_(-n, n - 1).to(torch.int8)


class Requant(nn.Module):
    """The dyadic requantizer of a QuantAct: clamp(rq(z) [+ rq_id(identity)] [+ offset])
    to ``bits`` integers, rq(z) = round_half_even(z * m / 2^e), (m, e) per channel (last
    dim) or per tensor; ``offset`` is a constant already requantized (a position
    embedding, a relative position bias). ``requant``: one of `REQUANT_ARITHS` (the
    model's; the same integers either way): rq in int64 (`arith.requantize`) or in
    float64 (`arith.requantize_float64`, from constants derived from (m, e), kept out of
    the state dict and rebuilt when it is loaded; an (m, e) it cannot hold exactly stays
    in int64)."""

    def __init__(self, bits: int, channels: int = 1, identity_channels: int = 0):
        super().__init__()
        self.bits = bits
        self.requant = "auto"
        self.has_identity = identity_channels > 0
        for name, c in (("", channels), ("_id", identity_channels)):
            if c:
                self.register_buffer(f"m{name}", _zeros(c))
                self.register_buffer(f"e{name}", _zeros(c))
                self.register_buffer(f"half_m1{name}", _zeros(c))
                self.register_buffer(f"mh{name}", None, persistent=False)
                self.register_buffer(f"ml{name}", None, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, keys: module._split())

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, channels={self.m.numel()}, identity={self.has_identity}, "
                f"requant={self.requant}, float64_exact={self.mh is not None}")

    def set_multiplier(self, m: Tensor, e: Tensor, identity: bool = False) -> None:
        sfx = "_id" if identity else ""
        getattr(self, f"m{sfx}").copy_(m)
        getattr(self, f"e{sfx}").copy_(e)
        getattr(self, f"half_m1{sfx}").copy_((1 << (e - 1)) - 1)
        self._split()

    def _split(self) -> None:
        """The float64 constants of each (m, e) that `arith.requantize_float64` holds
        exactly (None where it does not)."""
        for sfx in ("", "_id") if self.has_identity else ("",):
            m, e = getattr(self, f"m{sfx}"), getattr(self, f"e{sfx}")
            exact = arith.float64_requant_exact(m, e)
            mh, ml = arith.split_multiplier(m, e) if exact else (None, None)
            setattr(self, f"mh{sfx}", mh)
            setattr(self, f"ml{sfx}", ml)

    def _rescale(self, z: Tensor, sfx: str) -> Tensor:
        mh = getattr(self, f"mh{sfx}")
        if mh is not None and resolve_requant(self.requant, z.device) == "float64":
            return arith.requantize_float64(z, mh, getattr(self, f"ml{sfx}"))
        return arith.requantize(z, getattr(self, f"m{sfx}"), getattr(self, f"e{sfx}"),
                                getattr(self, f"half_m1{sfx}"))

    def forward(self, z: Tensor, identity: Tensor | None = None,
                offset: Tensor | None = None) -> Tensor:
        t = self._rescale(z, "")
        if identity is not None:
            t = t + self._rescale(identity, "_id")
        if offset is not None:
            t = t + offset
        return arith.clamp_bits(t, self.bits)


class IntLinear(nn.Module):
    """x int8 @ weight int8 (out, in)^T + bias int32: the accumulator, int64, or float64
    holding the same integer where the GEMM is a float32 one and ``requant`` (the model's)
    resolves to float64. ``gemm``: one of `intmm.INT_GEMMS` (the model's ``int_gemm``;
    the same integers either way)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.gemm, self.requant = "auto", "auto"
        self.register_buffer("weight", _zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("bias", _zeros(out_features, dtype=torch.int32) if bias else None)

    def extra_repr(self) -> str:
        return (f"{self.in_features} -> {self.out_features}, bias={self.bias is not None}, "
                f"gemm={self.gemm}")

    def forward(self, x: Tensor) -> Tensor:
        float64 = resolve_requant(self.requant, x.device) == "float64"
        acc = linear_int8(x, self.weight, self.gemm, float64)
        acc = acc if acc.is_floating_point() else acc.to(torch.int64)
        return acc if self.bias is None else acc + self.bias


class IntPatchConv(IntLinear):
    """The patch embedding's stride = kernel convolution as one GEMM over patches: (B, C,
    H, W) int8 -> (B, H/p * W/p, out) int64, tokens in row-major patch order (the QAT
    model's flatten(2).transpose(1, 2)); weight (out, C * p * p) in Conv2d's order."""

    def __init__(self, in_chans: int, out_features: int, patch_size: int):
        super().__init__(in_chans * patch_size**2, out_features)
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        p = self.patch_size
        patches = x.view(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        return super().forward(patches.reshape(B, (H // p) * (W // p), C * p * p))


class IntMatMul(nn.Module):
    """a @ b of integer activations (attention), exact (`exact_matmul`), for |a| <=
    ``a_max`` and |b| <= ``b_max`` (from the operands' bit widths); int64, or float64 as
    `IntLinear`'s accumulator."""

    def __init__(self, a_max: int, b_max: int):
        super().__init__()
        self.a_max, self.b_max = a_max, b_max
        self.requant = "auto"

    def extra_repr(self) -> str:
        return f"a_max={self.a_max}, b_max={self.b_max}"

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return exact_matmul(a, b, self.a_max, self.b_max,
                            resolve_requant(self.requant, a.device) == "float64")


class IntLayerNorm(nn.Module):
    """I-LayerNorm (`arith.int_layernorm`) with the integer bias floor(bias / weight /
    (sqrt(C) / 2^30)); the output scale (per channel) lives in the next requantizer. Its
    output int64, or the same integers in float64 for an int8/int16 input where
    ``requant`` (the model's) resolves to float64."""

    def __init__(self, dim: int):
        super().__init__()
        self.requant = "auto"
        self.register_buffer("bias_int", _zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        float64 = (x.dtype in (torch.int8, torch.int16)
                   and resolve_requant(self.requant, x.device) == "float64")
        return arith.int_layernorm(x, self.bias_int,
                                   torch.float64 if float64 else torch.int64)


class IntSoftmax(nn.Module):
    """Shiftmax (`arith.shiftmax`) with x0 = floor(-1 / scale) of its input's scale; by
    its exp table (`arith.shiftmax_by_table`) where `build_tables` made one."""

    def __init__(self, output_bit: int, exp_bits: int = 15):
        super().__init__()
        self.output_bit, self.exp_bits = output_bit, exp_bits
        self.register_buffer("x0", torch.full((), -1, dtype=torch.int64))
        self.register_buffer("exp_lut", None, persistent=False)  # derived from x0

    def extra_repr(self) -> str:
        return f"output_bit={self.output_bit}, table={self.exp_lut is not None}"

    def build_tables(self, on: bool) -> None:
        self.exp_lut = arith.exp_table(self.x0, self.exp_bits) if on else None

    def forward(self, x: Tensor) -> Tensor:
        if self.exp_lut is not None:
            return arith.shiftmax_by_table(x, self.exp_lut, self.output_bit)
        return arith.shiftmax(x, self.x0, self.exp_bits, self.output_bit)


class IntGELU(nn.Module):
    """ShiftGELU (`arith.shift_gelu`) with x0 = floor(-1 / (1.702 scale))."""

    def __init__(self, output_bit: int = 8, exp_bits: int = 23):
        super().__init__()
        self.output_bit, self.exp_bits = output_bit, exp_bits
        self.register_buffer("x0", torch.full((), -1, dtype=torch.int64))

    def forward(self, x: Tensor) -> Tensor:
        return arith.shift_gelu(x, self.x0, self.exp_bits, self.output_bit)
