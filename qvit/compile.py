"""torch.compile with eager's numbers: inductor with aten's float sums.

Inductor generates its own reduction loops: a float sum or mean adds in another order than
aten's (vectorized cascade) kernel, so where the addends are not exact (the integer exp
sums of IntSoftmax above 2^24, IntLayerNorm's squares, every gradient sum in backward)
the compiled model's bits differ from eager's. The backend `backend` (registered with dynamo
as ``"qvit_inductor"``) is inductor whose decomposition table turns every float
``sum``/``mean`` into an opaque custom op that runs aten's kernel on a tensor of eager's
strides (``needs_exact_strides``); everything else (elementwise, the rest of the graph)
is inductor's (but frexp, whose float64 C++ does not build: aten's kernel too). The
decomposition acts on the joint forward/backward graph, so the
gradient sums autograd adds (bias gradients, ``sum_to_size``) are covered too.

Inductor's FX-graph cache keeps the compiled graphs on disk (``TORCHINDUCTOR_CACHE_DIR``),
keyed by this file's digest: the C++ compilation is paid once per machine, torch and
qvit.compile; a later process spends its compile time tracing.

`compile_model` compiles a qvit model regionally (``scope="block"``, PyTorch's regional
compilation): each transformer block (and Swin's patch merging, the patch embedding) is
compiled on its own, and blocks of one structure share one compiled graph per mode
(training, eval), so the cold start is that of a block, not of the depth (Swin's shifted and
unshifted blocks of a stage run one code for it: `TransformerBlock.share_window_code`); or whole
(``scope="model"``: one graph per mode). ``cuda_graphs`` replays each graph as a CUDA graph
(``mode="reduce-overhead"``; a CUDA model only).

    >>> import qvit
    >>> model = qvit.compile.compile_model(model)  # doctest: +SKIP
    >>> compiled = torch.compile(model, backend="qvit_inductor")  # the same arithmetic, whole
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["backend", "BACKEND", "SCOPES", "compile_model", "decompositions", "known_options",
           "regions"]

BACKEND = "qvit_inductor"
aten = torch.ops.aten
_EXACT = (torch.Tag.needs_exact_strides,)  # aten's order depends on the input's strides


@torch.library.custom_op("qvit::aten_reduce", mutates_args=(), tags=_EXACT)
def _aten_reduce(x: Tensor, dim: list[int], keepdim: bool, mean: bool) -> Tensor:
    return (torch.mean if mean else torch.sum)(x, dim, keepdim)


@_aten_reduce.register_fake
def _(x, dim, keepdim, mean):
    return (torch.mean if mean else torch.sum)(x, dim, keepdim)


# inductor's C++ for frexp does not build for float64 inputs (no vectorized convert of its
# int32 exponent: "convert<double, 2, int32_t, 1>"): aten's kernel, opaque (its exact bits)
@torch.library.custom_op("qvit::aten_frexp", mutates_args=())
def _aten_frexp(x: Tensor) -> tuple[Tensor, Tensor]:
    mant, exp = torch.frexp(x)
    return mant, exp


@_aten_frexp.register_fake
def _(x):
    return torch.empty_like(x), torch.empty_like(x, dtype=torch.int32)


# autograd's gradient of an indexing (Swin's relative position bias gather) accumulates
# into a zero tensor: aten adds the duplicates serially, in its iteration order
@torch.library.custom_op("qvit::aten_index_put", mutates_args=(), tags=_EXACT)
def _aten_index_put(x: Tensor, indices: list[Tensor | None], values: Tensor,
                    accumulate: bool) -> Tensor:
    return torch.index_put(x, indices, values, accumulate)


@_aten_index_put.register_fake
def _(x, indices, values, accumulate):
    return torch.empty_like(x)


def _index_put(x, indices, values, accumulate=False, *unsafe):
    if not accumulate or not x.is_floating_point():
        return NotImplemented  # (a plain write or integer sums: any order gives these bits)
    return _aten_index_put(x, list(indices), values, True)


def _reduction(mean: bool):
    """The decomposition of a float sum (or mean), over dims or all (``.default``): aten's
    kernel as `_aten_reduce`; integer sums and explicit dtypes stay inductor's (exact)."""
    def decompose(x, dim=None, keepdim=False, *, dtype=None):
        if not x.is_floating_point() or dtype is not None:
            return NotImplemented
        dims = list(range(x.dim())) if dim is None or dim == [] else list(dim)
        return _aten_reduce(x, dims, keepdim, mean)
    return decompose


# what inductor's caches key a compiled graph by: this file (the decompositions it defines)
_SOURCE_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


class _Table(dict):
    """The decomposition table, pickled (inductor hashes it into its FX-graph and AOTAutograd
    cache keys) as this module's digest: cached graphs are reused across processes, and
    never for another table (plain inductor's entries, or an edited qvit.compile)."""

    def __reduce_ex__(self, protocol):
        return _table_for, (_SOURCE_DIGEST,)


def _table_for(digest: str) -> _Table:
    if digest != _SOURCE_DIGEST:
        raise ValueError(f"qvit.compile's table for digest {digest[:12]} is gone "
                         f"(this qvit.compile is {_SOURCE_DIGEST[:12]}); recompile")
    return decompositions()


def decompositions() -> dict:
    """Inductor's decomposition table with float sums and means kept as aten calls."""
    from torch._inductor.decomposition import select_decomp_table

    table = _Table(select_decomp_table())
    total, mean = _reduction(mean=False), _reduction(mean=True)
    table.update({aten.sum.dim_IntList: total, aten.sum.default: total,
                  aten.mean.dim: mean, aten.mean.default: mean,
                  aten.frexp.Tensor: _aten_frexp})
    for op in (aten.index_put.default, aten._unsafe_index_put.default,
               aten._index_put_impl.default):
        table[op] = _index_put
    return table


