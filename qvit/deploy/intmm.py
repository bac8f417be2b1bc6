"""Integer GEMMs: int8 x int8 -> int32 by ``torch._int_mm`` where its shape rules allow,
padded where needed, and an exact fallback elsewhere.

``torch._int_mm`` (oneDNN on CPU, cuBLAS on CUDA) takes 2-D int8 operands; on CPU any
shape, on CUDA M > 16 and K, N multiples of 8 (`pad_shapes` zero-pads: zero rows and
columns add nothing to the sums). Products it cannot take (batched attention products,
I-ViT DeiT's 16-bit softmax output times V) go to `exact_matmul`: a float GEMM of the
integers, float32 where every partial sum is below 2^24 in magnitude (every float sum of
integers then is the integer sum, in any order); where it is not, but would be with ``a``
cut into its high and low bytes, two float32 GEMMs (the 16-bit softmax output: 1.4-1.9x
faster than one float64 GEMM here); float64 below 2^53; int64 beyond. The operands' ranges
are the caller's (max|a|, max|b|, known from the bit widths). Under ONNX export the
product is an integer MatMul (int32 where the bound allows).

Which GEMM runs the int8 linear layers is a speed choice, never a numerical one (both are
exact): ``torch._int_mm`` is fast on the CPU only where oneDNN has int8 dot products
(AVX512-VNNI, AMX). On an AVX2 EPYC (family 25 model 1, torch 2.14.1, two threads) it ran
25-50x slower than the float32 GEMM of the same integers (DeiT-tiny's qkv, M = 1576, K =
192, N = 576: 90 ms against 2.4 ms), so ``"auto"`` takes the float32 GEMM there, in K
chunks short enough to be exact (`float_gemm_exact`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["INT_GEMMS", "CPU_INT8_DOT_PRODUCTS", "int8_gemm_fast", "check_int_gemm",
           "resolve_int_gemm", "int_mm_supported", "pad_shapes", "int_mm", "float_gemm_exact",
           "FLOAT32_EXACT", "exact_dtype", "byte_split_exact", "exact_matmul", "linear_int8"]

FLOAT32_EXACT = 2**24  # integers below it, and sums of them below it, are exact in float32

# The GEMM of the int8 linear layers: "auto" (int8 where it is fast: `int8_gemm_fast`),
# "int8" (``torch._int_mm``) or "float32" (`float_gemm_exact`). Same integers either way.
INT_GEMMS = ("auto", "int8", "float32")


def _cpu_has_int8_dot_products() -> bool:
    return any(getattr(torch.cpu, probe, lambda: False)()
               for probe in ("_is_vnni_supported", "_is_amx_tile_supported"))


# read once, at import: dynamo does not trace torch.cpu's probes (a graph break at every
# linear layer of a compiled model that asked at each call)
CPU_INT8_DOT_PRODUCTS = _cpu_has_int8_dot_products()


def int8_gemm_fast(device: torch.device) -> bool:
    """Whether ``torch._int_mm`` is the fast GEMM on ``device``: on CUDA, and on a CPU with
    int8 dot products (AVX512-VNNI or AMX, as torch reports them:
    `CPU_INT8_DOT_PRODUCTS`)."""
    return device.type != "cpu" or CPU_INT8_DOT_PRODUCTS


def check_int_gemm(choice: str) -> None:
    """Refuses (one line) a ``choice`` that is not one of `INT_GEMMS`."""
    if choice not in INT_GEMMS:
        raise ValueError(f"int_gemm must be one of {', '.join(INT_GEMMS)}, got {choice!r}")


def resolve_int_gemm(choice: str, device: torch.device) -> str:
    """"int8" or "float32": what ``choice`` (one of `INT_GEMMS`) runs on ``device``."""
    check_int_gemm(choice)
    if choice == "auto":
        return "int8" if int8_gemm_fast(device) else "float32"
    return choice


def int_mm_supported(a: Tensor, b: Tensor) -> bool:
    """Whether ``torch._int_mm(a, b)`` takes these operands as they are."""
    if a.dtype != torch.int8 or b.dtype != torch.int8 or a.dim() != 2 or b.dim() != 2:
        return False
    if a.device.type == "cpu":
        return True
    m, k = a.shape
    n = b.shape[1]
    return m > 16 and k % 8 == 0 and n % 8 == 0 and k >= 16 and n >= 8


def pad_shapes(m: int, k: int, n: int) -> tuple[int, int, int]:
    """The padded (M, K, N) that cuBLAS's int8 GEMM takes: M >= 17, K >= 16 and N >= 8,
    K and N multiples of 8."""
    return max(m, 17), max(-(-k // 8) * 8, 16), max(-(-n // 8) * 8, 8)


def int_mm(a: Tensor, b: Tensor, gemm: str = "int8", float64: bool = False) -> Tensor:
    """a (M, K) int8 @ b (K, N) int8 -> (M, N) int32, exactly, by ``gemm`` ("int8" or
    "float32"; under ONNX export always the integer MatMul); the float32 GEMM's sums as
    float64 (the same integers) with ``float64``."""
    if gemm == "float32" and not torch.onnx.is_in_onnx_export():
        return float_gemm_exact(a, b, 128, 128, torch.float64 if float64 else torch.int32)
    if int_mm_supported(a, b):
        return torch._int_mm(a, b)
    if a.dtype == torch.int8 and b.dtype == torch.int8 and a.dim() == 2 and b.dim() == 2 \
            and a.device.type == "cuda":
        m, k = a.shape
        n = b.shape[1]
        pm, pk, pn = pad_shapes(m, k, n)
        ap = F.pad(a, (0, pk - k, 0, pm - m))
        bp = F.pad(b, (0, pn - n, 0, pk - k))
        return torch._int_mm(ap, bp.t().contiguous().t())[:m, :n]
    return exact_matmul(a, b, 128, 128).to(torch.int32)


def float_gemm_exact(a: Tensor, b: Tensor, a_max: int, b_max: int,
                     dtype: torch.dtype = torch.int32) -> Tensor:
    """a (M, K) @ b (K, N) of integers with |a| <= ``a_max``, |b| <= ``b_max`` -> ``dtype``
    (int32, or float64 holding the same integers), as float32 GEMMs over K chunks whose
    sums stay below 2^24 (exact), added in ``dtype`` (int8 operands: K <= 1023 in one GEMM;
    DeiT-tiny's fc2, K = 3072, in four of 768)."""
    k = a.shape[1]
    longest = max(1, (FLOAT32_EXACT - 1) // (a_max * b_max))
    chunks = -(-k // longest)
    chunk = -(-k // chunks)
    out = None
    for i in range(0, k, chunk):
        part = torch.mm(a[:, i:i + chunk].to(torch.float32),
                        b[i:i + chunk].to(torch.float32)).to(dtype)
        out = part if out is None else out + part
    return out


def exact_dtype(bound: int) -> torch.dtype:
    """The float type whose GEMM sums integers bounded by ``bound`` exactly (int64 if none)."""
    if bound < FLOAT32_EXACT:
        return torch.float32
    if bound < 2**53:
        return torch.float64
    return torch.int64


def byte_split_exact(k: int, a_max: int, b_max: int) -> bool:
    """Whether ``a = 256 hi + lo`` (lo = a & 255 in [0, 255], hi = a >> 8) makes both
    products ``hi @ b`` and ``lo @ b`` (K = ``k``) exact in float32."""
    return k * max(255, (a_max >> 8) + 1) * b_max < FLOAT32_EXACT


def exact_matmul(a: Tensor, b: Tensor, a_max: int, b_max: int,
                 float64: bool = False) -> Tensor:
    """``a @ b`` of integer tensors (batched as torch.matmul) with |a| <= ``a_max`` and |b| <=
    ``b_max``, exactly (every |partial sum| is at most K a_max b_max); int64 result, or with
    ``float64`` the same integers as float64 where a float GEMM computed them."""
    k = a.shape[-1]
    bound = k * a_max * b_max
    if torch.onnx.is_in_onnx_export():  # an integer MatMul in the graph (`qvit.deploy.onnx`)
        dtype = torch.int32 if bound < 2**31 else torch.int64
        return torch.matmul(a.to(dtype), b.to(dtype)).to(torch.int64)
    dtype = exact_dtype(bound)
    out = torch.float64 if float64 else torch.int64
    if dtype != torch.float32 and byte_split_exact(k, a_max, b_max):
        a = a.to(torch.int32)
        bf = b.to(torch.float32)
        hi = torch.matmul((a >> 8).to(torch.float32), bf).to(out)
        return hi * 256 + torch.matmul((a & 255).to(torch.float32), bf).to(out)
    if dtype == torch.int64:
        return torch.matmul(a.to(dtype), b.to(dtype))
    return torch.matmul(a.to(dtype), b.to(dtype)).to(out)


def linear_int8(x: Tensor, weight: Tensor, gemm: str = "auto", float64: bool = False
                ) -> Tensor:
    """x (..., K) int8 times weight (N, K) int8, transposed -> (..., N) int32, by ``gemm``
    (one of `INT_GEMMS`); float64 (the same integers) with ``float64`` where the GEMM is
    a float32 one."""
    lead = x.shape[:-1]
    out = int_mm(x.reshape(-1, x.shape[-1]), weight.t(), resolve_int_gemm(gemm, x.device),
                 float64)
    return out.view(*lead, weight.shape[0])
