"""qvit.deploy.arith and intmm against qvit.reference at zero tolerance: the requantizer
(ties, negative multipliers, per channel), the rounded mean, the shift exp (positive
arguments past the shift cap too), Shiftmax, ShiftGELU, I-LayerNorm; the integer GEMMs."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from qvit import reference as R
from qvit.deploy import arith, intmm
from qvit.deploy.convert import dyadic


def _np(t):
    return t.numpy().astype(np.int64)


def _eq(ours: torch.Tensor, ref) -> None:
    assert np.array_equal(_np(ours), np.asarray(ref).astype(np.int64))


def test_requantize_matches_reference():
    g = torch.Generator().manual_seed(0)
    z = torch.randint(-2**24, 2**24, (64, 6), generator=g)
    z[0] = torch.tensor([1, 3, 5, -1, -3, -5])  # ties at ratio 1/2
    scales = torch.tensor([1e-3, 2e-3, -5e-4, 0.5, 3.0, 7e-7], dtype=torch.float32)
    out_scale = torch.tensor([0.0625], dtype=torch.float32)
    m, e = dyadic(scales, out_scale)
    got = arith.requantize(z, m, e, (1 << (e - 1)) - 1)
    want = [[R.requantize(int(v), float(scales[c]), float(out_scale)) for c, v in
             enumerate(row)] for row in z.tolist()]
    _eq(got, want)
    assert (_np(arith.requantize(torch.tensor([1, 3, -1, -3]), torch.tensor(1 << 30),
                                 torch.tensor(31), torch.tensor((1 << 30) - 1)))
            == [0, 2, 0, -2]).all()  # halves to even


def test_dyadic_refuses_unreachable_shifts():
    with pytest.raises(ValueError, match="degenerate"):
        dyadic(torch.tensor([1e-12]), torch.tensor([1.0]))


def test_floor_div_is_integer_floor_division_up_to_its_bound():
    """One float64 division, floored, for int64 floor division: the integer quotient for
    |a| + |b| < 2^52, at the hardest cases too (a = k b - 1 with k b near the bound: the
    quotient one 1/|b| below an integer), for either sign and Python-int numerators."""
    g = torch.Generator().manual_seed(5)
    b = torch.randint(1, 2**26, (4000,), generator=g) * torch.where(
        torch.rand(4000, generator=g) < 0.5, -1, 1)
    k = torch.randint(0, 2**25, (4000,), generator=g)
    a = torch.cat([k * b - 1, k * b, k * b + 1, -(k * b) - 1, torch.randint(
        -2**51, 2**51, (4000,), generator=g)])
    bb = b.repeat(5)
    assert ((a.abs() + bb.abs()) < arith.FLOAT_DIVISION_BOUND).all()
    _eq(arith.floor_div(a, bb), torch.div(a, bb, rounding_mode="floor"))
    total = torch.cat([torch.arange(1, 5000), 2**31 - torch.arange(0, 5000)])
    _eq(arith.floor_div(arith.NORM_ONE, total), [arith.NORM_ONE // int(t) for t in total])
    _eq(arith.floor_div(torch.tensor([-7, 7, -8]), 2), [-4, 3, -4])


def test_round_div():
    s = torch.arange(-50, 51)
    for d in (1, 2, 4, 7, 48):
        _eq(arith.round_div(s, d), R.round_div(s.numpy(), d))
        want = [round(Fraction(int(v), d)) for v in s]  # Python's round: half to even
        _eq(arith.round_div(s, d), want)


@pytest.mark.parametrize("x0", [-1, -7, -116, -3000])
@pytest.mark.parametrize("n", [15, 23])
def test_shift_exp(x0, n):
    b = torch.cat([torch.arange(-400, 1), torch.arange(1, 400, 7)])  # positive: GELU's -max
    got = arith.shift_exp(b, torch.tensor(x0), n)
    want = R.shift_exp(b.numpy(), x0, n)
    small = np.asarray(want, dtype=object) < 2**40
    assert np.array_equal(_np(got)[small], np.asarray(want)[small].astype(np.int64))
    assert (_np(got)[~small] >= 2**39).all()  # capped, still beyond the clamp at 2^31


@pytest.mark.parametrize("bits", [8, 16])
def test_shiftmax(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randint(-128, 128, (5, 3, 17), generator=g)
    x[0, 0] = -10000  # masked entries
    x[0, 0, 3] = 5
    for x0 in (-3, -40):
        got = arith.shiftmax(x, torch.tensor(x0), 15, bits)
        _eq(got, R.shiftmax(x.numpy(), x0, 15, bits))
        assert int(got.max()) < 2 ** (bits - 1) and int(got.min()) >= 0


def test_shift_gelu():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (6, 40), generator=g)
    x[0] = -torch.arange(1, 41)  # every channel negative: exp(-max) of a positive argument
    for x0 in (-2, -15, -116):
        _eq(arith.shift_gelu(x, torch.tensor(x0), 23, 8), R.shift_gelu(x.numpy(), x0, 23, 8))


def test_int_layernorm():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(-2**15, 2**15, (7, 48), generator=g)
    x[0] = 3  # zero variance
    x[1] = torch.randint(-128, 128, (48,), generator=g)
    bias = torch.randint(-2**20, 2**20, (48,), generator=g)
    _eq(arith.int_layernorm(x, bias), R.int_layernorm(x.numpy(), bias.numpy()))


@pytest.mark.parametrize("shape", [(17, 24, 8), (1, 3, 5), (64, 192, 576), (33, 20, 7)])
def test_int_mm_exact(shape):
    m, k, n = shape
    g = torch.Generator().manual_seed(m)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    want = a.long() @ b.long()
    assert torch.equal(intmm.int_mm(a, b).long(), want)
    pm, pk, pn = intmm.pad_shapes(m, k, n)  # the CUDA padding, checked here on the CPU
    assert pm > 16 and pk % 8 == 0 and pn % 8 == 0
    ap = torch.nn.functional.pad(a, (0, pk - k, 0, pm - m))
    bp = torch.nn.functional.pad(b, (0, pn - n, 0, pk - k))
    assert torch.equal(torch._int_mm(ap, bp)[:m, :n].long(), want)


def test_exact_matmul_picks_an_exact_type():
    assert intmm.exact_dtype(64 * 2**14) == torch.float32
    assert intmm.exact_dtype(197 * 2**22) == torch.float64
    assert intmm.exact_dtype(2**60) == torch.int64
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 2**15, (2, 3, 50, 197), generator=g, dtype=torch.int16)
    b = torch.randint(-128, 128, (2, 3, 197, 64), generator=g, dtype=torch.int8)
    got = intmm.exact_matmul(a, b, 2**15, 2**7)
    assert torch.equal(got, a.long() @ b.long())


@pytest.mark.parametrize("lo, hi", [(0, 2**15), (-2**15, 2**15)])
def test_exact_matmul_of_a_16_bit_operand_by_its_bytes(lo, hi):
    """I-ViT DeiT's 16-bit softmax output times V (K = 197: K 2^15 2^7 > 2^24) as two
    float32 GEMMs of its high and low bytes: the integer product, at the extremes too
    (every partial sum of the high bytes' product near 2^24)."""
    assert intmm.byte_split_exact(197, 2**15, 2**7)
    assert not intmm.byte_split_exact(1024, 2**15, 2**7)  # (float64 there)
    g = torch.Generator().manual_seed(4)
    a = torch.randint(lo, hi, (2, 3, 50, 197), generator=g, dtype=torch.int32)
    a[0, 0] = hi - 1  # the largest partial sums: every a at its max, every b at -128
    a[0, 1] = lo
    b = torch.randint(-128, 128, (2, 3, 197, 64), generator=g, dtype=torch.int8)
    b[0, :2] = -128
    got = intmm.exact_matmul(a, b, max(hi - 1, -lo), 2**7)
    assert torch.equal(got, a.long() @ b.long())


@pytest.mark.parametrize("x0, n", [(-1, 15), (-9, 15), (-40, 15), (-333, 15), (-9, 23),
                                   (-70, 23)])
def test_exp_table_is_the_shift_exp_of_every_non_positive_argument(x0, n):
    """table[min(-b, K)] == shift_exp(b) for every b from 0 far past the saturation."""
    x0 = torch.tensor(x0)
    table = arith.exp_table(x0, n)
    k = table.numel() - 1
    b = -torch.arange(3 * k + 600)
    assert torch.equal(table[(-b).clamp_max(k)], arith.shift_exp(b, x0, n))
    assert arith.exp_table(torch.tensor(-2**20), 15) is None  # past EXP_TABLE_LIMIT


@pytest.mark.parametrize("bits, x0", [(16, -7), (8, -25), (16, -200)])
def test_shiftmax_by_table_equals_shiftmax(bits, x0):
    """int8 rows (DeiT) and int32 rows reaching far below the saturation (Swin's shift
    mask added to int8 scores)."""
    g = torch.Generator().manual_seed(bits)
    x0 = torch.tensor(x0)
    table = arith.exp_table(x0, 15)
    rows8 = torch.randint(-128, 128, (40, 197), generator=g, dtype=torch.int8)
    rows8[0] = 5  # a constant row
    masked = rows8[:, :49].to(torch.int32) + torch.where(
        torch.rand(40, 49, generator=g) < 0.5, -10_000, 0).to(torch.int32)
    for x in (rows8, masked):
        assert torch.equal(arith.shiftmax_by_table(x, table, bits),
                           arith.shiftmax(x, x0, 15, bits))


@pytest.mark.parametrize("x0", [-1, -6, -31, -300])
def test_gelu_table_holds_shift_gelu_and_its_requantizer_for_every_int8_pair(x0):
    """Every row maximum xm and every x <= xm: the table's entry equals ShiftGELU (23-bit
    exp, 8-bit sigmoid) of a row holding x and xm, requantized per tensor to int8."""
    x0 = torch.tensor(x0)
    m, e = dyadic(torch.tensor([3e-4]), torch.tensor([0.02]))
    half = (1 << (e - 1)) - 1
    table = arith.gelu_table(x0, 23, 8, m, e, half, 8)
    v = torch.arange(-128, 128)
    rows = torch.minimum(v.view(1, -1), v.view(-1, 1)).to(torch.int8)  # row i: max v[i]
    want = arith.clamp_bits(arith.requantize(arith.shift_gelu(rows, x0, 23, 8), m, e, half), 8)
    got = arith.gelu_by_table(rows, table)
    assert got.dtype == torch.int8
    assert torch.equal(got, want)
    assert (want != 0).any() and (want != want[-1, -1]).any()  # not a degenerate table


@pytest.mark.parametrize("k", [7, 192, 1023, 1024, 3072])
def test_float_gemm_exact_at_the_extremes(k):
    """The float32 GEMM of int8 operands in K chunks: the integer product where every
    partial sum is largest (-128 x -128 throughout), where the sum is odd (127 x 127 but
    one 1 x 2: float32 holds no odd integer past 2^24) and on random operands."""
    g = torch.Generator().manual_seed(k)
    a = torch.randint(-128, 128, (33, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, 17), generator=g, dtype=torch.int8)
    a[0], b[:, 0] = -128, -128
    a[1], b[:, 1] = 127, 127
    a[1, 0], b[0, 1] = 1, 2
    want = a.long() @ b.long()
    assert want[0, 0] == k * 2**14 and want[1, 1] == (k - 1) * 127**2 + 2
    got = intmm.float_gemm_exact(a, b, 128, 128)
    assert got.dtype == torch.int32 and torch.equal(got.long(), want)
    assert torch.equal(intmm.int_mm(a, b, "float32").long(), want)


def test_int_gemm_choice(monkeypatch):
    cpu = torch.device("cpu")
    for fast in (True, False):
        monkeypatch.setattr(intmm, "CPU_INT8_DOT_PRODUCTS", fast)
        assert intmm.resolve_int_gemm("auto", cpu) == ("int8" if fast else "float32")
    for vnni, amx in ((True, False), (False, True), (False, False)):
        monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda v=vnni: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda a=amx: a)
        assert intmm._cpu_has_int8_dot_products() is (vnni or amx)
    assert intmm.resolve_int_gemm("auto", torch.device("cuda")) == "int8"
    assert intmm.resolve_int_gemm("float32", torch.device("cuda")) == "float32"
    with pytest.raises(ValueError, match="int_gemm must be one of auto, int8, float32"):
        intmm.resolve_int_gemm("int4", cpu)


