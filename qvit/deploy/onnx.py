"""ONNX export of the whole deployed model with integer operators, run by ONNX Runtime
(optional: ``pip install qvit[onnx]``: onnx, onnxscript, onnxruntime).

`to_onnx(deployed)` is ``torch.onnx.export`` (the dynamo exporter, opset 18) of the
deployed ``nn.Module`` itself, so the graph is the PyTorch deployment's arithmetic, op for
op: the int8 GEMMs (``torch._int_mm``) become ``MatMulInteger`` (int32 accumulation), the
attention products integer ``MatMul`` (int32 where the bound of their sums allows, int64
otherwise: `qvit.deploy.intmm.exact_matmul` under export), and every requantizer, Shiftmax,
ShiftGELU, I-LayerNorm (its Newton square root unrolled), window shift, mask and relative
position bias int32/int64 arithmetic. Float only at the input quantizer and the logits.

Three integer operations have no exact ONNX counterpart in the exporter's own library, so
this module translates them (`TRANSLATIONS`): ``torch._int_mm`` (none), signed ``>>`` and
``<<`` (ONNX ``BitShift`` is unsigned only) and integer floor division, which the
exporter's library computes through float32 (inexact beyond 2^24: floor(2^31 / sum)
would move). ONNX's integer ``Div`` truncates toward zero; floor(a / b) is that quotient
minus one where the remainder is nonzero and the signs differ; x >> e is floor(x / 2^e);
x << e is the unsigned shift of x's two's complement bits (what torch computes).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .model import DeployedModel

__all__ = ["OPSET", "TRANSLATIONS", "to_onnx", "save_onnx", "ort_session", "run_onnx"]

OPSET = 18
TRANSLATIONS = ("aten._int_mm -> MatMulInteger", "aten.__rshift__ / bitwise_right_shift",
                "aten.__lshift__ / bitwise_left_shift", "aten.div(rounding_mode='floor')")


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"ONNX export needs {module.split('.')[0]}: pip install "
                          "qvit[onnx] (onnx, onnxscript, onnxruntime)") from None


def _translation_table() -> dict:
    """{aten op: onnxscript function}: the exact integer translations (module docstring)."""
    onnxscript = _need("onnxscript")
    ir, op = onnxscript.ir, getattr(onnxscript, f"opset{OPSET}")
    U64 = ir.DataType.UINT64

    def as_value(v, dtype):
        if isinstance(v, (int, float)):
            return op.Constant(value=ir.tensor(v, dtype=dtype))
        return v if v.dtype == dtype else op.Cast(v, to=dtype)

    def floor_div(a, b):  # either may be a Python integer (torch.div(2**31, t))
        dtype = (b if isinstance(a, (int, float)) else a).dtype
        a, b = as_value(a, dtype), as_value(b, dtype)
        q = op.Div(a, b)  # truncated toward zero
        zero = as_value(0, dtype)
        inexact = op.Not(op.Equal(op.Sub(a, op.Mul(q, b)), zero))
        signs_differ = op.Xor(op.Less(a, zero), op.Less(b, zero))
        return op.Sub(q, op.Cast(op.And(inexact, signs_differ), to=dtype))

    def div_mode(a, b, rounding_mode=None):
        dtype = (b if isinstance(a, (int, float)) else a).dtype
        if rounding_mode != "floor" or not dtype.is_integer():
            raise NotImplementedError(f"qvit.deploy.onnx: div with rounding_mode="
                                      f"{rounding_mode!r} on {dtype} is not deployed")
        return floor_div(a, b)

    def unsigned_shift_left(a, e):  # on the two's complement bits, as torch's shift
        return op.BitShift(a, as_value(e, U64), direction="LEFT")

    def lshift(a, e):
        return op.Cast(unsigned_shift_left(op.Cast(a, to=U64), e), to=a.dtype)

    def rshift(a, e):  # floor(a / 2^e)
        return floor_div(a, op.Cast(unsigned_shift_left(as_value(1, U64), e), to=a.dtype))

    def int_mm(a, b):
        return op.MatMulInteger(a, b)

    A = torch.ops.aten
    return {A._int_mm.default: int_mm, A.div.Tensor_mode: div_mode,
            A.div.Scalar_mode: div_mode, A.__rshift__.Tensor: rshift,
            A.__rshift__.Scalar: rshift, A.bitwise_right_shift.Tensor: rshift,
            A.bitwise_right_shift.Tensor_Scalar: rshift, A.__lshift__.Tensor: lshift,
            A.__lshift__.Scalar: lshift, A.bitwise_left_shift.Tensor: lshift,
            A.bitwise_left_shift.Tensor_Scalar: lshift}


def _one_line(exc: BaseException, what: str) -> str:
    text = str(exc)
    missing = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if missing:
        return (f"{what}: no exact ONNX translation for {missing.group(1)} (qvit.deploy.onnx "
                f"translates {', '.join(TRANSLATIONS)}; add it to _translation_table)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    cause = next((ln for ln in lines if ln.startswith("<class ")), None)  # its summary
    return f"{what}: {cause or (lines[0] if lines else type(exc).__name__)}"


def to_onnx(deployed: DeployedModel, example: Tensor | None = None, *,
            dynamic_batch: bool = True):
    """The ONNX model (``onnx.ModelProto``) of a deployed model: float32 images (B, C, H,
    W) in, float32 logits out, integer operators in between (module docstring).
    ``example``: an input to trace with (default: two zero images of the model's size);
    ``dynamic_batch``: the batch dimension symbolic. Refuses (one line) what does not
    export: a model that is not a `DeployedModel`, an op without an exact translation."""
    if not isinstance(deployed, DeployedModel):
        raise ValueError(f"to_onnx takes a deployed model (qvit.deploy.deploy(model)), got "
                         f"{type(deployed).__name__}")
    _need("onnx")
    table = _translation_table()
    cfg = deployed.config
    if example is None:
        example = torch.zeros(2, cfg["in_chans"], cfg["img_size"], cfg["img_size"],
                              device=next(deployed.buffers()).device)
    dynamic = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    was_training = deployed.training
    deployed.eval()
    try:
        program = torch.onnx.export(deployed, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=dynamic, custom_translation_table=table,
                                    optimize=False, verbose=False)
    except Exception as e:  # noqa: BLE001 - the exporter's errors are pages long
        raise RuntimeError(_one_line(e, f"ONNX export of {type(deployed).__name__}")) \
            from None
    finally:
        deployed.train(was_training)
    return program.model_proto


def save_onnx(deployed: DeployedModel, path: str | Path, **kw) -> Path:
    """`to_onnx` written to ``path``."""
    onnx = _need("onnx")
    path = Path(path)
    onnx.save(to_onnx(deployed, **kw), str(path))
    return path


def ort_session(model, threads: int | None = None):
    """An ONNX Runtime CPU session of an ONNX model (a ModelProto or a path)."""
    ort = _need("onnxruntime")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    data = model if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(str(data) if isinstance(data, Path) else data, opts,
                                providers=["CPUExecutionProvider"])


def run_onnx(session, images: Tensor | np.ndarray) -> np.ndarray:
    """Logits of ``images`` from an `ort_session`."""
    x = images.detach().cpu().numpy() if isinstance(images, Tensor) else images
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