# Inductor options: its pattern rewrites change numbers (e.g. x/s - amax(x/s) becomes
# (x*sign(s) - amax(x*sign(s))) / (sign(s)*s), rounding the division after the subtraction);
# its own random numbers are not aten's (drop path's draws: aten's generator, eager's bits);
# its layout optimization runs the patch embedding's convolution channels-last, whose
# backward sums the bias gradient in another order (DeiT-tiny's and Swin-T's stems)
CONFIG = {"pattern_matcher": False, "fallback_random": True, "layout_optimization": False}

# The integer chains (requantizers, the shift-based exp) are long elementwise runs: inlined
# into every consumer up to inductor's CPU default of 50 ops, generating their C++ took most
# of a cold compile. Stored past 24 ops: ivit_micro's first training step compiles in 27 s
# instead of 155 s, and its compiled step is as fast (1.007x [0.986, 1.029] the default's;
# past 8 ops, 1.126x: slower). The bits stay eager's: a stored float32 is the value inlined
# code computes (inductor compiles with floating-point contraction off)
SPEED_CONFIG = {"realize_cpu_opcount_threshold": 24}  # (where this inductor has it)

# AOT autograd traces a graph's backward for incoming gradients of a guessed layout and
# copies the real ones into it. Its default guess, the forward output's layout, puts Swin's
# stage-1 tokens' gradients channel-strided (the stem's transpose) where eager's arrive
# contiguous from the head; the gradient a region hands back then has another layout than
# eager's, and the eager stem's weight-gradient sums add in another order. Contiguous is
# what the models' gradients are in eager
#
# AOT autograd's on-disk cache refuses a graph holding an autograd.Function by default, and
# every training region holds several (the STE, requantizer, exp and LayerNorm nodes of
# `best`): a second process re-traced and re-partitioned each training graph (swin_micro:
# 26 s of a 34 s warm start). Dynamo traces a Function's forward and backward into the
# graph the cache is keyed by, so an edited Function is another key
AOT_CONFIG = {"guess_tangent_strides_as_outputs": False,  # (older torch: its default)
              "autograd_cache_allow_custom_autograd_functions": True}


def known_options(config, options: dict) -> dict:
    """The entries of ``options`` that this torch's ``config`` module has (a setting
    inductor or AOT autograd dropped or has not yet is left out)."""
    return {k: v for k, v in options.items() if hasattr(config, k)}


def backend(gm: torch.fx.GraphModule, example_inputs, mode: str | None = None,
            options: dict | None = None):
    """A dynamo backend: inductor with aten's float sums (`decompositions`); ``mode`` and
    ``options`` as torch.compile's for inductor (``"reduce-overhead"``: CUDA graphs), over
    `SPEED_CONFIG`, never over `CONFIG`."""
    from torch._functorch import config as aot_config
    from torch._inductor import config as inductor_config
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    speed = known_options(inductor_config, SPEED_CONFIG)
    patches = {**list_mode_options(mode or "default"), **speed, **(options or {}), **CONFIG}
    with aot_config.patch(known_options(aot_config, AOT_CONFIG)):
        return compile_fx(gm, example_inputs, config_patches=patches,
                          decompositions=decompositions())


torch._dynamo.register_backend(backend, name=BACKEND)

SCOPES = ("block", "model")  # what compile_model compiles: each region, or the whole model


def regions(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules ``scope="block"`` compiles: every transformer block, patch merging and
    patch embedding (what is left, the head and the loop over blocks, runs eagerly)."""
    from .blocks import PatchEmbed, PatchMerging, TransformerBlock

    return [m for m in model.modules()
            if isinstance(m, (TransformerBlock, PatchMerging, PatchEmbed))]


def _device_types(model: torch.nn.Module) -> set[str]:
    return {p.device.type for p in model.parameters()}


def compile_model(model: torch.nn.Module, *, scope: str = "block", backend: str = BACKEND,
                  cuda_graphs: bool = False) -> torch.nn.Module:
    """The model compiled by ``backend`` (`qvit_inductor`: eager's bits), as the module to
    call: ``scope="block"`` compiles each of `regions` in place (``nn.Module.compile``, static
    shapes; a deepcopy, e.g. an EMA, runs eagerly) and returns ``model``; ``"model"`` returns
    ``torch.compile(model)``. A region type's graphs are cached per structure, mode and
    batch shape (dynamo's recompile limit is raised to hold them all); ``cuda_graphs``
    (a CUDA model only) replays them as CUDA graphs."""
    if scope not in SCOPES:
        raise ValueError(f"compile scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    mode = None
    if cuda_graphs:
        where = _device_types(model)
        if where != {"cuda"}:
            raise ValueError(f"cuda_graphs needs a model on CUDA, this one is on "
                             f"{', '.join(sorted(where)) or 'no device'}; leave it off there")
        mode = "reduce-overhead"
    if scope == "model":
        return torch.compile(model, backend=backend, mode=mode)
    from .blocks import TransformerBlock

    parts = regions(model)
    if not parts:
        raise ValueError(f"{type(model).__name__} has no transformer blocks to compile one "
                         f"by one; use scope='model'")
    # graphs per region type: (training, eval) x (train batch, eval batch, a last one)
    limit = torch._dynamo.config
    limit.recompile_limit = max(limit.recompile_limit, 6 * len(parts))
    for part in parts:
        if isinstance(part, TransformerBlock):
            part.share_window_code()  # Swin: a stage's shifted and plain blocks, one graph
        part.compile(backend=backend, mode=mode, dynamic=False)
    return model
