"""Integer-only inference: `deploy(model)` turns a trained qvit model into a module that
computes with integers only (int8 GEMMs with int32 accumulation, dyadic requantization,
I-ViT's integer softmax, GELU and LayerNorm), bit-exact with `qvit.reference`. Where a
float operation gives the same integer faster (float32 GEMMs, float64 requantizers on
CPUs without the integer instructions), ``int_gemm`` and ``requant`` choose it."""

from __future__ import annotations

from .convert import config_of, deploy, dyadic
from .model import DeployedModel, DeployedSwin, DeployedViT, compile_deployed, from_config

__all__ = ["deploy", "compile_deployed", "dyadic", "config_of", "from_config",
           "DeployedModel", "DeployedViT", "DeployedSwin"]
