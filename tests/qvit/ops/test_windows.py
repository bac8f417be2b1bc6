"""qvit.ops.windows: the token gather equals roll-then-partition (and its inverse the way
back) for every geometry, its gradient is the inverse gather, and a Swin model whose blocks
run the shared window code keeps every bit of the roll path, forward and through training."""

import copy

import pytest
import torch
import torch.nn.functional as F

from qvit import Flags
from qvit.blocks import TransformerBlock
from qvit.ops.windows import gather_tokens, reverse_roll, roll_partition, window_order

from .._util import small_batch, small_model

GEOMETRIES = [(8, 8, 4, 0), (8, 8, 4, 2), (8, 8, 4, 1), (14, 14, 7, 3), (8, 12, 4, 2),
              (4, 8, 2, 1)]


@pytest.mark.parametrize("H,W,ws,shift", GEOMETRIES)
def test_gather_is_roll_then_partition_and_back(H, W, ws, shift):
    x = torch.randn(3, H * W, 5)
    order = window_order(H, W, ws, shift)
    inverse = torch.argsort(order)
    assert sorted(order.tolist()) == list(range(H * W))
    w = gather_tokens(x, order, inverse)
    assert torch.equal(w.view(-1, ws * ws, 5), roll_partition(x, H, W, ws, shift))
    assert torch.equal(gather_tokens(w, inverse, order),
                       reverse_roll(w.view(-1, ws * ws, 5), H, W, ws, shift))
    assert torch.equal(gather_tokens(w, inverse, order), x)


@pytest.mark.parametrize("H,W,ws,shift", GEOMETRIES[1:3])
def test_gather_gradient_is_the_inverse_gather(H, W, ws, shift):
    order = window_order(H, W, ws, shift)
    inverse = torch.argsort(order)
    a = torch.randn(2, H * W, 3, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    weight = torch.randn(2, H * W, 3)
    (gather_tokens(a, order, inverse) * weight).sum().backward()
    (roll_partition(b, H, W, ws, shift).view(2, H * W, 3) * weight).sum().backward()
    assert torch.equal(a.grad, b.grad)


def _shared(model):
    for block in model.modules():
        if isinstance(block, TransformerBlock):
            block.share_window_code()
    return model


@pytest.mark.parametrize("preset", ["legacy", "best"])
def test_shared_window_code_keeps_every_bit(preset):
    """Eval logits, a training step's loss, input and parameter gradients, the parameters
    and ranges after two AdamW steps, and eval again: bit for bit the roll path's."""
    ref = small_model("swin_micro", Flags.preset(preset))
    shared = _shared(copy.deepcopy(ref))
    blocks = [b for b in shared.modules() if isinstance(b, TransformerBlock)]
    # stage 1 (4 windows): both blocks gather, the plain one with a zero mask; stage 2 is
    # one window: nothing to share
    assert [b.window_order is not None for b in blocks] == [True, True, False, False]
    assert not blocks[0].window_mask.any() and blocks[1].window_mask.min() < 0
    x_eval, _ = small_batch(7, "swin_micro")
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (ref, shared)]
    for step in range(2):
        for m in (ref, shared):
            m.eval()
        with torch.no_grad():
            assert torch.equal(shared(x_eval), ref(x_eval))
        x, y = small_batch(300 + step, "swin_micro")
        grads = []
        for m, opt in zip((ref, shared), opts, strict=True):
            m.train()
            xi = x.clone().requires_grad_(True)
            torch.manual_seed(step)  # drop-path draws
            loss = F.cross_entropy(m(xi), y)
            opt.zero_grad()
            loss.backward()
            grads.append((loss.detach(), xi.grad, [p.grad for p in m.parameters()]))
            opt.step()
        assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
        assert any(g is not None for g in grads[1][2])
        assert all(a is b is None or torch.equal(a, b)
                   for a, b in zip(grads[0][2], grads[1][2], strict=True))
        sa, sb = ref.state_dict(), shared.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_shared_window_code_moves_with_the_model_and_is_not_saved():
    model = _shared(small_model("swin_micro", Flags.preset("best")))
    block = next(b for b in model.modules() if isinstance(b, TransformerBlock))
    assert not any("window_" in k for k in model.state_dict())
    model.to(torch.float64)
    assert block.window_mask.dtype == torch.float64 and block.window_order.dtype == torch.long
