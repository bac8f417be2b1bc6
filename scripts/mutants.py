"""A curated mutation check of qvit (`nox -s mutants`): each mutant is one subtle change of
`qvit/` applied in a scratch copy of the repository; a fast selection of the test suite
must fail on it. Prints a table of caught / missed and exits non-zero if any mutant
survives (or if the unmutated copy does not pass, or a mutant no longer applies).

    python scripts/mutants.py                 # all mutants
    python scripts/mutants.py -k frexp        # those whose name contains "frexp"
    python scripts/mutants.py --list

Each mutant names the tests that should catch it (a subset, for speed); they run with -x,
one torch thread, and a timeout (a timeout counts as caught only if the suite then fails:
it does not, it is reported as "timeout").
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

REF = "tests/qvit/test_reference.py"
PRIM = "tests/qvit/test_primitives.py"
FUSED = "tests/qvit/test_fused.py"
CACHES = "tests/qvit/test_caches.py"
MODULES = "tests/qvit/test_modules.py"
MODELS = "tests/qvit/test_models.py"
PARITY = "tests/qvit/test_parity.py"
# node ids, not -k: a -k expression would deselect the other files' tests of a selection
PARITY_LITE = [f"{PARITY}::{t}" for t in (
    "test_best_is_legacy_bit_for_bit_through_training",
    "test_best_equals_legacy_through_five_adamw_steps_from_scratch",
    "test_every_requantizer_equals_the_integer_deployment")]
LEAN = "tests/qvit/test_lean.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str


M = Mutant
MUTANTS = [
    # --- rounding modes ---------------------------------------------------------------------
    M("requant_fused_half_up", "qvit/primitives.py",
      "return z_int.to(dtype).mul_(m.to(dtype) / (2.0 ** e).to(dtype)).round_()",
      "return z_int.to(dtype).mul_(m.to(dtype) / (2.0 ** e).to(dtype)).add_(0.5).floor_()",
      (REF,), "fused requantization rounds half up instead of half to even"),
    M("requant_half_up", "qvit/primitives.py",
      "return torch.round(z_int.to(dtype) * m.to(dtype) / (2.0 ** e).to(dtype))",
      "return torch.floor(z_int.to(dtype) * m.to(dtype) / (2.0 ** e).to(dtype) + 0.5)",
      (REF,), "legacy requantization rounds half up"),
    M("requant_input_trunc", "qvit/primitives.py",
      "out = _requantize_int(torch.round(pre_act / in_scale), in_scale, z_scale, **kw)",
      "out = _requantize_int(torch.trunc(pre_act / in_scale), in_scale, z_scale, **kw)",
      (REF,), "requantizer input rounded toward zero"),
    M("frexp_drops_last_bit", "qvit/primitives.py",
      "m = torch.floor(t.abs() + 0.5).copysign_(t)",
      "m = (torch.floor(t.abs() / 2 + 0.5) * 2).copysign_(t)",
      (PRIM, REF, *PARITY_LITE), "frexp_device keeps 30 mantissa bits, not 31"),
    M("frexp_ties_toward_plus_inf", "qvit/primitives.py",
      "m = torch.floor(t.abs() + 0.5).copysign_(t)", "m = torch.floor(t + 0.5)",
      (REF,), "frexp_device ties to +inf (negative ties wrong), the old floor(x + 0.5)"),
    M("round_ste_half_up", "qvit/primitives.py",
      "return _RoundSTELean.apply(x)", "return torch.floor(x + 0.5)",
      (REF,), "lean round STE rounds half up (and drops its gradient node)"),
    # --- off-by-one bit widths and clamps ---------------------------------------------------
    M("scale_bits_off_by_one", "qvit/primitives.py",
      "        n = 2 ** (num_bits - 1) - 1\n        return (torch.max(-min_val, max_val)",
      "        n = 2 ** (num_bits - 1)\n        return (torch.max(-min_val, max_val)",
      (PRIM, REF), "symmetric scale divides by 2^(b-1) instead of 2^(b-1) - 1"),
    M("requant_clamp_symmetric", "qvit/primitives.py",
      "return torch.clamp(out, -n - 1, n) if num_bits",
      "return torch.clamp(out, -n, n) if num_bits", (REF,),
      "legacy requantizer clamps to [-n, n] (loses -2^(b-1))"),
    M("requant_fused_clamp_high", "qvit/primitives.py",
      "return out.clamp_(-n - 1, n) if num_bits", "return out.clamp_(-n - 1, n + 1) if num_bits",
      (REF,), "fused requantizer clamps one step too high"),
    M("quantize_clamp_symmetric", "qvit/primitives.py",
      "return _quantize_ste(x, s, -n - 1, n, inline_ste",
      "return _quantize_ste(x, s, -n, n, inline_ste", (REF,),
      "symmetric quantizer clamps to [-n, n]"),
    M("exp_shift_quotient_bits", "qvit/primitives.py",
      "x_int = x_int + floor_ste(x_int / 2, **ste) - floor_ste(x_int / 2**4, **ste)",
      "x_int = x_int + floor_ste(x_int / 2, **ste) - floor_ste(x_int / 2**3, **ste)",
      (PRIM,), "log2(e) approximated with x/8 instead of x/16 (legacy chain)"),
    # --- cache keys ---------------------------------------------------------------------------
    M("weight_key_without_version", "qvit/modules.py",
      "if cacheable and key_matches(self._weight_cache and self._weight_cache[0], w):",
      "if cacheable and self._weight_cache is not None and self._weight_cache[0][0][0] is w:",
      (CACHES,), "weight cache keyed on the tensor only, not its version"),
    M("weight_cache_serves_grad", "qvit/modules.py",
      "        cacheable = (self._eval_cached and not self.training and caches_enabled()\n"
      "                     and not (torch.is_grad_enabled() and w.requires_grad))",
      "        cacheable = self._eval_cached and not self.training and caches_enabled()",
      (PARITY, "-k", "best_is_legacy"), "weight cache serves an eval-mode forward that needs "
      "its gradient (an optimizer step taken in eval)"),
    M("x0_never_refreshed", "qvit/modules.py",
      "if c is None or not key_matches(c[0], scaling_factor):\n"
      "            c = self._x0_cache",
      "if c is None:\n            c = self._x0_cache", (CACHES,),
      "x0 cached once and never refreshed (the seed's change 12)"),
    M("x0_key_without_version", "qvit/modules.py",
      "if c is None or not key_matches(c[0], scaling_factor):\n"
      "            c = self._x0_cache",
      "if c is None or c[0][0][0] is not scaling_factor:\n            c = self._x0_cache",
      (CACHES,), "x0 keyed on the scale tensor only, not its version"),
    M("act_scale_cache_unkeyed", "qvit/modules.py",
      "elif not self._eval_scale_cached or not self._scale_is_current():",
      "elif not self._eval_scale_cached:", (CACHES,),
      "QuantAct's eval scale not re-derived when its range is written in place (EMA)"),
    M("rel_pos_key_table_only", "qvit/blocks.py",
      "return (self.relative_position_bias_table, q.min_val, q.max_val, q.act_scaling_factor)",
      "return (self.relative_position_bias_table,)", (CACHES, "-k", "swin"),
      "relative position bias keyed on its table only, not its quantizer's range"),
    # --- momentum order, ranges -------------------------------------------------------------
    M("momentum_swapped_best", "qvit/modules.py",
      "return (torch.where(first, cur_min, self.min_val * m + cur_min * (1 - m)),",
      "return (torch.where(first, cur_min, cur_min * m + self.min_val * (1 - m)),",
      tuple(PARITY_LITE), "running min update with the momentum on the wrong term (best)"),
    M("momentum_swapped_legacy", "qvit/modules.py",
      "self.max_val * m + cur_max * (1 - m)\n",
      "self.max_val * (1 - m) + cur_max * m\n",
      tuple(PARITY_LITE), "running max update with the momentum swapped (legacy)"),
    M("range_in_bf16", "qvit/modules.py",
      "return torch.aminmax(x_act) if aminmax",
      "return tuple(t.float() for t in torch.aminmax(x_act.bfloat16())) if aminmax",
      tuple(PARITY_LITE), "best's range observation computed in bf16"),
    # --- scale shapes --------------------------------------------------------------------------
    M("weight_scale_per_tensor", "qvit/modules.py",
      "lo, hi = ((v.amin(dim=1), v.amax(dim=1)) if self._lean",
      "lo, hi = ((v.amin().expand(v.shape[0]), v.amax().expand(v.shape[0])) if self._lean",
      (MODULES,),
      "weights quantized per tensor instead of per output channel"),
    # --- gradient scaling and order ---------------------------------------------------------
    M("quantize_grad_reciprocal", "qvit/primitives.py",
      "        return grad_output / s, None, None, None\n",
      "        return grad_output * (1.0 / s), None, None, None\n",
      (FUSED, *PARITY_LITE), "lean quantizer backward multiplies by 1/s (1-ulp differences)"),
    M("exp_grad_single_multiply", "qvit/fused.py",
      "return (g_c / 2**4).neg_().add_(g_c).add_(g_c / 2)", "return g_c * 1.4375",
      (FUSED,), "fused exp backward sums b's three uses in one multiply (not autograd's order)"),
    M("reciprocal_grad_order", "qvit/fused.py",
      "g_sum = g_factor.mul_(INT32_MAX).neg_().mul_(recip * recip)",
      "g_sum = g_factor.mul_(INT32_MAX).neg_().mul_(recip).mul_(recip)",
      (FUSED,), "fused normalization backward multiplies by r twice, not by r*r"),
    M("newton_grad_factored", "qvit/primitives.py",
      "g = gs.sub_(torch.div(vks[i], ks[i]).mul_(gs))", "g = gs * (1 - vks[i] / ks[i])",
      (FUSED,), "Newton sqrt backward factored (different rounding)"),
    M("max_tie_full_gradient", "qvit/fused.py",
      "g_c = torch.where(tie, g_d / 2, g_d)", "g_c = torch.where(tie, g_d, g_d)",
      (FUSED,), "fused exp backward gives a tied max the full gradient"),
    M("clamp_max_mask_strict", "qvit/fused.py",
      "g_sum = torch.where(exp_sum >= 2.0**31, 0.0, g_sum)",
      "g_sum = torch.where(exp_sum > 2.0**31, 0.0, g_sum)",
      (FUSED,), "fused normalization passes gradient at a sum of 2^31"),
    # --- the lean exact nodes (qvit/lean.py) --------------------------------------------------
    M("lean_multiplier_30_bits", "qvit/lean.py",
      "_KEEP_31 = -(1 << (52 - 30))", "_KEEP_31 = -(1 << (52 - 29))",
      (LEAN,), "lean dyadic multiplier keeps 30 significant bits, not 31"),
    M("lean_multiplier_truncates", "qvit/lean.py",
      "return ((bits + _ROUND_BIT) & _KEEP_31).view(torch.float64)",
      "return (bits & _KEEP_31).view(torch.float64)",
      (LEAN,), "lean dyadic multiplier truncates instead of rounding ties away from zero"),
    M("lean_pow2_exponent_bias", "qvit/lean.py",
      "return bits.add_(127).bitwise_left_shift_(23).view(torch.float32)",
      "return bits.add_(126).bitwise_left_shift_(23).view(torch.float32)",
      (LEAN,), "2^k from exponent bits with the bias off by one"),
    M("lean_exp_quotient_bits", "qvit/lean.py",
      "c.sub_(b.mul_(0.0625).floor_())  # - floor(b / 16)",
      "c.sub_(b.mul_(0.125).floor_())  # - floor(b / 16)",
      (LEAN,), "lean int exp approximates log2(e) with x/8 instead of x/16"),
    M("lean_max_tie_full_weight", "qvit/lean.py",
      "w = torch.sub(c, low, out=b).sign_().add_(1).mul_(0.5)",
      "w = torch.sub(c, low, out=b).sign_().add_(1).clamp_(max=1)",
      (LEAN, *PARITY_LITE), "lean exp backward gives a tied max(c, n x0) the full gradient"),
    M("lean_layernorm_mean_floor", "qvit/lean.py",
      "mean = y.mean(dim=-1, keepdim=True).round_()",
      "mean = y.mean(dim=-1, keepdim=True).floor_()",
      (LEAN,), "lean LayerNorm rounds the mean down instead of to nearest"),
    M("lean_layernorm_grad_order", "qvit/lean.py",
      "g_std = g_factor.mul_(INT32_MAX).neg_().mul_(recip * recip)",
      "g_std = g_factor.mul_(INT32_MAX).neg_().mul_(recip).mul_(recip)",
      (LEAN, *PARITY_LITE), "lean LayerNorm backward multiplies by r twice, not by r*r"),
    M("lean_act_quant_divides", "qvit/lean.py",
      "return torch.mul(1.0 / scale, x).round_().clamp_(lo, hi).mul_(scale)",
      "return torch.div(x, scale).round_().clamp_(lo, hi).mul_(scale)",
      (LEAN, *PARITY_LITE), "lean QuantAct quantizes x / s instead of the legacy (1/s) * x"),
    # --- drop path ------------------------------------------------------------------------------
    M("drop_path_timm_arithmetic", "qvit/blocks.py",
      "return x.div(keep) * mask", "return x * mask.div_(keep)",
      (MODELS, "-k", "drop_path"), "I-ViT drop path scales like timm's (x * (mask / keep))"),
]


def _copy_repo(dst: Path) -> None:
    for rel in ("qvit", "tests/qvit", "tests/__init__.py", "tests/conftest.py",
                "pyproject.toml", "README.md"):
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dst / rel, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _run(cwd: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float]:
    env = dict(os.environ, PYTHONPATH=str(cwd), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
           "-o", "addopts=--import-mode=importlib", *tests]
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t
    return ("passed" if r.returncode == 0 else "failed"), time.perf_counter() - t


def _try(m: Mutant, free: queue.Queue, timeout: float) -> tuple[Mutant, str, float]:
    """Apply ``m`` in a free scratch copy, run its tests, restore the copy."""
    scratch = free.get()
    try:
        f = scratch / m.path
        text = f.read_text()
        if text.count(m.old) != 1:
            return (m, "stale", 0.0)  # the code moved: update the mutant
        f.write_text(text.replace(m.old, m.new))
        try:
            status, secs = _run(scratch, m.tests, timeout)
        finally:
            f.write_text(text)
        result = {"failed": "caught", "passed": "MISSED"}.get(status, status)
        print(f"{m.name:30s} {result:8s} {secs:6.1f}s", file=sys.stderr, flush=True)
        return (m, result, secs)
    finally:
        free.put(scratch)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only mutants whose name contains this")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--jobs", type=int, default=1,
                    help="mutants tested at once, each in its own scratch copy (one core each)")
    ap.add_argument("--quick", action="store_true",
                    help="only mutants whose tests avoid the model trajectories (minutes)")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if args.k in m.name and not (
        args.quick and any(t in (CACHES, PARITY) for t in m.tests))]
    if args.list:
        for m in chosen:
            print(f"{m.name:30s} {m.path:20s} {m.why}")
        return 0
    with tempfile.TemporaryDirectory(prefix="qvit-mutants-") as tmp:
        copies = [Path(tmp) / f"repo{i}" for i in range(max(1, args.jobs))]
        for scratch in copies:
            _copy_repo(scratch)
        scratch = copies[0]
        which = subprocess.run([sys.executable, "-c", "import qvit; print(qvit.__file__)"],
                               cwd=scratch, env=dict(os.environ, PYTHONPATH=str(scratch)),
                               capture_output=True, text=True).stdout.strip()
        if not which.startswith(str(scratch)):
            print(f"the scratch copy does not shadow qvit (imports {which})", file=sys.stderr)
            return 2
        # the unmutated copy must pass every selection, or a failure proves nothing
        selections = sorted({m.tests for m in chosen})
        for tests in selections:
            status, secs = _run(scratch, tests, args.timeout)
            if status != "passed":
                print(f"unmutated copy: {' '.join(tests)} {status}", file=sys.stderr)
                return 2
        free: queue.Queue = queue.Queue()
        for c in copies:
            free.put(c)
        with ThreadPoolExecutor(len(copies)) as pool:  # each worker owns one scratch copy
            rows = list(pool.map(lambda m: _try(m, free, args.timeout), chosen))
    caught = sum(r[1] == "caught" for r in rows)
    print("\n| mutant | file | what | result | seconds |\n|---|---|---|---|---|")
    for m, status, secs in rows:
        print(f"| `{m.name}` | {m.path} | {m.why} | {status} | {secs:.0f} |")
    print(f"\nmutation score: {caught}/{len(rows)} caught")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
