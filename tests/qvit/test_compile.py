"""compile_model: the models trace whole or block by block (no graph break, no recompile
beyond one graph per mode and block structure, none on a train()/eval() switch) and the
`qvit_inductor` backend (`qvit.compile`) gives eager's bits.

Inductor compiles C++ for every kernel (a minute or more per micro model on two cores), so
the inductor checks here run the lean nodes one at a time on small tensors, forward and
backward; the whole models (eval logits, AdamW steps) are measured by
``scripts/compile_check.py``, and checked here under ``QVIT_TEST_COMPILE=1``.
"""

import copy
import os

import pytest
import torch
import torch.nn.functional as F

import qvit
import qvit.compile as QC
from qvit import Flags
from qvit.modules import IntGELU, IntSoftmax, caches_enabled
from qvit.ops import quantize, requant
from qvit.ops.gelu import gelu_lean
from qvit.ops.layernorm import layernorm_node
from qvit.ops.softmax import softmax_lean

from ._util import DROP_PATH, SMALLEST, small_batch, small_model

COMPILED = Flags.parse("best,compile_model=true")
TINY = {"ivit_micro": dict(depth=3), "swin_micro": dict(depths=(2, 1))}


def _counters():
    from torch._dynamo.utils import counters

    return counters


# graphs per mode: whole, one; block by block, one per region structure: ViT's patch
# embedding, its first block (no drop path) and the others (each rate, one graph); Swin's
# patch embedding, stage 1's first block (no drop path) and its shifted one, the merge,
# stage 2's block; without drop path stage 1's plain and shifted blocks run one code
# (share_window_code) and share one graph
GRAPHS_PER_MODE = {("ivit_micro", "model", DROP_PATH): 1, ("swin_micro", "model", DROP_PATH): 1,
                   ("ivit_micro", "block", DROP_PATH): 3, ("swin_micro", "block", DROP_PATH): 5,
                   ("swin_micro", "block", 0.0): 4}


@pytest.mark.parametrize("name,scope,drop_path", list(GRAPHS_PER_MODE))
def test_models_trace_one_graph_per_mode_and_block_structure(name, scope, drop_path):
    """Eval (twice: the caches' second call), training steps (forward and backward, drop
    path on), eval and training again, under dynamo: one graph per mode (and block
    structure, block by block: blocks of other drop-path rates share one), none more on a
    train()/eval() switch, no graph break, and the values of the eager model with its
    caches."""
    torch._dynamo.reset()
    counters = _counters()
    counters.clear()
    # the fewest blocks with every module type (Swin: a shifted block, a merge); ViT: two
    # blocks with drop path, at two rates
    torch.manual_seed(0)
    eager = qvit.create_model(name, num_classes=10, img_size=SMALLEST[name], flags=COMPILED,
                              drop_path_rate=drop_path, **TINY[name])
    x, y = small_batch(3, name)
    with torch.no_grad():
        eager(x)  # calibrated ranges
    twin = copy.deepcopy(eager)
    compiled = QC.compile_model(twin, scope=scope, backend="eager")
    graphs = []
    for _ in range(2):
        eager.eval(), twin.eval()  # (re-arms the model's calibration check: run eagerly)
        with torch.no_grad():
            for _ in range(2):
                assert torch.equal(compiled(x), eager(x))
        eager.train(), twin.train()
        losses = []
        for model in (eager, compiled):
            torch.manual_seed(len(graphs))
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            losses.append(loss.detach())
        assert torch.equal(*losses)
        graphs.append(counters["stats"]["unique_graphs"])
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert graphs == [2 * GRAPHS_PER_MODE[name, scope, drop_path]] * 2  # no new one after
    assert caches_enabled()  # (outside a trace)


def test_block_scope_compiles_each_region_in_place():
    """scope="block" compiles every transformer block, merge and patch embedding in place
    (the model itself is returned), raises dynamo's recompile limit to hold their graphs,
    and a deepcopy (timm's EMA) runs eagerly rather than calling the original's blocks."""
    model = small_model("swin_micro", COMPILED)
    kinds = [type(m).__name__ for m in QC.regions(model)]
    assert kinds == ["PatchEmbed"] + ["TransformerBlock"] * 2 + ["PatchMerging"] + [
        "TransformerBlock"] * 2
    assert QC.compile_model(model, backend="eager") is model
    assert all(m._compiled_call_impl is not None for m in QC.regions(model))
    assert torch._dynamo.config.recompile_limit >= 6 * len(kinds)
    # stage 1's blocks (4 windows) gather their windows, stage 2's (one window) need not
    assert [b.window_order is not None for b in QC.regions(model)
            if isinstance(b, qvit.blocks.TransformerBlock)] == [True, True, False, False]
    copied = copy.deepcopy(model)
    assert all(m._compiled_call_impl is None for m in QC.regions(copied))
    whole = QC.compile_model(small_model("ivit_micro", COMPILED), scope="model", backend="eager")
    assert isinstance(whole, torch._dynamo.eval_frame.OptimizedModule)


