"""qvit.deploy.onnx: the requantized integer linear layer (MatMulInteger + int64 dyadic
requantizer) run by ONNX Runtime on the CPU, bit for bit against the PyTorch deployment
(skipped where onnx/onnxruntime are not installed)."""

import numpy as np
import pytest
import torch

from qvit import Flags
from qvit.deploy import deploy
from qvit.deploy.compare import record_deployed

from .._util import batch, model_from

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


# (layer, its int8 input's requantizer, its own requantizer): 8-bit per channel, 16-bit
LAYERS = [("blocks.0.attn.qkv", "blocks.0.q_norm1", "blocks.0.attn.q_qkv"),
          ("blocks.1.mlp.fc2", "blocks.1.mlp.q_act", "blocks.1.mlp.q_out")]


@pytest.mark.parametrize(("layer", "source", "requant"), LAYERS)
def test_linear_requant_matches_pytorch_bit_for_bit(layer, source, requant):
    from qvit.deploy.onnx import linear_requant_graph

    deployed = deploy(model_from("ivit_micro", Flags()))
    mods = dict(deployed.named_modules())
    with torch.no_grad(), record_deployed(deployed) as rec:
        deployed(batch(4, n=8)[0])
    x, want = rec[source], rec[requant]
    model = linear_requant_graph(mods[layer], mods[requant])
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulInteger" in ops and not ops & {"MatMul", "Gemm"}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.reshape(-1, x.shape[-1]).numpy()})[0]
    assert got.dtype == want.numpy().dtype
    assert np.array_equal(got, want.reshape(-1, want.shape[-1]).numpy())
