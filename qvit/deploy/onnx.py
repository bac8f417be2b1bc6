"""ONNX export of the deployed model's building block with integer operators: an int8
GEMM by ``MatMulInteger`` (int32 accumulation), the int32 bias, and the dyadic
requantizer in int64 arithmetic, run by ONNX Runtime (optional: ``pip install
qvit[onnx]``).

ONNX has no arithmetic shift for signed integers (``BitShift`` is unsigned only) and its
integer ``Div`` truncates toward zero, so floor(t / 2^e) is written exactly as
(t - Mod(t, 2^e)) / 2^e, ``Mod`` with fmod=0 taking the divisor's sign (a multiple of 2^e
divided by 2^e: no rounding). The whole models are not exported yet (see docs/deploy.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .layers import IntLinear, Requant

__all__ = ["linear_requant_graph", "save_linear_requant"]

_OUT = {8: 3, 16: 5}  # onnx.TensorProto INT8, INT16


def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export needs the onnx package: pip install qvit[onnx]") from e
    return onnx, TensorProto, helper, numpy_helper


def linear_requant_graph(linear: IntLinear, requant: Requant, opset: int = 17):
    """The ONNX model of ``requant(linear(x))`` for x int8 (M, K): int8 (or int16) out."""
    onnx, TP, helper, nph = _onnx()
    w = linear.weight.cpu().numpy().T.copy()  # (K, N) int8
    m = requant.m.cpu().numpy().astype(np.int64)
    e = requant.e.cpu().numpy().astype(np.int64)
    n = 2 ** (requant.bits - 1)
    inits = [nph.from_array(w, "W"), nph.from_array(np.zeros((), np.int8), "zp"),
             nph.from_array(m, "m"), nph.from_array(np.left_shift(np.int64(1), e), "D"),
             nph.from_array((np.left_shift(np.int64(1), e - 1) - 1), "half_m1"),
             nph.from_array(np.array(2, np.int64), "two"),
             nph.from_array(np.array(-n, np.int64), "lo"),
             nph.from_array(np.array(n - 1, np.int64), "hi")]
    nodes = [helper.make_node("MatMulInteger", ["x", "W", "zp", "zp"], ["acc32"]),
             helper.make_node("Cast", ["acc32"], ["acc"], to=TP.INT64)]
    z = "acc"
    if linear.bias is not None:
        inits.append(nph.from_array(linear.bias.cpu().numpy().astype(np.int64), "b"))
        nodes.append(helper.make_node("Add", ["acc", "b"], ["z"]))
        z = "z"

    def floor_div(t: str, out: str) -> list:  # floor(t / D), exactly
        return [helper.make_node("Mod", [t, "D"], [out + "_r"], fmod=0),
                helper.make_node("Sub", [t, out + "_r"], [out + "_m"]),
                helper.make_node("Div", [out + "_m", "D"], [out])]

    nodes += [helper.make_node("Mul", [z, "m"], ["prod"]), *floor_div("prod", "fl"),
              helper.make_node("Mod", ["fl", "two"], ["parity"], fmod=0),
              helper.make_node("Add", ["prod", "half_m1"], ["t0"]),
              helper.make_node("Add", ["t0", "parity"], ["t1"]), *floor_div("t1", "rq"),
              helper.make_node("Clip", ["rq", "lo", "hi"], ["clipped"]),
              helper.make_node("Cast", ["clipped"], ["y"], to=_OUT[requant.bits])]
    graph = helper.make_graph(
        nodes, "qvit_linear_requant",
        [helper.make_tensor_value_info("x", TP.INT8, ["M", linear.in_features])],
        [helper.make_tensor_value_info("y", _OUT[requant.bits], ["M", linear.out_features])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def save_linear_requant(linear: IntLinear, requant: Requant, path: str | Path) -> Path:
    onnx = _onnx()[0]
    path = Path(path)
    onnx.save(linear_requant_graph(linear, requant), str(path))
    return path
