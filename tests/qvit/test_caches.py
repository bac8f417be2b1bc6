"""The eval caches (flags 10-13) are keyed on what they are derived from: every source tensor
changed in place in eval (no mode switch), an EMA model (timm ModelEmaV3, updated in place
while it stays in eval), a load, a flag switch and a `.data` swap (`_apply`) all give the
uncached path's bits."""

import pytest
import torch
from timm.utils import ModelEmaV3

from qvit import Flags
from qvit.modules import IntGELU, IntSoftmax, QuantAct, QuantLinear

from ._util import MICRO, small_batch, small_model, train_step

CACHED = Flags.preset("best")  # every cache on
UNCACHED = CACHED.replace(cache_eval_weights=False, cache_eval_act_scale=False,
                          cache_exp_x0=False, cache_rel_pos_bias=False)  # none


def _sampled(key: str) -> bool:
    """The state entries moved one by one: the sources of cached values (weights, ranges,
    scales, the relative position table) outside the blocks and in one block (ivit:
    blocks.1; swin: stage 0's shifted-window block). (CI budget.)"""
    source = key.endswith(("weight", "min_val", "max_val", "act_scaling_factor",
                           "relative_position_bias_table"))
    return source and ("blocks." not in key or key.startswith(("blocks.1.",
                                                                "layers.0.blocks.1.")))


def _move_(name: str, sd: dict, g: torch.Generator) -> None:
    """An in-place change that moves what is derived from entry ``name``: a range end goes
    past twice the range (the scale follows), parameters get noise."""
    t = sd[name]
    if name.endswith(("min_val", "max_val")):
        prefix = name[:-len("min_val")]
        r = torch.maximum(-sd[prefix + "min_val"], sd[prefix + "max_val"]) * 2 + 1
        t.copy_(-r if name.endswith("min_val") else r)
    else:
        t.add_(torch.randn(t.shape, generator=g) * (t.abs().mean() * 0.2 + 1e-3))


@pytest.mark.parametrize("model_name", MICRO)
def test_ema_eval_with_every_cache_equals_the_uncached_path(model_name):
    model = small_model(model_name, CACHED)
    ema = ModelEmaV3(model, decay=0.8)  # a deep copy, kept in eval, updated in place
    ref = small_model(model_name, UNCACHED).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x_eval, _ = small_batch(22, model_name)
    for i in range(3):
        train_step(model.train(), opt, *small_batch(230 + i, model_name), 330 + i)
        ema.update(model, step=i)
        assert not ema.module.training
        with torch.no_grad():
            got = ema.module(x_eval)
            got_again = ema.module(x_eval)  # from the caches
            ref.load_state_dict(ema.module.state_dict())
            want = ref(x_eval)
        assert torch.equal(got, want) and torch.equal(got_again, want), f"EMA step {i}"


@pytest.mark.parametrize("model_name", MICRO)
def test_load_set_flags_and_data_swap_in_eval_refresh_the_caches(model_name):
    cached = small_model(model_name, CACHED).eval()
    other = small_model(model_name, CACHED)
    perturb = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=perturb) * 0.05)
    plain = small_model(model_name, UNCACHED).eval()
    x, _ = small_batch(23, model_name)
    with torch.no_grad():
        cached(x)
        cached.load_state_dict(other.state_dict())  # copies in place, still in eval
        plain.load_state_dict(other.state_dict())
        assert torch.equal(cached(x), plain(x))
        cached.set_flags(CACHED.replace(eps_constant=False))
        assert torch.equal(cached(x), plain(x))

        def swap(t):  # what .to()/.half() do to parameters: replace .data, no version bump
            return t * 1.25 if isinstance(t, torch.nn.Parameter) else t

        cached._apply(swap)
        plain._apply(swap)
        assert torch.equal(cached(x), plain(x))


def _module_case(module, make_input, change):
    """One eval forward (fills the cache), an in-place change of a source, another forward:
    equal to a fresh uncached module's."""
    module.flags = CACHED
    module.eval()
    args = make_input()
    with torch.no_grad():
        module(*args)
        change(module, args)
        got = module(*args)[0]
        module.flags = UNCACHED
        want = module(*args)[0]
    assert torch.equal(got, want)


def test_x0_cache_sees_its_scale_written_in_place():
    g = torch.Generator().manual_seed(4)
    x = torch.round(torch.randn(2, 3, 8, 8, generator=g) * 40) * 0.05

    def halve(m, args):
        args[1].mul_(0.5)

    _module_case(IntSoftmax(8), lambda: (x.clone(), torch.tensor([0.05])), halve)
    _module_case(IntGELU(8), lambda: (x.clone(), torch.tensor([0.05])), halve)


def test_weight_cache_sees_an_optimizer_step_taken_in_eval():
    lin = QuantLinear(8, 4)
    x = torch.randn(2, 8)

    def step(m, args):
        m.weight.add_(torch.linspace(-0.5, 0.5, m.weight.numel()).view_as(m.weight))

    _module_case(lin, lambda: (x, torch.tensor([0.1])), step)


def test_act_scale_cache_follows_its_range_and_ignores_a_written_scale():
    act = QuantAct(8)
    act(torch.randn(4, 6) * 3)  # a range
    x = torch.randn(4, 6)

    def widen(m, args):
        m.max_val.mul_(4)
        m.act_scaling_factor.mul_(0.1)  # derived: recomputed from the range, as legacy does

    _module_case(act, lambda: (x,), widen)


@pytest.mark.parametrize("model_name", MICRO)
def test_every_source_changed_in_place_in_eval_is_seen(model_name):
    cached = small_model(model_name, CACHED).eval()
    plain = small_model(model_name, UNCACHED).eval()
    x, _ = small_batch(21, model_name)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    moved_nothing = []
    with torch.no_grad():
        before = cached(x)
        assert torch.equal(before, plain(x))
        sd_c, sd_p = cached.state_dict(), plain.state_dict()
        keys = [k for k in sd_c if sd_c[k].is_floating_point() and _sampled(k)]
        for k in keys:
            _move_(k, sd_c, g1)
            _move_(k, sd_p, g2)
            got, want = cached(x), plain(x)
            assert torch.equal(got, want), f"stale cache after {k} changed in place"
            if torch.equal(got, before) and not k.endswith("act_scaling_factor"):
                moved_nothing.append(k)
            before = got
    # the check has power: nearly every change moves the logits (an act_scaling_factor
    # is derived from its range and recomputed from it, as the legacy path does)
    assert len(moved_nothing) <= 0.1 * len(keys), moved_nothing
