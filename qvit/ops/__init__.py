"""The operations of integer-only quantization, one file per operation, each holding every
path the flags can select for it (`qvit.paths.Paths` names them) beside the reference:

* `ste`: straight-through floor and round (function, inline, lean);
* `quantize`: symmetric and ternary quantization with their STE forms, QuantAct's lean
  input quantizer;
* `act_range`: QuantAct's running-range observation (scope, reduction, first-call check);
* `requant`: frexp (host, device), the dyadic requantizer (chain, fused, lean), its
  integer reference;
* `int_exp`: the shift-based integer exp and the normalization that IntSoftmax and IntGELU
  share (chain pieces, fused and lean helpers); `softmax`, `gelu`: each one's chain, fused
  and lean forms;
* `layernorm`: the integer Newton square root (ste, no_grad, node) and I-LayerNorm
  (chain, lean);
* `linear`: the weight range and the rescale of QuantLinear/QuantConv2d/QuantMatMul;
* `windows`: Swin's tokens into (shifted) windows and back, by roll and partition or by one
  precomputed gather, and the shifted-window mask.

Pure functions and autograd nodes: nothing holds state or moves tensors between devices,
except the reference `requant.batch_frexp`, whose host round trip is what it measures.
"""