def test_compile_model_refuses_what_it_cannot_compile():
    model = small_model("ivit_micro", COMPILED)
    with pytest.raises(ValueError, match="one of block, model"):
        QC.compile_model(model, scope="blocks")
    with pytest.raises(ValueError, match="cuda_graphs needs a model on CUDA.*cpu"):
        QC.compile_model(model, cuda_graphs=True)
    with pytest.raises(ValueError, match="scope='model'"):
        QC.compile_model(torch.nn.Linear(2, 2))


def test_cuda_graphs_reach_inductor_as_reduce_overhead(monkeypatch):
    """cuda_graphs compiles each region with mode="reduce-overhead", which the backend
    turns into inductor's CUDA-graph option, under qvit's own options (the parts a CPU can
    check: the CUDA model and its replay need a GPU)."""
    import torch._inductor.compile_fx as CF

    model = small_model("ivit_micro", COMPILED)
    monkeypatch.setattr(QC, "_device_types", lambda m: {"cuda"})
    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **kw: modes.append((kw["mode"], kw["dynamic"])))
    QC.compile_model(model, cuda_graphs=True)
    assert modes == [("reduce-overhead", False)] * len(QC.regions(model))
    patches = []
    monkeypatch.setattr(CF, "compile_fx", lambda gm, inputs, config_patches, decompositions:
                        patches.append(config_patches))
    QC.backend(None, [], mode="reduce-overhead", options={"fallback_random": False})
    QC.backend(None, [])
    assert patches[0] == {"triton.cudagraphs": True, **QC.SPEED_CONFIG, **QC.CONFIG}
    assert patches[1] == {**QC.SPEED_CONFIG, **QC.CONFIG}
    QC.backend(None, [], options={"realize_cpu_opcount_threshold": 30})  # a user's choice
    assert patches[2]["realize_cpu_opcount_threshold"] == 30


def test_drop_path_compiled_by_qvit_inductor_is_eager_bit_for_bit():
    """I-ViT's drop path in training: the same draws (aten's generator, not inductor's) and
    the same division by the keep probability (not inductor's multiply by its reciprocal),
    for two blocks' rates through one compiled graph."""
    from qvit.blocks import IViTDropPath

    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 9, 16, generator=g)
    torch._dynamo.reset()
    compiled = torch.compile(lambda m, x: m(x), backend=QC.BACKEND, dynamic=False)
    for rate in (0.1, 0.35):
        layer = IViTDropPath(rate).train()
        torch.manual_seed(6)
        got = compiled(layer, x)
        torch.manual_seed(6)
        assert torch.equal(got, layer(x))


def _node_cases():
    g = torch.Generator().manual_seed(0)

    def act(*shape, scale=0.01, span=300):
        return torch.randint(-span, span, shape, generator=g).float() * scale

    scale = torch.tensor([0.01])
    soft_x0 = IntSoftmax()._x0(scale)
    gelu_x0 = IntGELU()._x0(scale * 1.702)
    unit = torch.tensor([1 / 2**7])
    s_in = torch.rand(16, generator=g) * 1e-2 + 1e-3
    ln_w, ln_b = torch.linspace(0.5, 1.5, 24), torch.arange(24.0) - 12
    ln_s0 = torch.tensor([24**0.5 / 2**30])
    return {
        # rows of 33 scores, exp sums above 2^24 (order-sensitive in float32)
        "int_softmax": (lambda x: softmax_lean(x, scale, soft_x0, 15, 8, unit),
                        act(2, 3, 9, 33)),
        "int_gelu": (lambda x: gelu_lean(x, scale, gelu_x0, 23, 8, scale * unit),
                     act(2, 9, 16)),
        # (the constants made outside the compiled function: inductor's linspace differs;
        # 3 Newton steps instead of 10: the same operations, a third of the kernels)
        "int_layer_norm": (lambda x: layernorm_node(x, scale, ln_w, ln_b, ln_s0, 3),
                           act(2, 9, 24, span=30000)),
        # Swin's stage-1 tokens: channels strided (sums in backward follow the layout)
        "int_layer_norm_strided": (lambda x: layernorm_node(x, scale, ln_w, ln_b, ln_s0, 3),
                                   act(2, 24, 9, span=30000).transpose(1, 2)),
        "requantize_residual": (lambda x: requant.requantize(
            x, s_in, torch.tensor([0.05]), 8, x.flip(-1) * 0.5, s_in * 2),
            act(2, 9, 16) * s_in),
        "quantize_act": (lambda x: quantize.quantize_act(x, torch.tensor([0.03]), 8),
                         torch.randn(2, 9, 16, generator=g)),
    }