def _rq_exact(z: int, m: int, e: int) -> int:
    """round_half_even(z m / 2^e) on Python integers."""
    q, r = divmod(z * m, 1 << e)
    return q + (2 * r > 1 << e or (2 * r == 1 << e and q % 2 == 1))


def _ties(m: int, e: int, count: int) -> list[int]:
    """z with z m an odd multiple of 2^(e-1) (round half to even decides), |z m| < 2^62."""
    t = (m & -m).bit_length() - 1  # m = odd 2^t
    if t >= e:
        return []
    step = 1 << (e - t)  # z = z0 (mod 2^(e-t)) puts z m at an odd multiple of 2^(e-1)
    z0 = (pow(m >> t, -1, step) << (e - 1 - t)) % step
    limit = (1 << 62) // m
    return [s * (z0 + k * step) for k in range(count) for s in (1, -1)
            if z0 + k * step < limit]


@pytest.mark.parametrize("e", range(arith.FLOAT64_REQUANT_E[0], arith.FLOAT64_REQUANT_E[1] + 1))
def test_requantize_float64_gives_the_int64_integers(e):
    """Every e the float64 form takes; m over its range (odd, even, 2^30, 2^31 - 1); z over
    the whole |z m| < 2^62 (its ends), zero, and ties, the cases rounding half to even
    decides (the parity the even q keeps); against Python integers."""
    g = torch.Generator().manual_seed(e)
    ms = [1 << 30, (1 << 31) - 1, (1 << 30) + 1, (1 << 30) + (1 << 16)]
    ms += torch.randint(1 << 30, 1 << 31, (4,), generator=g).tolist()
    for m in ms:
        limit = ((1 << 62) - 1) // m
        zs = [0, 1, -1, limit, -limit, limit - 1, -(limit - 1)] + _ties(m, e, 6)
        zs += torch.randint(-limit, limit + 1, (40,), generator=g).tolist()
        z = torch.tensor(zs)
        mt, et = torch.tensor(m), torch.tensor(e)
        assert arith.float64_requant_exact(mt, et)
        got = arith.requantize_float64(z, *arith.split_multiplier(mt, et))
        assert got.dtype == torch.float64
        want = [_rq_exact(v, m, e) for v in zs]
        assert got.to(torch.int64).tolist() == want, (m, e)
        assert arith.requantize(z, mt, et, (1 << (et - 1)) - 1).tolist() == want


