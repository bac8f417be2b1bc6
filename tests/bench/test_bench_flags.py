"""Microbenchmarks of each module flag's hot op, both paths (``nox -s bench``).

Parametrized over ``Flags.specs("module")``: for each flag, the path ``legacy`` (the legacy
preset) and ``on`` (legacy with only this flag moved to its best value, or its seed value
where best keeps legacy's), timed on the op the flag changes, at micro-model shapes:

* training flags: one I-ViT micro block, forward + backward, training mode, batch 32;
* eval caches: the same block's eval forward (Swin's window block for the position bias).

Grouped by flag (``--benchmark-group-by=param:flag``), so each group is the two paths of one
flag. In the normal test run ``--benchmark-skip`` skips them before anything is built.
"""

import pytest
import torch

import qvit
from qvit import Flags

LEGACY = Flags.preset("legacy")
FLAGS = [s.name for s in Flags.specs("module")]


def _on_value(name):
    spec = Flags.spec(name)
    return spec.best if spec.best != spec.legacy else spec.seed


def _block(model_name, flags):
    """The second block of a micro model (a shifted-window block for Swin), calibrated by
    two training forwards, and its input (x, scale) at that block."""
    torch.manual_seed(0)
    model = qvit.create_model(model_name, num_classes=10, flags=flags)
    x = torch.randn(32, 3, 32, 32)
    captured = {}
    blocks = (list(model.blocks) if model_name == "ivit_micro"
              else list(model.layers[0].blocks))
    block = blocks[1]
    hook = block.register_forward_pre_hook(
        lambda m, args: captured.setdefault("args", tuple(a.detach() for a in args)))
    model.train()
    for _ in range(2):
        model(x)
    hook.remove()
    return block, captured["args"]


@pytest.mark.bench
@pytest.mark.parametrize("path", ["legacy", "on"])
@pytest.mark.parametrize("flag", FLAGS)
def test_flag_hot_op(benchmark, flag, path):
    flags = LEGACY if path == "legacy" else LEGACY.replace(**{flag: _on_value(flag)})
    if flags == LEGACY and path == "on":
        pytest.skip(f"{flag}: its on-value equals legacy")
    model_name = "swin_micro" if flag == "cache_rel_pos_bias" else "ivit_micro"
    block, (x, scale) = _block(model_name, flags)
    benchmark.extra_info.update(flag=flag, path=path, value=str(getattr(flags, flag)))
    if flag.startswith("cache_"):
        block.eval()

        @torch.no_grad()
        def run():
            return block(x, scale)
    else:
        block.train()
        x_in = x.clone().requires_grad_(True)

        def run():
            out, _ = block(x_in, scale)
            out.sum().backward()
            return out

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
