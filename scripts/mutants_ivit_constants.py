"""Mutants of I-ViT's constants and arithmetic (issue #28), each caught by the official
I-ViT's fixtures (tests/qvit/test_ivit_golden.py) and, for Swin's derived buffers, by timm's
own Swin (tests/qvit/test_timm.py). Each is a change that every comparison of our paths with
each other would pass: both paths share the constant.

`IVIT_CONSTANT_MUTANTS` has the form of scripts/mutants.py's `MUTANTS` (and joins them
there); run alone with scripts/mutants.py's runner:

    python scripts/mutants_ivit_constants.py [--jobs N] [-k NAME] [--list]
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _mutants_module():
    if "mutants" in sys.modules:
        return sys.modules["mutants"]
    spec = importlib.util.spec_from_file_location("mutants", _HERE / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


Mutant = _mutants_module().Mutant

GOLDEN = "tests/qvit/test_ivit_golden.py"
SWIN_TIMM = "tests/qvit/test_timm.py::test_swin_relative_position_index_and_window_masks_are_timms"

M = Mutant
IVIT_CONSTANT_MUTANTS = [
    M("ivit_gelu_sigmoid_factor", "qvit/ops/gelu.py",
      "SIGMOID_FACTOR = 1.702", "SIGMOID_FACTOR = 1.719",
      (GOLDEN,), "ShiftGELU's sigmoid factor 1% off (1.719 for 1.702)"),
    M("ivit_gelu_exp_bits", "qvit/modules.py",
      "    exp_bits = 23\n", "    exp_bits = 22\n",
      (GOLDEN,), "IntGELU's integer exp shift bound n = 22 instead of 23"),
    M("ivit_softmax_exp_bits", "qvit/modules.py",
      "    exp_bits = 15\n", "    exp_bits = 16\n",
      (GOLDEN,), "IntSoftmax's integer exp shift bound n = 16 instead of 15"),
    M("ivit_exp_log2e_shift", "qvit/ops/int_exp.py",
      "x_int = x_int + floor(x_int / 2) - floor(x_int / 2**4)",
      "x_int = x_int + floor(x_int / 2) - floor(x_int / 2**3)",
      (GOLDEN,), "the integer exp's log2(e) ~ 1 + 1/2 - 1/16 with 1/8 instead"),
    M("ivit_normalize_shift", "qvit/ops/int_exp.py",
      "return floor(exp_int * factor / 2 ** (31 - output_bit + 1))",
      "return floor(exp_int * factor / 2 ** (30 - output_bit + 1))",
      (GOLDEN,), "the chain's integer normalization shifts by 2^(30-b+1), not 2^(31-b+1)"),
    M("ivit_newton_iterations", "qvit/ops/layernorm.py",
      "NEWTON_ITERATIONS = 10", "NEWTON_ITERATIONS = 9",
      (GOLDEN,), "I-LayerNorm's integer Newton sqrt runs 9 steps, not 10"),
    M("ivit_newton_start", "qvit/ops/layernorm.py",
      "NEWTON_START = 2**16", "NEWTON_START = 2**15",
      (GOLDEN,), "the Newton sqrt starts at 2^15 instead of 2^16"),
    M("ivit_layernorm_out_scale", "qvit/ops/layernorm.py",
      "OUT_SCALE_BITS = 30  #", "OUT_SCALE_BITS = 29  #",
      (GOLDEN,), "I-LayerNorm's output scale sqrt(C) / 2^29 instead of 2^30"),
    M("ivit_window_roll_one_axis_back", "qvit/ops/windows.py",
      "x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))",
      "x = torch.roll(x, shifts=(-shift, shift), dims=(1, 2))",
      (GOLDEN,), "Swin's shifted windows roll the grid's width the wrong way (the roll and "
      "partition path and the gather's order share it)"),
    M("ivit_window_mask_value", "qvit/ops/windows.py",
      "masked_fill(mask != 0, -100.0)", "masked_fill(mask != 0, -99.0)",
      (GOLDEN, SWIN_TIMM), "Swin's shifted-window mask value 1% off (-99 for -100)"),
    M("ivit_act_range_momentum", "qvit/modules.py",
      "act_range_momentum: float = 0.95)", "act_range_momentum: float = 0.9405)",
      (GOLDEN,), "QuantAct's running-range momentum 1% off (0.9405 for 0.95)"),
    M("ivit_frexp_bits", "qvit/ops/requant.py",
      "FREXP_BITS = 31  #", "FREXP_BITS = 30  #",
      (GOLDEN,), "the dyadic requantizer's mantissa 30 bits instead of 31 (legacy path)"),
    M("ivit_lean_requant_bits", "qvit/ops/requant.py",
      "_ROUND_BIT = 1 << (52 - 31)", "_ROUND_BIT = 1 << (52 - 30)",
      (GOLDEN,), "the lean requantizer rounds its multiplier at 30 bits, not 31 (best path)"),
    M("ivit_residual_bits", "qvit/blocks.py",
      "self.q_res1 = QuantAct(16)", "self.q_res1 = QuantAct(15)",
      (GOLDEN,), "the attention residual requantized to 15 bits instead of 16"),
    M("ivit_deit_softmax_bits", "qvit/models.py",
      "softmax_bits: int = 16, drop_rate", "softmax_bits: int = 15, drop_rate",
      (GOLDEN,), "DeiT's IntSoftmax outputs 15 bits instead of 16"),
    M("ivit_swin_softmax_bits", "qvit/models.py",
      "softmax_bits=8, drop=drop, attn_drop=attn_drop,",
      "softmax_bits=9, drop=drop, attn_drop=attn_drop,",
      (GOLDEN,), "Swin's IntSoftmax outputs 9 bits instead of 8"),
    M("ivit_linear_weight_bits", "qvit/modules.py",
      "weight_bit: int = 8, bias_bit: int = 32):",
      "weight_bit: int = 7, bias_bit: int = 32):",
      (GOLDEN,), "QuantLinear's weights quantized to 7 bits instead of 8"),
    M("ivit_linear_bias_scale", "qvit/modules.py",
      "F.linear(x_int, w_int, self.quantized_bias(bias_scale))",
      "F.linear(x_int, w_int, self.quantized_bias(bias_scale * 1.01))",
      (GOLDEN,), "QuantLinear's 32-bit bias quantized at a scale 1% off (zero biases hid it)"),
    M("ivit_rel_pos_index_swapped", "qvit/blocks.py",
      "return rel[:, :, 0] * (2 * window_size - 1) + rel[:, :, 1]",
      "return rel[:, :, 1] * (2 * window_size - 1) + rel[:, :, 0]",
      (GOLDEN, SWIN_TIMM), "Swin's relative position index with its two offsets swapped "
                           "(a bijection onto the table)"),
]


if __name__ == "__main__":
    mutants = _mutants_module()
    mutants.MUTANTS = IVIT_CONSTANT_MUTANTS
    sys.exit(mutants.main())