def test_requantize_float64_ties_are_many():
    """The tie list above holds ties (so the parity checks run), for odd and even m."""
    for m, e in (((1 << 30) + 1, 25), (3 << 29, 31), (1 << 30, 52), ((1 << 30) + (1 << 16), 45)):
        zs = _ties(m, e, 3)
        assert zs and all((z * m) % (1 << e) == 1 << (e - 1) for z in zs)


def test_split_multiplier_is_exact_and_float64_refuses_what_it_cannot_hold():
    for e in (10, 31, 52):
        for m in ((1 << 30) + 12345, (1 << 31) - 1):
            mh, ml = arith.split_multiplier(torch.tensor(m), torch.tensor(e))
            assert Fraction(mh.item()) == Fraction(m >> 16 << 16, 1 << e)
            assert Fraction(ml.item()) == Fraction(m & 0xFFFF, 1 << e)
    ok = torch.tensor([1 << 30, (1 << 31) - 1])
    assert arith.float64_requant_exact(ok, torch.tensor([10, 52]))
    assert not arith.float64_requant_exact(ok, torch.tensor([10, 53]))  # the last sum
    assert not arith.float64_requant_exact(ok, torch.tensor([9, 52]))  # the result
    assert not arith.float64_requant_exact(torch.tensor([1 << 29]), torch.tensor(30))