@pytest.mark.parametrize("node", list(_node_cases()))
def test_lean_node_compiled_by_qvit_inductor_is_eager_bit_for_bit(node):
    """Each lean node compiled by inductor (its autograd Function traced, in-place ops, the
    float64 bit tricks of the dyadic multiplier, the row sums): the same values and input
    gradients as eager."""
    fn, x = _node_cases()[node]
    torch._dynamo.reset()
    # the incoming gradient contiguous, as the models' arrive from the head (the backward is
    # traced for contiguous ones, `qvit.compile.AOT_CONFIG`)
    out = fn(x)
    g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = torch.compile(fn, backend=QC.BACKEND)(got_x)
    ref = fn(ref_x)
    assert torch.equal(got, ref)
    got.backward(g_out)
    ref.backward(g_out)
    assert torch.equal(got_x.grad, ref_x.grad)


def _eager_and_compiled(region, measure):
    """``measure(fn)`` of the region run eagerly, then compiled by qvit_inductor."""
    torch._dynamo.reset()
    return measure(region), measure(torch.compile(region, backend=QC.BACKEND))


def test_region_hands_back_the_input_gradient_in_eagers_layout():
    """Swin's stage-1 tokens are channel-strided (the stem's transpose) and their gradients
    arrive contiguous from the head. A compiled region must hand the gradient of its input
    back in the layout eager gives it (contiguous): the eager stem sums its weight
    gradients over it, and a sum's order follows the layout (swin_micro's stem weights
    differed from eager's from the first compiled training step when AOT autograd traced
    the backward for gradients in the output's layout)."""
    g = torch.Generator().manual_seed(3)
    tokens = (torch.randn(4, 24, 49, generator=g) * torch.logspace(0, 6, 49)).transpose(1, 2)
    weight = torch.linspace(0.5, 1.5, 24)
    g_out = torch.randn(4, 49, 24, generator=g)  # contiguous, as from the head

    def region(x):
        return x * 3 + 1

    def grads(fn):
        w = weight.clone().requires_grad_()
        x = tokens.clone().requires_grad_()
        fn(x * w).backward(g_out)
        return x.grad, w.grad

    (ref_x, ref_w), (got_x, got_w) = _eager_and_compiled(region, grads)
    assert got_x.stride() == ref_x.stride()
    assert torch.equal(got_x, ref_x) and torch.equal(got_w, ref_w)


def test_patch_embedding_convolution_gradients_are_eagers():
    """A patch embedding (a strided convolution, its tokens transposed) compiled: the
    weight and bias gradients are eager's (inductor's layout optimization ran it
    channels-last, whose backward summed the bias gradient in another order: DeiT-tiny's
    and Swin-T's stems differed from eager's from the first step)."""
    g = torch.Generator().manual_seed(4)
    conv = torch.nn.Conv2d(3, 48, 16, stride=16)
    x = torch.randn(2, 3, 64, 64, generator=g)
    g_out = torch.randn(2, 16, 48, generator=g)

    def region(x):
        return conv(x).flatten(2).transpose(1, 2) * 2

    def grads(fn):
        conv.zero_grad()
        fn(x).backward(g_out)
        return conv.weight.grad.clone(), conv.bias.grad.clone()

    (ref_w, ref_b), (got_w, got_b) = _eager_and_compiled(region, grads)
    assert torch.equal(got_w, ref_w) and torch.equal(got_b, ref_b)


