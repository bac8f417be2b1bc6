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
CACHES = "tests/qvit/test_caches.py"
MODULES = "tests/qvit/test_modules.py"
MODELS = "tests/qvit/test_models.py"
PARITY = "tests/qvit/test_parity.py"
# the tests of each operation (qvit/ops/<operation>.py)
STE = "tests/qvit/ops/test_ste.py"
QUANTIZE = "tests/qvit/ops/test_quantize.py"
ACT_RANGE = "tests/qvit/ops/test_act_range.py"
REQUANT = "tests/qvit/ops/test_requant.py"
INT_EXP = "tests/qvit/ops/test_int_exp.py"
LAYERNORM = "tests/qvit/ops/test_layernorm.py"
LINEAR = "tests/qvit/ops/test_linear.py"
WINDOWS = "tests/qvit/ops/test_windows.py"
PATHS = "tests/qvit/test_paths.py"
DEPLOY_ARITH = "tests/qvit/deploy/test_arith.py"
# node ids, not -k: a -k expression would deselect the other files' tests of a selection
PARITY_LITE = [f"{PARITY}::{t}" for t in (
    "test_best_is_legacy_bit_for_bit_through_training",
    "test_best_equals_legacy_through_five_adamw_steps_from_scratch",
    "test_every_requantizer_equals_the_integer_deployment")]
