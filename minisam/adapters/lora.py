"""LoRA / AdaLoRA adapters on a segment-anything ``Sam`` through peft's own model classes.

segment-anything's ``Sam`` is a plain ``nn.Module``, which peft handles as a "custom model":
``get_peft_model`` wraps it in a :class:`peft.PeftModel` (model type "custom") and replaces the targeted
``nn.Linear`` layers *in place* with peft's LoRA layers. The original ``sam`` object therefore stays
usable (``SamEngine(sam)`` runs whichever adapter is active), and further named adapters are added with
``PeftModel.add_adapter`` and chosen with ``set_adapter``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from peft import AdaLoraConfig, LoraConfig, PeftConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from minisam.encoders import encoder_family, family_module, vit
from minisam.errors import ModelError

METHODS = ("lora", "adalora")
# The encoder's attention projections, SAM's usual LoRA target (SAMed, MedSA, ...), in every family.
ENCODER_TARGETS = vit.LORA_TARGETS
DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# Not a leaf name: the mask decoder's output heads (the hypernetwork MLPs that turn each output token into
# mask weights, and the IoU head) — what maps a prompt's tokens to a mask, which a click-trained adapter needs.
DECODER_HEADS = "heads"
_HEADS_REGEX = r"mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.\d+"
# Adapter names become nn.ModuleDict keys inside peft's layers (no dots) and folder names on disk.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# peft finds an adapter's tensors by this prefix; a name contained in it ("lora", "l") confuses loading.
_TUNER_PREFIX = "lora_"
_LEAF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_adapter_name(name: str) -> str:
    """``name`` if it can name an adapter (letters, digits, ``_``, ``-``; 1-64 chars), else a ModelError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _TUNER_PREFIX:
        raise ModelError(
            f"adapter name {name!r} is invalid: use 1-64 letters, digits, '_' or '-', "
            f"starting with a letter or digit (and not part of {_TUNER_PREFIX!r})"
        )
    return name