def test_qvit_inductor_sums_in_atens_order():
    """A float row sum whose order shows (addends of mixed magnitude) and a mean over a
    non-power-of-two width: aten's bits."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 101, generator=g) * torch.logspace(0, 8, 101)

    def f(x):
        return x.sum(-1), x.mean(-1, keepdim=True), x.t().sum(0), x.sum()

    torch._dynamo.reset()
    for a, b in zip(torch.compile(f, backend=QC.BACKEND)(x), f(x), strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(os.environ.get("QVIT_TEST_COMPILE") != "1",
                    reason="minutes of inductor compilation: QVIT_TEST_COMPILE=1")
@pytest.mark.parametrize("scope", QC.SCOPES)
@pytest.mark.parametrize("name", ["ivit_micro", "swin_micro"])
def test_compiled_model_is_eager_bit_for_bit(name, scope):
    """The flag's parity claim on a whole model, compiled block by block or whole: eval
    logits, 3 AdamW steps with drop path (losses and the whole state after each), eval
    after training."""
    torch._dynamo.reset()
    eager, twin = small_model(name, COMPILED), small_model(name, COMPILED)
    compiled = QC.compile_model(twin, scope=scope)
    x_eval, _ = small_batch(7, name)
    eager.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(compiled(x_eval), eager(x_eval))
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (eager, twin)]
    eager.train(), twin.train()
    for i in range(3):
        x, y = small_batch(200 + i, name)
        losses = []
        for model, opt in zip((eager, compiled), opts, strict=True):
            torch.manual_seed(300 + i)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        assert torch.equal(*losses)
        se, st = eager.state_dict(), twin.state_dict()
        assert all(torch.equal(se[k], st[k]) for k in se), f"state differs after step {i}"
    eager.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(compiled(x_eval), eager(x_eval))


def test_backend_is_registered():
    assert QC.BACKEND in torch._dynamo.list_backends()
    assert qvit.compile.backend is QC.backend


def test_frexp_path_compiles_by_qvit_inductor():
    """The frexp requantizer (fixedpoint_mul with frexp on the device, float64), whose C++
    plain inductor cannot build, compiles with aten's frexp: eager's bits."""
    g = torch.Generator().manual_seed(4)
    x = torch.randint(-300, 300, (2, 9, 16), generator=g).float() * 0.01
    s_in, s_out = torch.rand(16, generator=g) * 1e-2 + 1e-3, torch.tensor([0.05])

    def f(x):
        return requant.fixedpoint_mul(x, s_in.view(1, 1, -1), 8, s_out, None, None,
                                      fp64=True, use_frexp=True, frexp="device", fused=True,
                                      ste="lean")

    torch._dynamo.reset()
    assert torch.equal(torch.compile(f, backend=QC.BACKEND)(x), f(x))


_CACHE_PROBE = """
import json, sys, torch, qvit.compile
from torch._dynamo.utils import counters
out = torch.compile(lambda x: x.sum(1) * 2, backend=sys.argv[1])(
    torch.logspace(0, 8, 64).view(8, 8))
print(json.dumps({**counters["inductor"], **counters["aot_autograd"],
                  "exact": torch.equal(out, torch.logspace(0, 8, 64).view(8, 8).sum(1) * 2)}))
"""


def test_qvit_inductor_graphs_are_cached_across_processes_and_apart_from_inductors(tmp_path):
    """Inductor's FX-graph and AOTAutograd caches key a graph by its decomposition table:
    qvit's table pickles as the digest of qvit.compile, so a new process reuses a compiled
    graph (minutes per model, paid once per machine), and plain inductor's entry for the
    same graph (other sums, other bits) is never taken for qvit_inductor's, nor the reverse."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}

    def probe(backend):
        out = subprocess.run([sys.executable, "-c", _CACHE_PROBE, backend], env=env,
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    first = probe(QC.BACKEND)
    assert first.get("fxgraph_cache_miss") == 1 and first.get("autograd_cache_saved") == 1
    plain = probe("inductor")  # same dynamo graph, plain table: its own entry
    assert plain.get("fxgraph_cache_miss") == 1 and "extern_calls" not in plain
    again = probe(QC.BACKEND)
    assert again.get("autograd_cache_hit") == 1 and again["extern_calls"] == 1  # aten's sum
    assert first["exact"] and again["exact"]


def test_decomposition_table_refuses_another_qvit_compile():
    table = QC.decompositions()
    fn, args = table.__reduce_ex__(2)
    assert fn(*args).keys() == table.keys()
    with pytest.raises(ValueError, match="recompile"):
        fn("0" * 64)


_FUNCTION_PROBE = """
import json, sys, torch, qvit.compile
from torch._dynamo.utils import counters
k = float(sys.argv[1])  # the backward's factor: another Function code, another graph

class Ste(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.floor(x)

    @staticmethod
    def backward(ctx, g):
        return g * k

x = torch.linspace(-3, 3, 16).requires_grad_()
out = torch.compile(lambda x: Ste.apply(x) * 2, backend="qvit_inductor")(x)
out.sum().backward()
print(json.dumps({**counters["aot_autograd"], "grad": x.grad.tolist(),
                  "out": out.tolist()}))
"""


def test_training_graphs_with_autograd_functions_are_cached_by_their_code(tmp_path):
    """`best`'s training regions hold autograd.Functions, which AOT autograd's cache
    refuses by default: a second process re-traced every training graph (swin_micro: 26 of
    its 34 s warm start). qvit_inductor caches them, and a Function whose backward changed
    is another graph, never the cached one."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}

    def probe(k):
        out = subprocess.run([sys.executable, "-c", _FUNCTION_PROBE, str(k)], env=env,
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    first = probe(1)
    assert first.get("autograd_cache_saved") == 1 and "autograd_cache_bypass" not in first
    again = probe(1)
    assert again.get("autograd_cache_hit") == 1 and again["grad"] == first["grad"] == [2.0] * 16
    edited = probe(3)
    assert edited.get("autograd_cache_miss") == 1 and "autograd_cache_hit" not in edited
    assert edited["grad"] == [6.0] * 16 and edited["out"] == first["out"]
