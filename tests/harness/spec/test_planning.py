"""Every repeat is a block holding every (model, config) pair, shuffled per block, seeded."""

from harness import spec as ablate
from harness.sweep import runs as sweep_runs

RUN = {"models": ["ivit_micro", "swin_micro"], "epochs": 2, "repeats": 5, "seed": 7}


def make(**run):
    return ablate.parse_spec({"name": "t", "run": {**RUN, **run},
                              "design": {"kind": "timeline"}})


def test_each_block_holds_every_pair_once():
    s = make()
    runs = ablate.plan(s)
    pairs = {(m, c.name) for m in s.models for c in ablate.design_configs(s)}
    for b in range(s.repeats):
        block = [r for r in runs if r.block == b]
        assert {(r.model, r.config.name) for r in block} == pairs
        assert [r.order for r in block] == list(range(len(pairs)))


def test_shuffle_is_seeded_and_per_block():
    a = [(r.model, r.config.name) for r in ablate.plan(make())]
    b = [(r.model, r.config.name) for r in ablate.plan(make())]
    c = [(r.model, r.config.name) for r in ablate.plan(make(seed=8))]
    assert a == b and a != c
    orders = ablate.block_orders(12, 5, seed=7)
    assert len({tuple(o) for o in orders}) == 5  # every block its own order
    assert all(sorted(o) == list(range(12)) for o in orders)
    assert orders[0] != list(range(12))


def test_more_repeats_keep_the_earlier_blocks():
    assert ablate.block_orders(12, 3, 0) == ablate.block_orders(12, 6, 0)[:3]


def test_runs_in_a_block_share_the_training_seed():
    s = make()
    runs = ablate.plan(s)
    for r, spec in zip(runs, sweep_runs.to_runspecs(s, runs), strict=True):
        assert spec.settings.seed == s.settings.seed + r.block
        assert spec.repeat == spec.block == r.block and spec.order == r.order
        assert spec.flags == r.config.flags
        assert spec.settings.warmup_epochs == s.settings.warmup_epochs


def test_the_aa_control_is_the_baseline_again_and_can_be_left_out():
    s = make()
    configs = ablate.design_configs(s)
    aa = [c for c in configs if c.name == ablate.AA_CONTROL]
    assert len(aa) == 1 and aa[0].flags == configs[0].flags and not aa[0].in_design
    specs = sweep_runs.to_runspecs(s, ablate.plan(s, configs))
    ids = {(x.config, x.model, x.block): x.run_id for x in specs}
    assert ids[(ablate.AA_CONTROL, "ivit_micro", 0)] != ids[("legacy", "ivit_micro", 0)]
    off = ablate.parse_spec({"name": "t", "run": RUN, "design": {"kind": "timeline",
                                                                 "aa_control": False}})
    assert ablate.AA_CONTROL not in [c.name for c in ablate.design_configs(off)]
