"""The one declaration of run settings, and the identity of a result.

`RunSettings` lists everything a run is trained and measured with, once: the command line of
``harness run`` / ``harness ablate`` (`harness.spec.options`) and the ``[run]`` table of an
ablation spec are generated from it, and unknown keys are refused. Adding a setting is one
field here (with its description) plus the code that reads it.

`identity(...)` digests everything that can change a run's result: the settings, the flags,
the config, the code (a digest of the source of ``qvit/`` and ``harness/``, so a commit, an
uncommitted edit or an untracked file all count), the library versions and the machine. A
finished run is reused only under the same identity.

Importing this module imports neither torch nor timm: bad input is refused in a second, before
the heavy imports.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.spec.datasets import DATASETS
from harness.spec.options import validated

__all__ = ["RunSettings", "DEVICES_HELP", "code_digest", "library_versions",
           "machine", "identity", "digest"]

DEVICES_HELP = "cpu, cuda, cuda:N, mps or auto"
_PACKAGES = ("torch", "timm", "torchvision", "numpy")
_ROOT = Path(__file__).resolve().parents[2]


class RunSettings(BaseModel):
    """How one run is trained and measured (the model's flags are not settings: a config).
    The defaults are the shipped recipe (`ablations/*.toml` say only what they change): QAT
    fine-tuning of the float-pretrained start on the embedded digits, two epochs of six
    steps (the first a warm-up), the whole held-out split evaluated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("ivit_micro", description="qvit model name (qvit.list_models()) or "
                       "package.module:factory")
    dataset: Literal[DATASETS] = Field(
        "digits", description="digits (embedded), cifar10/cifar100 (from data_dir), "
        "imagefolder (data_dir/train, data_dir/val), synthetic (random, any size)")
    data_dir: str | None = Field(None, description="where CIFAR or the ImageFolder tree is")
    img_size: int | None = Field(None, ge=8, description="input size (default: the model's)")
    num_classes: int = Field(10, ge=2, description="classes of the model head")
    epochs: int = Field(2, ge=1, description="epochs per run, warm-up included")
    warmup_epochs: int = Field(1, ge=0, description="first epochs left out of the timing "
                               "statistics (first calls, compile, allocator growth)")
    steps_per_epoch: int | None = Field(6, ge=1, description="cap on training steps per "
                                        "epoch (none: a full pass)")
    warmup_steps: int | None = Field(None, ge=2, description="training steps of each warm-up "
                                     "epoch (none: as many as a measured epoch; 2: the first "
                                     "step's first calls and one step to count syncs in)")
    eval_steps: int | None = Field(None, ge=1, description="cap on evaluation batches (none: "
                                   "the whole held-out split)")
    eval_deployed: bool = Field(False, description="after the last epoch, also evaluate the "
                                "deployed integer model (qvit.deploy) on the held-out split: "
                                "deployed_top1 and deployed_agreement (fraction of predictions "
                                "equal to the QAT eval's); NaN for a float reference")
    batch_size: int = Field(64, ge=1, description="training batch size")
    eval_batch_size: int | None = Field(128, ge=1, description="eval batch (none: "
                                        "batch_size)")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (QAT fine-tunes the "
                      "float start: 1e-3 costs ivit_micro 5 points of top-1 on the digits)")
    weight_decay: float = Field(0.05, ge=0, description="weight decay")
    opt: str = Field("adamw", description="timm optimizer name (create_optimizer_v2)")
    sched: str = Field("cosine", description="timm scheduler name, or none")
    lr_warmup_epochs: int = Field(0, ge=0, description="scheduler warm-up epochs")
    min_lr: float = Field(0.0, ge=0, description="scheduler floor")
    clip_grad: float | None = Field(None, gt=0, description="gradient-norm clipping")
    smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing")
    mixup: float = Field(0.0, ge=0, description="timm Mixup alpha (0: off)")
    cutmix: float = Field(0.0, ge=0, description="timm CutMix alpha (0: off)")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="timm ModelEmaV3 decay (0: off); "
                             "eval then uses the EMA weights")
    seed: int = Field(0, description="base seed; block b trains with seed + b")
    device: str = Field("auto", description=DEVICES_HELP)
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (none: "
                                "torch's default; recorded either way)")
    malloc_retain: bool = Field(False, description="keep freed memory in the process "
                                "(glibc mallopt): no page faults on every large tensor; "
                                "process-wide, the same for every config of a session")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms and "
                                "no cudnn.benchmark (off: what people train with)")
    pretrained: bool = Field(True, description="start from the float twin trained on the "
                             "run's dataset (made and cached by the harness), calibrated, as "
                             "I-ViT starts QAT; off: random weights")
    pretrain_epochs: int = Field(30, ge=1, description="epochs of float training for the "
                                 "pretrained start")
    calibration_steps: int = Field(4, ge=1, description="training-mode batches under no_grad "
                                   "that set the activation ranges after loading")
    count_syncs: Literal["first", "all", "off"] = Field(
        "first", description="epochs whose host-device syncs are counted (the counted steps "
        "are left out of step times)")
    sync_count_steps: int | None = Field(8, ge=1, description="steps counted per counted "
                                         "epoch (none: all)")
    compile_backend: str = Field("qvit_inductor", description="torch.compile backend for "
                                 "compile_model (qvit_inductor: inductor with eager's bits, "
                                 "see qvit.compile)")
    float_compile_backend: str = Field(
        "inductor", description="torch.compile backend for compile_model on a float reference "
        "(no integer bits to keep: the fastest float, inductor with its pattern rewrites)")
    float_attention: Literal["explicit", "sdpa"] = Field(
        "explicit", description="the float reference's attention: explicit softmax(q k^T) v "
        "(the quantized models' form; timm's Swin default; the faster compiled ViT float on "
        "the 2-core CPU measured) or sdpa (F.scaled_dot_product_attention, timm's ViT "
        "default; flash attention on GPUs)")

    @model_validator(mode="before")
    @classmethod
    def _none_spelled(cls, data: Any) -> Any:
        """``"none"`` for a None-able setting, as on the command line (TOML has no null)."""
        if isinstance(data, dict):
            data = {k: None if v == "none" and k in cls.model_fields and type(None) in
                    typing.get_args(cls.model_fields[k].annotation) else v
                    for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> RunSettings:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than "
                             f"epochs ({self.epochs}): warm-up epochs are not measured")
        if not (self.device in ("cpu", "cuda", "mps", "auto") or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device must be {DEVICES_HELP}, got {self.device!r}")
        if self.dataset in ("imagefolder",) and not self.data_dir:
            raise ValueError("dataset 'imagefolder' needs data_dir (--data-dir DIR)")
        if (self.mixup or self.cutmix) and self.batch_size % 2:
            raise ValueError(f"mixup/cutmix need an even batch_size, got {self.batch_size}")
        return self

    def replace(self, **kw: Any) -> RunSettings:
        """A copy with ``kw`` changed, validated (ValueError in one line)."""
        return validated(type(self), {**self.model_dump(), **kw}, "[run]")


# --- identity ---------------------------------------------------------------------------------

def _sources() -> list[Path]:
    files: list[Path] = []
    for pkg in ("qvit", "harness"):
        files += sorted((_ROOT / pkg).rglob("*.py"))
    return files


@functools.cache
def code_digest() -> str:
    """A digest of every source file of qvit/ and harness/ (committed or not)."""
    h = hashlib.sha256()
    for path in _sources():
        h.update(str(path.relative_to(_ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@functools.cache
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = ""
    return out


# The widest vector instructions a CPU offers (its /proc/cpuinfo flags), widest first.
_VECTOR_ISAS = (("amx_int8", "AMX"), ("avx512_vnni", "AVX512-VNNI"), ("avx512f", "AVX512"),
                ("avx2", "AVX2"), ("neon", "NEON"), ("asimd", "NEON"))


@functools.cache
def cpu_model() -> str:
    """The processor a timing belongs to: its name, family/model and widest vector ISA. A
    VM's name alone is generic: two hosts that both said "AMD EPYC" here (one AVX512-VNNI,
    one AVX2) ran the same training step 2-4x apart."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    return describe_cpu(cpuinfo, platform.processor() or platform.machine())


def describe_cpu(cpuinfo: str, fallback: str = "") -> str:
    """``cpu_model()`` from the text of /proc/cpuinfo (its first processor)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip() and fields:
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or fallback
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    isa = next((label for flag, label in _VECTOR_ISAS if flag in flags), None)
    family = (f"family {fields['cpu family']} model {fields['model']}"
              if "cpu family" in fields and "model" in fields else None)
    detail = ", ".join(x for x in (family, isa) if x)
    return f"{name} ({detail})" if detail else name


@functools.cache
def machine() -> str:
    """The machine a timing belongs to (not the host name: containers rename hosts)."""
    return f"{cpu_model()}, {os.cpu_count()} cores, {sys.platform}"


def digest(payload: Any, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()
                          ).hexdigest()[:n]


def identity(settings: RunSettings, flags: dict[str, Any], *, config: str,
             float_reference: bool, repeat: int, device_name: str = "") -> dict[str, Any]:
    """Everything that can change a run's result (see the module docstring)."""
    return {"settings": settings.model_dump(), "flags": flags, "config": config,
            "float_reference": float_reference, "repeat": repeat, "code": code_digest(),
            "versions": library_versions(), "machine": machine(), "device": device_name}
