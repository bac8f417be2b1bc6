"""What a parity measurement runs (`ParityConfig`), the table's columns, and the fixed
model, data and optimizer every measurement starts from."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

import qvit
from harness.analysis.parity_classes import DEFAULT_BOUND, PARITY_COLUMNS, SHOWN_COLUMNS
from qvit import Flags

__all__ = ["DEFAULT_BOUND", "PARITY_COLUMNS", "SHOWN_COLUMNS", "ParityConfig", "build_model",
           "fixed_batches", "parity_optimizer"]



class ParityConfig(BaseModel):
    """What a parity measurement runs: the model, the flags toggled from which base, the fixed
    data of the module-flag measurement and the short harness runs of the loop flags."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("ivit_micro", description="qvit model to measure (e.g. ivit_micro)")
    base: str = Field("legacy", description="preset every flag is toggled from")
    to: str | None = Field(None, description="toggle only the flags where this preset "
                           "differs from the base, to its value (a preset pair)")
    flags: tuple[str, ...] | None = Field(None, description="flags to measure, "
                                          "comma-separated; none: every flag")
    num_classes: int = Field(10, ge=1, description="classes of the model head")
    img_size: int | None = Field(None, ge=1, description="input size the model is built for; "
                                 "none: the model's")
    batch: int = Field(4, ge=1, description="training batch, and each of the two eval batches")
    steps: int = Field(3, description="optimizer steps k (train -> eval cycles) measured per "
                       "flag, >= 2")
    calib_steps: int = Field(3, ge=0, description="optimizer steps under the base before the "
                             "common state is saved")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate of the measurement")
    seed: int = Field(0, description="seed of the model, the batches and the harness runs")
    loop: bool = Field(True, description="also measure the loop flags, from short harness runs")
    loop_steps: int = Field(3, ge=1, description="steps per epoch of the loop flags' harness "
                            "runs")
    loop_epochs: int = Field(1, ge=1, description="epochs of the loop flags' harness runs (2+ "
                             "also compares across an epoch boundary)")
    threads: int | None = Field(1, ge=1, description="torch intra-op threads while measuring "
                                "(one is the fastest on these tiny tensors and immune to the "
                                "thread pool's scheduling)")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        qvit.model_config(v)  # raises on an unknown model
        return v

    @field_validator("base", "to")
    @classmethod
    def _known_preset(cls, v: str | None) -> str | None:
        if v is not None:
            Flags.preset(v)  # raises on an unknown preset
        return v

    @field_validator("flags", mode="before")
    @classmethod
    def _flag_names(cls, v):
        if isinstance(v, str):
            v = [f.strip() for f in v.split(",") if f.strip()]
        if v is not None:
            v = tuple(v)
            for name in v:
                Flags.spec(name)  # raises on an unknown flag
        return v or None

    @field_validator("steps")
    @classmethod
    def _two_steps(cls, v: int) -> int:
        if v < 2:
            raise ValueError("steps must be >= 2: the naive caches only fail in a second "
                             "train -> eval cycle")
        return v

    def image_size(self) -> int:
        return self.img_size or qvit.model_config(self.model)[1]["img_size"]


def fixed_batches(cfg: ParityConfig, n: int, offset: int) -> list[tuple[Tensor, Tensor]]:
    """``n`` fixed (image, label) batches: seeded normal images, seeded labels."""
    g = torch.Generator().manual_seed(cfg.seed * 1000 + offset)
    s = cfg.image_size()
    return [(torch.randn(cfg.batch, 3, s, s, generator=g),
             torch.randint(0, cfg.num_classes, (cfg.batch,), generator=g)) for _ in range(n)]


def build_model(cfg: ParityConfig, flags: Flags, state: dict | None) -> nn.Module:
    """The config's model under ``flags``, seeded, loaded with ``state`` where given."""
    torch.manual_seed(cfg.seed)
    model = qvit.create_model(cfg.model, num_classes=cfg.num_classes, img_size=cfg.img_size,
                              flags=flags)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


def parity_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Plain per-parameter AdamW: deterministic and the same for every module flag."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, foreach=False)