def test_requant_choice(monkeypatch):
    from qvit.deploy import layers
    cpu = torch.device("cpu")
    for fast in (True, False):
        monkeypatch.setattr(layers, "FLOAT64_REQUANT_FAST", fast)
        assert layers.resolve_requant("auto", cpu) == ("float64" if fast else "int64")
        assert layers.resolve_requant("auto", torch.device("cuda")) == "int64"
    assert layers.resolve_requant("float64", cpu) == "float64"
    with pytest.raises(ValueError, match="requant must be one of auto, int64, float64"):
        layers.check_requant("int32")


@pytest.mark.parametrize("c", [1, 48, 64, 192, 3072])
def test_int_layernorm_float64_gives_the_int64_integers(c):
    """Random int16 rows, rows at the int16 extremes (the largest sums of squares), constant
    rows (std 0 -> the clamp's path), int8 rows; biases at the int32 ends."""
    g = torch.Generator().manual_seed(c)
    rows = [torch.randint(-2**15, 2**15, (16, c), generator=g),
            torch.tensor([[-2**15, 2**15 - 1] * c])[:, :c].repeat(2, 1),
            torch.full((2, c), -2**15), torch.full((2, c), 7),
            torch.randint(-128, 128, (8, c), generator=g)]
    bias = torch.randint(-2**31, 2**31, (c,), generator=g)
    bias[0], bias[-1] = -2**31, 2**31 - 1
    for x, dtype in zip(rows, (torch.int16,) * 4 + (torch.int8,), strict=True):
        x = x.to(dtype)
        got = arith.int_layernorm(x, bias, torch.float64)
        assert got.dtype == torch.float64
        assert torch.equal(got.to(torch.int64), arith.int_layernorm(x, bias)), (c, dtype)
