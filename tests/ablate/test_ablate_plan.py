"""Every repeat is a block holding every (model, config) pair, shuffled per block, seeded."""

from harness import ablate

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
    for r in ablate.plan(s):
        f = r.fields(s)
        assert f["seed"] == s.seed + r.block and f["repeat"] == f["block"] == r.block
        assert f["flags"] == r.config.flags and f["warmup_epochs"] == s.warmup_epochs