# the declaration checks of qvit.paths (seconds: no model traces)
PATHS_DECL = tuple(f"{PATHS}::{t}" for t in (
    "test_every_inert_move_has_a_declared_reason",
    "test_every_declaration_makes_something_inert",
    "test_best_acts_with_every_flag_the_table_does_not_name",
    "test_why_same_names_each_moved_flag",
    "test_parse_refuses_a_flag_that_cannot_act_and_names_old_spellings",
    "test_parse_accepts_what_acts"))

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
    M("requant_fused_half_up", "qvit/ops/requant.py",
      "return z_int.to(dtype).mul_(m.to(dtype) / (2.0 ** e).to(dtype)).round_()",
      "return z_int.to(dtype).mul_(m.to(dtype) / (2.0 ** e).to(dtype)).add_(0.5).floor_()",
      (REF,), "fused requantization rounds half up instead of half to even"),
    M("requant_half_up", "qvit/ops/requant.py",
      "return torch.round(z_int.to(dtype) * m.to(dtype) / (2.0 ** e).to(dtype))",
      "return torch.floor(z_int.to(dtype) * m.to(dtype) / (2.0 ** e).to(dtype) + 0.5)",
      (REF,), "legacy requantization rounds half up"),
    M("requant_input_trunc", "qvit/ops/requant.py",
      "out = _requantize_int(torch.round(pre_act / in_scale), in_scale, z_scale, **kw)",
      "out = _requantize_int(torch.trunc(pre_act / in_scale), in_scale, z_scale, **kw)",
      (REF,), "requantizer input rounded toward zero"),
    M("frexp_drops_last_bit", "qvit/ops/requant.py",
      "m = torch.floor(t.abs() + 0.5).copysign_(t)",
      "m = (torch.floor(t.abs() / 2 + 0.5) * 2).copysign_(t)",
      (REQUANT, REF), "frexp_device keeps 30 mantissa bits, not 31"),
    M("frexp_ties_toward_plus_inf", "qvit/ops/requant.py",
      "m = torch.floor(t.abs() + 0.5).copysign_(t)", "m = torch.floor(t + 0.5)",
      (REF,), "frexp_device ties to +inf (negative ties wrong), the old floor(x + 0.5)"),
    M("round_ste_half_up", "qvit/ops/ste.py",
      '"lean": _RoundSTELean.apply}', '"lean": lambda x: torch.floor(x + 0.5)}',
      (STE,), "lean round STE rounds half up (and drops its gradient node)"),
    # --- off-by-one bit widths and clamps ---------------------------------------------------
    M("scale_bits_off_by_one", "qvit/ops/quantize.py",
      "        n = 2 ** (num_bits - 1) - 1\n        return (torch.max(-min_val, max_val)",
      "        n = 2 ** (num_bits - 1)\n        return (torch.max(-min_val, max_val)",
      (QUANTIZE,), "symmetric scale divides by 2^(b-1) instead of 2^(b-1) - 1"),
    M("requant_clamp_symmetric", "qvit/ops/requant.py",
      "return torch.clamp(out, -n - 1, n) if num_bits",
      "return torch.clamp(out, -n, n) if num_bits", (REF,),
      "legacy requantizer clamps to [-n, n] (loses -2^(b-1))"),
    M("requant_fused_clamp_high", "qvit/ops/requant.py",
      "return out.clamp_(-n - 1, n) if num_bits", "return out.clamp_(-n - 1, n + 1) if num_bits",
      (REF,), "fused requantizer clamps one step too high"),
    M("quantize_clamp_symmetric", "qvit/ops/quantize.py",
      "return _quantize_ste(x, s, -n - 1, n, ste, constants)",
      "return _quantize_ste(x, s, -n, n, ste, constants)", (QUANTIZE,),
      "symmetric quantizer clamps to [-n, n]"),
    M("exp_shift_quotient_bits", "qvit/ops/int_exp.py",
      "x_int = x_int + floor(x_int / 2) - floor(x_int / 2**4)",
      "x_int = x_int + floor(x_int / 2) - floor(x_int / 2**3)",
      (INT_EXP,), "log2(e) approximated with x/8 instead of x/16 (legacy chain)"),
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
      "            c = (source_key(scaling_factor), int_exp",
      "if c is None:\n            c = (source_key(scaling_factor), int_exp", (CACHES,),
      "x0 cached once and never refreshed (the seed's change 12)"),
    M("x0_key_without_version", "qvit/modules.py",
      "if c is None or not key_matches(c[0], scaling_factor):\n"
      "            c = (source_key(scaling_factor), int_exp",
      "if c is None or c[0][0][0] is not scaling_factor:\n"
      "            c = (source_key(scaling_factor), int_exp",
      (CACHES,), "x0 keyed on the scale tensor only, not its version"),
    M("act_scale_cache_unkeyed", "qvit/modules.py",
      "elif not self._eval_scale_cached or not self._scale_is_current():",
      "elif not self._eval_scale_cached:", (CACHES,),
      "QuantAct's eval scale not re-derived when its range is written in place (EMA)"),
    M("rel_pos_key_table_only", "qvit/blocks.py",
      "return (self.relative_position_bias_table, q.min_val, q.max_val, q.act_scaling_factor)",
      "return (self.relative_position_bias_table,)", (CACHES, "-k", "swin"),
      "relative position bias keyed on its table only, not its quantizer's range"),
    # --- momentum order, ranges (qvit/ops/act_range.py) ---------------------------------------
    M("momentum_swapped_best", "qvit/ops/act_range.py",
      "return (torch.where(first, cur_min, min_val * m + cur_min * (1 - m)),",
      "return (torch.where(first, cur_min, cur_min * m + min_val * (1 - m)),",
      (ACT_RANGE, *PARITY_LITE),
      "running min update with the momentum on the wrong term (best: the where check)"),
    M("momentum_swapped_legacy", "qvit/ops/act_range.py",
      "max_val * m + cur_max * (1 - m)\n",
      "max_val * (1 - m) + cur_max * m\n",
      (ACT_RANGE, *PARITY_LITE),
      "running max update with the momentum swapped (legacy: the sync check)"),
    M("range_in_bf16", "qvit/ops/act_range.py",
      "return torch.aminmax(x) if aminmax",
      "return tuple(t.float() for t in torch.aminmax(x.bfloat16())) if aminmax",
      (ACT_RANGE, *PARITY_LITE), "best's range observation computed in bf16"),
    # --- scale shapes --------------------------------------------------------------------------
    M("weight_scale_per_tensor", "qvit/ops/linear.py",
      "return v.amin(dim=1), v.amax(dim=1)",
      "return v.amin().expand(v.shape[0]), v.amax().expand(v.shape[0])",
      (LINEAR, MODULES),
      "weights quantized per tensor instead of per output channel (linear_impl=lean)"),
    # --- gradient scaling and order ---------------------------------------------------------
    M("quantize_grad_reciprocal", "qvit/ops/quantize.py",
      "        return grad_output / s, None, None, None, None\n",
      "        return grad_output * (1.0 / s), None, None, None, None\n",
      (QUANTIZE, *PARITY_LITE),
      "lean quantizer backward multiplies by 1/s (1-ulp differences)"),
    M("exp_grad_single_multiply", "qvit/ops/int_exp.py",
      "return (g_c / 2**4).neg_().add_(g_c).add_(g_c / 2)", "return g_c * 1.4375",
      (INT_EXP,),
      "fused exp backward sums b's three uses in one multiply (not autograd's order)"),
    M("reciprocal_grad_order", "qvit/ops/int_exp.py",
      "g_sum = g_factor.mul_(INT32_MAX).neg_().mul_(recip * recip)",
      "g_sum = g_factor.mul_(INT32_MAX).neg_().mul_(recip).mul_(recip)",
      (INT_EXP,), "fused normalization backward multiplies by r twice, not by r*r"),
    M("newton_grad_factored", "qvit/ops/layernorm.py",
      "g = gs.sub_(torch.div(vks[i], ks[i]).mul_(gs))", "g = gs * (1 - vks[i] / ks[i])",
      (LAYERNORM,), "Newton sqrt backward factored (different rounding)"),
    M("max_tie_full_gradient", "qvit/ops/int_exp.py",
      "g_c = torch.where(tie, g_d / 2, g_d)", "g_c = torch.where(tie, g_d, g_d)",
      (INT_EXP,), "fused exp backward gives a tied max the full gradient"),
    M("clamp_max_mask_strict", "qvit/ops/int_exp.py",
      "g_sum = torch.where(exp_sum >= 2.0**31, 0.0, g_sum)",
      "g_sum = torch.where(exp_sum > 2.0**31, 0.0, g_sum)",
      (INT_EXP,), "fused normalization passes gradient at a sum of 2^31"),
    # --- the lean exact nodes ----------------------------------------------------------------
    M("lean_multiplier_30_bits", "qvit/ops/requant.py",
      "_KEEP_31 = -(1 << (52 - 30))", "_KEEP_31 = -(1 << (52 - 29))",
      (REQUANT,), "lean dyadic multiplier keeps 30 significant bits, not 31"),
    M("lean_multiplier_truncates", "qvit/ops/requant.py",
      "return ((bits + _ROUND_BIT) & _KEEP_31).view(torch.float64)",
      "return (bits & _KEEP_31).view(torch.float64)",
      (REQUANT,), "lean dyadic multiplier truncates instead of rounding ties away from zero"),
    M("lean_pow2_exponent_bias", "qvit/ops/int_exp.py",
      "return bits.add_(127).bitwise_left_shift_(23).view(torch.float32)",
      "return bits.add_(126).bitwise_left_shift_(23).view(torch.float32)",
      (INT_EXP,), "2^k from exponent bits with the bias off by one"),
    M("lean_exp_quotient_bits", "qvit/ops/int_exp.py",
      "c.sub_(b.mul_(0.0625).floor_())  # - floor(b / 16)",
      "c.sub_(b.mul_(0.125).floor_())  # - floor(b / 16)",
      (INT_EXP,), "lean int exp approximates log2(e) with x/8 instead of x/16"),
    M("lean_max_tie_full_weight", "qvit/ops/int_exp.py",
      "w = torch.sub(c, low, out=b).sign_().add_(1).mul_(0.5)",
      "w = torch.sub(c, low, out=b).sign_().add_(1).clamp_(max=1)",
      (INT_EXP, *PARITY_LITE),
      "lean exp backward gives a tied max(c, n x0) the full gradient"),
    M("lean_layernorm_mean_floor", "qvit/ops/layernorm.py",
      "mean = y.mean(dim=-1, keepdim=True).round_()",
      "mean = y.mean(dim=-1, keepdim=True).floor_()",
      (LAYERNORM,), "lean LayerNorm rounds the mean down instead of to nearest"),
    M("lean_layernorm_grad_order", "qvit/ops/layernorm.py",
      "g_std = g_factor.mul_(INT32_MAX).neg_().mul_(recip * recip)",
      "g_std = g_factor.mul_(INT32_MAX).neg_().mul_(recip).mul_(recip)",
      (LAYERNORM, *PARITY_LITE), "lean LayerNorm backward multiplies by r twice, not by r*r"),
    M("lean_act_quant_divides", "qvit/ops/quantize.py",
      "return torch.mul(1.0 / scale, x).round_().clamp_(lo, hi).mul_(scale)",
      "return torch.div(x, scale).round_().clamp_(lo, hi).mul_(scale)",
      (QUANTIZE, *PARITY_LITE),
      "lean QuantAct quantizes x / s instead of the legacy (1/s) * x"),
    # --- drop path ------------------------------------------------------------------------------
    M("drop_path_timm_arithmetic", "qvit/blocks.py",
      "return x.div(keep) * mask", "return x * mask.div_(keep)",
      (MODELS, "-k", "drop_path"), "I-ViT drop path scales like timm's (x * (mask / keep))"),
    # --- Swin's windows by one gather (qvit/ops/windows.py, compile_model's shared code) ------
    M("window_gather_back_by_the_order", "qvit/blocks.py",
      "return gather_tokens(windows.reshape(B, L, C), self.window_inverse,\n"
      "                                 self.window_order), scale",
      "return gather_tokens(windows.reshape(B, L, C), self.window_order,\n"
      "                                 self.window_inverse), scale",
      (WINDOWS,), "a block's windows gathered back by the order instead of its inverse"),
    # --- what a flag combination runs (qvit/flags.py declarations, qvit/paths.py) -------------
    M("x0_cache_requires_dropped", "qvit/flags.py",
      '"IntGELU/IntSoftmax cache x0_int = floor(-1/scale) in eval",\n'
      '        requires={True: {"cache_eval_act_scale": (True,)}})',
      '"IntGELU/IntSoftmax cache x0_int = floor(-1/scale) in eval")',
      PATHS_DECL, "cache_exp_x0 declared without its requires on cache_eval_act_scale"),
    M("ste_overrides_wrong_value", "qvit/flags.py",
      'overrides={"lean": {"inline_ste": "every STE is the lean Function"}})',
      'overrides={"reference": {"inline_ste": "every STE is the lean Function"}})',
      PATHS_DECL, "ste_impl's override of inline_ste declared on the wrong value (reference)"),
    M("layernorm_overrides_wrong_flag", "qvit/flags.py",
      'overrides={"lean": {"layernorm_newton": "ste and no_grad_sqrt_grad run as one node "',
      'overrides={"lean": {"inline_ste": "ste and no_grad_sqrt_grad run as one node "',
      PATHS_DECL, "layernorm_impl=lean declared to override inline_ste, not layernorm_newton"),
    M("device_frexp_requires_on_fused", "qvit/flags.py",
      'requires={"device_frexp": {"use_frexp": (True,)}})',
      'requires={"fused": {"use_frexp": (True,)}})',
      PATHS_DECL, "requant_impl's requires on use_frexp declared on fused, not device_frexp"),
    M("paths_device_frexp_on_host", "qvit/paths.py",
      'elif f.requant_impl == "reference":\n        frexp = "host"',
      'elif f.requant_impl in ("reference", "device_frexp"):\n        frexp = "host"',
      PATHS_DECL, "Paths.of resolves requant_impl=device_frexp to the host frexp"),
    M("paths_x0_cached_without_act_scale", "qvit/paths.py",
      'exp_x0_eval="cached" if f.cache_exp_x0 and f.cache_eval_act_scale else "every_call"',
      'exp_x0_eval="cached" if f.cache_exp_x0 else "every_call"',
      PATHS_DECL, "Paths.of caches x0 in eval without cache_eval_act_scale (keys never hit)"),
    M("paths_rel_pos_absent_without_family", "qvit/paths.py",
      'rel_pos_bias_eval=("absent" if family == "vit" else',
      'rel_pos_bias_eval=("absent" if family != "swin" else',
      PATHS_DECL, "Paths.of drops Swin's relative position bias cache when no family is given"),
    M("paths_newton_lean_keeps_node", "qvit/paths.py",
      'newton = "no_grad" if f.layernorm_newton == "no_grad" else "in_layernorm"',
      'newton = {"ste": "ste", "no_grad": "no_grad", "no_grad_sqrt_grad": "node"}[\n'
      '            f.layernorm_newton]',
      PATHS_DECL, "Paths.of keeps layernorm_newton's ste/node apart under layernorm_impl=lean"),
    # --- the deployed model's speed choices (the same integers, or a test fails) --------------
    M("deploy_exp_table_one_short", "qvit/deploy/arith.py",
      "return shift_exp(b[:k + 1], x0.to(torch.int64), n)",
      "return shift_exp(b[:k], x0.to(torch.int64), n)",
      (DEPLOY_ARITH,), "the exp table stops one entry before its saturated value"),
    M("deploy_gelu_table_row_off_by_one", "qvit/deploy/arith.py",
      "return table.view(-1)[(xm + 128) * 256 + (x.to(torch.int64) + 128)]",
      "return table.view(-1)[(xm + 127) * 256 + (x.to(torch.int64) + 128)]",
      (DEPLOY_ARITH,), "ShiftGELU's table read at the row of max - 1"),
    M("deploy_float_gemm_chunk_too_long", "qvit/deploy/intmm.py",
      "longest = max(1, (FLOAT32_EXACT - 1) // (a_max * b_max))",
      "longest = max(1, (4 * FLOAT32_EXACT) // (a_max * b_max))",
      (DEPLOY_ARITH,), "the float32 GEMM's K chunks long enough to round their sums"),
    M("deploy_float64_requant_odd_base", "qvit/deploy/arith.py",
      "q = torch.floor(a * 0.5) * 2", "q = torch.floor(a)",
      (DEPLOY_ARITH,), "the float64 requantizer's base not even: ties round to odd"),
    M("deploy_float64_requant_from_e_9", "qvit/deploy/arith.py",
      "FLOAT64_REQUANT_E = (10, 52)", "FLOAT64_REQUANT_E = (9, 52)",
      (DEPLOY_ARITH,), "the float64 requantizer trusted at e = 9, where results pass 2^53"),
    M("deploy_float64_layernorm_rounds", "qvit/deploy/arith.py",
      "half = torch.floor(prod * 0.5) if dtype.is_floating_point else prod >> 1",
      "half = torch.round(prod * 0.5) if dtype.is_floating_point else prod >> 1",
      (DEPLOY_ARITH,), "float64 I-LayerNorm rounds its halving where the shift floors"),
]


def _extra_mutants(path: Path, name: str = "IVIT_CONSTANT_MUTANTS") -> list[Mutant]:
    """The list ``name`` of a sibling file, when it exists (scripts/mutants_ivit_constants.py
    joins the check that way, with no edit here). The file may import this one as
    ``mutants`` (``from mutants import M, Mutant, REF, ...``): it is registered under that
    name first, so the import finds this module rather than running a second copy. Entries
    may be `Mutant`s, objects with its fields, or tuples in its field order."""
    if not path.is_file():
        return []
    import importlib.util

    here = sys.modules[__name__]
    sys.modules.setdefault("mutants", here)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    out = []
    for m in getattr(module, name):
        if not isinstance(m, Mutant):
            m = (Mutant(*m) if isinstance(m, tuple) else
                 Mutant(m.name, m.path, m.old, m.new, tuple(m.tests), m.why))
        out.append(m)
    return out


MUTANTS += _extra_mutants(ROOT / "scripts" / "mutants_ivit_constants.py")


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
        args.quick and any(t.split("::")[0] in (CACHES, PARITY) for t in m.tests))]
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
