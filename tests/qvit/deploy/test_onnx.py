"""qvit.deploy.onnx: the whole deployed model (both micro models) exported to ONNX with
integer operators and run by ONNX Runtime on the CPU, bit for bit against the PyTorch
deployment; what cannot export is refused in one line. Skipped where onnx, onnxscript or
onnxruntime are not installed (`pip install qvit[onnx]`)."""

import numpy as np
import pytest
import torch

from qvit import Flags
from qvit.deploy import deploy

from .._util import MICRO, batch, model_from

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from qvit.deploy.onnx import ort_session, run_onnx, to_onnx  # noqa: E402

INT = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32,
       onnx.TensorProto.INT64}


@pytest.fixture(scope="module", params=MICRO)
def exported(request):
    """(deployed model, its ONNX model): one export per micro model (about a minute on an
    idle core, several on a loaded one)."""
    deployed = deploy(model_from(request.param, Flags.preset("best")))
    return deployed, to_onnx(deployed)


def _types(model) -> dict[str, int]:
    g = onnx.shape_inference.infer_shapes(model).graph
    return {v.name: v.type.tensor_type.elem_type
            for v in [*g.value_info, *g.input, *g.output, *g.initializer]
            if hasattr(v, "type")} | {i.name: i.data_type for i in g.initializer}


@pytest.mark.slow
def test_graph_computes_with_integer_operators(exported):
    _, model = exported
    ops = [n.op_type for n in model.graph.node]
    assert "MatMulInteger" in ops and "Gemm" not in ops
    assert "Floor" not in ops  # no floor division through float
    types = _types(model)
    for node in model.graph.node:
        if node.op_type == "MatMul":  # the attention products: integer MatMuls
            assert {types[i] for i in node.input} <= INT, node.name


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 5])
def test_onnx_runtime_equals_pytorch_bit_for_bit(exported, n):
    deployed, model = exported
    sess = ort_session(model, threads=1)
    for seed in (3, 11):
        x = batch(seed, n=n)[0] * 3  # wide inputs: clamps and large sums on the way
        with torch.no_grad():
            want = deployed(x).numpy()
        got = run_onnx(sess, x)
        assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got, want)


def test_integer_translations_are_exact_on_edge_values():
    """floor division, >> and << of negative, zero and large int64 values as torch."""
    class Ops(torch.nn.Module):
        def forward(self, a, b, e):
            return torch.stack([torch.div(a, b, rounding_mode="floor"), a >> e,
                                (a % 1024) << e, torch.div(2**31, b.abs(), rounding_mode="floor"),
                                a >> 3])

    vals = [-(2**62), -(2**40) - 1, -7, -1, 0, 1, 7, 2**31, 2**61 + 3]
    a = torch.tensor(vals * 3, dtype=torch.int64)
    b = torch.tensor([-3, 2, 5] * len(vals), dtype=torch.int64)
    e = torch.tensor([0, 1, 13] * len(vals), dtype=torch.int64)
    from qvit.deploy.onnx import OPSET, _translation_table

    prog = torch.onnx.export(Ops().eval(), (a, b, e), dynamo=True, opset_version=OPSET,
                             custom_translation_table=_translation_table(), optimize=False,
                             verbose=False)
    sess = ort_session(prog.model_proto)
    feed = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), (a, b, e), strict=True)}
    got = sess.run(None, feed)[0]
    assert np.array_equal(got, Ops().eval()(a, b, e).numpy())


def test_refuses_what_it_cannot_export_in_one_line():
    with pytest.raises(ValueError, match="takes a deployed model"):
        to_onnx(model_from("ivit_micro", Flags()))
    from qvit.deploy.onnx import _one_line

    msg = _one_line(RuntimeError("long\nNo ONNX function found for <OpOverload(op='aten.gcd', "
                                 "overload='default')>. more\nlines"), "ONNX export of X")
    assert "\n" not in msg and "aten.gcd" in msg and "_translation_table" in msg