@dataclass(frozen=True)
class AdapterSpec:
    """What to adapt and how.

    Arguments:
      method: "lora" or "adalora" (AdaLoRA re-allocates the rank budget between layers while training).
      rank: LoRA rank r (LoRA only; AdaLoRA starts at ``init_r`` and ends near ``target_r`` on average).
      alpha: LoRA scaling numerator (the update is scaled by alpha / r).
      dropout: dropout on the adapter's input during training.
      target_modules: leaf names of the image encoder's linear layers to adapt, matched only inside
        the family's transformer blocks (``image_encoder.blocks`` for a ViT) so the patch embedding and
        neck (also named ``proj``) are left alone; empty for a decoder-only adapter (then
        ``include_decoder`` must be set), which leaves the encoder's embeddings unchanged.
      include_decoder: also adapt the mask decoder transformer's attention projections.
      decoder_target_modules: leaf names matched inside ``mask_decoder.transformer``, and
        ``"heads"`` (:data:`DECODER_HEADS`) for the decoder's output hypernetworks and IoU head.
      init_r, target_r, tinit, tfinal, deltaT, total_step, orth_reg_weight: AdaLoRA's schedule, see
        ``peft.AdaLoraConfig``; ``total_step`` (the number of optimiser steps) is required for AdaLoRA.
      encoder_family: the base model's encoder family (:mod:`minisam.encoders`); set from the model by
        :func:`attach_adapter`, recorded so a saved adapter's layer names are self-explaining.
    """

    method: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ENCODER_TARGETS
    include_decoder: bool = False
    decoder_target_modules: tuple[str, ...] = DECODER_TARGETS
    init_r: int = 12
    target_r: int = 8
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1  # noqa: N815 (peft's name)
    total_step: int | None = None
    orth_reg_weight: float = 0.5
    encoder_family: str = vit.FAMILY

    def __post_init__(self) -> None:
        family_module(self.encoder_family)  # a clear error for an unknown family
        # Lists from JSON become tuples so specs compare and hash consistently.
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "decoder_target_modules", tuple(self.decoder_target_modules))
        if self.method not in METHODS:
            raise ModelError(f"adapter method must be one of {METHODS}, not {self.method!r}")
        if self.rank < 1 or self.init_r < 1 or self.target_r < 1:
            raise ModelError(
                f"adapter ranks must be >= 1 (rank {self.rank}, init_r {self.init_r}, "
                f"target_r {self.target_r})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"adapter dropout must be in [0, 1), not {self.dropout}")
        names = self.target_modules + (self.decoder_target_modules if self.include_decoder else ())
        if not names or not all(_LEAF.fullmatch(n) for n in names):
            raise ModelError(
                f"adapter target modules must be plain layer names such as 'qkv', not {list(names)}"
            )
        if self.method == "adalora":
            if self.total_step is None or self.total_step <= 0:
                raise ModelError("AdaLoRA needs total_step (the number of training steps) > 0")
            if self.tinit >= self.total_step - self.tfinal:
                raise ModelError(
                    f"AdaLoRA schedule leaves no budgeting phase: tinit {self.tinit} >= "
                    f"total_step {self.total_step} - tfinal {self.tfinal}"
                )

    def target_regex(self) -> str:
        """Full-name regex (peft ``re.fullmatch``es it against module names) of the adapted layers."""
        encoder = r"image_encoder\.{}(?:\w+\.)*(?:{})".format(
            family_module(self.encoder_family).LORA_BLOCK_SCOPE,
            "|".join(map(re.escape, self.target_modules)),
        )
        if not self.include_decoder:
            return encoder
        leaves = [n for n in self.decoder_target_modules if n != DECODER_HEADS]
        transformer = r"mask_decoder\.transformer\.(?:\w+\.)*(?:{})"
        parts = [transformer.format("|".join(map(re.escape, leaves)))] if leaves else []
        if DECODER_HEADS in self.decoder_target_modules:
            parts.append(_HEADS_REGEX)
        decoder = "|".join(f"(?:{part})" for part in parts)
        if not self.target_modules:  # a decoder-only adapter: the encoder stays as it is
            return decoder
        return f"(?:{encoder})|(?:{decoder})"

    def to_peft_config(self) -> PeftConfig:
        """The equivalent ``LoraConfig`` / ``AdaLoraConfig`` (bias untouched, nothing else trainable)."""
        common = {
            "target_modules": self.target_regex(),
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "bias": "none",
        }
        if self.method == "lora":
            return LoraConfig(r=self.rank, **common)
        # r is unused by AdaLoRA (peft warns when it is set), so it is left at its default.
        return AdaLoraConfig(
            init_r=self.init_r,
            target_r=self.target_r,
            tinit=self.tinit,
            tfinal=self.tfinal,
            deltaT=self.deltaT,
            total_step=self.total_step,
            orth_reg_weight=self.orth_reg_weight,
            **common,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        data["decoder_target_modules"] = list(self.decoder_target_modules)
        data["target_regex"] = self.target_regex()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterSpec:
        values = {k: v for k, v in data.items() if k != "target_regex"}
        try:
            return cls(**values)
        except TypeError as exc:
            raise ModelError(f"invalid adapter spec {data!r} ({exc})") from None


def check_name_fits(model: torch.nn.Module, name: str) -> None:
    """ModelError if ``".<name>"`` occurs in a module path of ``model``.

    peft drops an adapter's name from AdaLoRA rank-pattern keys with ``str.replace(".<name>", "")``, so a
    name that is part of a layer path ("b" in "image_encoder.blocks") would corrupt the saved config.
    """
    token = f".{name}"
    clash = next((path for path in base_layers(model) if token in f".{path}"), None)
    if clash is not None:
        raise ModelError(
            f"adapter name {name!r} clashes with the model's module {clash}; choose another"
        )


def mark_quantized(sam: torch.nn.Module) -> None:
    """Tell peft when bitsandbytes layers are present, so it wraps them with its bnb LoRA layers.

    peft reads ``model.is_loaded_in_4bit`` / ``is_loaded_in_8bit`` (set by transformers for HF models);
    without them a ``Linear4bit`` (an ``nn.Linear`` subclass) would get the plain LoRA layer, whose
    merge logic does not understand packed 4-bit weights.
    """
    # Quantized layers can only exist once bitsandbytes is imported; avoid importing it otherwise.
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return
    for module in sam.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            sam.is_loaded_in_4bit = True
        elif isinstance(module, bnb.nn.Linear8bitLt):
            sam.is_loaded_in_8bit = True


def base_module(model: torch.nn.Module) -> torch.nn.Module:
    """The ``Sam`` inside a PeftModel (adapted in place), or ``model`` itself."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def base_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every module of the base ``Sam`` by its original name; peft layers count as the layer they wrap."""
    found: dict[str, torch.nn.Module] = {}

    def walk(module: torch.nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            path = prefix + child_name
            if isinstance(child, BaseTunerLayer):
                # The tuner's own children (base_layer, lora_A, ...) are not part of the base model.
                found[path] = child.get_base_layer()
                continue
            found[path] = child
            walk(child, path + ".")

    walk(base_module(model), "")
    return found


def drop_empty_tuner_layers(model: torch.nn.Module) -> int:
    """Put back the original layer wherever a peft layer holds no adapter any more; how many.

    peft's ``delete_adapter`` leaves a layer that only the deleted adapter targeted wrapped (an empty
    LoRA layer: same outputs, extra state-dict keys and overhead).
    """
    root = base_module(model)
    dropped = []
    for path, module in list(root.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BaseTunerLayer) and not any(
                len(getattr(child, attr)) for attr in child.adapter_layer_names
            ):
                setattr(module, child_name, child.get_base_layer())
                dropped.append(f"{path}.{child_name}" if path else child_name)
    tuner = getattr(model, "base_model", None)
    if dropped and isinstance(getattr(tuner, "targeted_module_names", None), list):
        tuner.targeted_module_names[:] = [
            n for n in tuner.targeted_module_names if n not in dropped
        ]
    return len(dropped)


def attach_adapter(model: torch.nn.Module, spec: AdapterSpec, name: str = "default") -> PeftModel:
    """Add a new, trainable adapter ``name`` to a ``Sam`` (or to a PeftModel holding one) and activate it.

    Everything but this adapter's parameters is frozen. LoRA starts as the identity (peft sets B = 0);
    AdaLoRA likewise (E = 0). The ``Sam`` module is modified in place and stays usable on its own.
    """
    check_adapter_name(name)
    check_name_fits(base_module(model), name)
    spec = replace(spec, encoder_family=encoder_family(base_module(model)))
    check_targets_exist(model, spec)
    config = spec.to_peft_config()
    config.minisam_spec = (
        spec  # not a dataclass field: peft never serialises it; save_adapter reads it
    )
    check_can_add(model, name, config, f"a new {config.peft_type.value} adapter")
    if isinstance(model, PeftModel):
        mark_quantized(base_module(model))
        model.add_adapter(name, config)
        peft_model = model
    else:
        mark_quantized(model)
        peft_model = get_peft_model(model, config, adapter_name=name)
    peft_model.set_adapter(name)
    freeze_all_but(peft_model, name)
    return peft_model


def adapter_parameters(model: torch.nn.Module, name: str) -> dict[str, torch.nn.Parameter]:
    """The parameters that belong to adapter ``name`` (``...qkv.lora_A.<name>.weight`` and the like)."""
    found = {}
    for key, param in model.named_parameters():
        parts = key.split(".")
        # The adapter name follows the tuner's ModuleDict / ParameterDict (lora_A, lora_E, ...).
        if any(
            a.startswith(_TUNER_PREFIX) and b == name
            for a, b in zip(parts, parts[1:], strict=False)
        ):
            found[key] = param
    return found


def freeze_all_but(model: torch.nn.Module, name: str) -> None:
    """requires_grad only for adapter ``name``'s parameters (peft leaves biases and others alone too)."""
    trainable = set(adapter_parameters(model, name))
    if not trainable:
        raise ModelError(f"the model has no parameters of adapter {name!r}")
    for key, param in model.named_parameters():
        param.requires_grad_(key in trainable)


def count_trainable_parameters(model: torch.nn.Module) -> int:
    """Number of parameter elements with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_adapter_parameters(model: torch.nn.Module, name: str) -> int:
    """Number of parameter elements of adapter ``name`` (trainable or not)."""
    return sum(p.numel() for p in adapter_parameters(model, name).values())


def target_module_names(sam: torch.nn.Module, spec: AdapterSpec) -> list[str]:
    """Module names of ``sam`` that ``spec`` would adapt (for reports and tests)."""
    pattern = re.compile(spec.target_regex())
    return [
        n
        for n, m in base_layers(sam).items()
        if pattern.fullmatch(n) and isinstance(m, torch.nn.Linear)
    ]


def check_can_add(model: torch.nn.Module, name: str, config: PeftConfig, what: str) -> None:
    """ModelError if a PeftModel ``model`` already holds adapter ``name`` or adapters of another kind.

    ``what`` names the adapter in the message ("adapter ct_v2 (LORA)").
    """
    if not isinstance(model, PeftModel):
        return
    if name in model.peft_config:
        raise ModelError(f"the model already has an adapter named {name!r}")
    if model.peft_type != config.peft_type:
        raise ModelError(
            f"cannot add {what} to a model holding {model.peft_type.value} adapters: "
            "peft cannot mix the two in one model"
        )


def check_targets_exist(model: torch.nn.Module, spec: AdapterSpec) -> None:
    """ModelError unless every target leaf name of ``spec`` matches at least one linear of ``model``."""
    adapted = target_module_names(model, spec)
    leaves = spec.target_modules + (spec.decoder_target_modules if spec.include_decoder else ())
    missing = [
        leaf
        for leaf in leaves
        if not any(
            re.fullmatch(_HEADS_REGEX, n) if leaf == DECODER_HEADS else n.endswith("." + leaf)
            for n in adapted
        )
    ]
    if missing:
        raise ModelError(
            f"adapter target(s) {', '.join(missing)} match no linear layer of this "
            f"{spec.encoder_family} model"
        )


def describe(names: Sequence[str], limit: int = 3) -> str:
    """``a, b, c (+N more)`` for one-line messages."""
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
