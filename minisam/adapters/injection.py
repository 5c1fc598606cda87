"""Putting a checked adapter into a model with peft, and taking it back out if peft fails half way.

:func:`load_adapter` checks everything (files, JSON, tensors, base model, ranks, targeted layers; see
:mod:`.validation`) before it touches the model, so a failed load leaves the model as it was.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
from peft import PeftConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

from minisam.adapters.lora import (
    AdapterSpec,
    base_module,
    check_adapter_name,
    describe,
    drop_empty_tuner_layers,
    mark_quantized,
)
from minisam.adapters.validation import AdapterContents, check_fits, read_adapter
from minisam.errors import ModelError

__all__ = ["load_adapter"]


def load_adapter(
    model: torch.nn.Module,
    folder: str | os.PathLike[str],
    expected_base_hash: str,
    name: str | None = None,
    activate: bool = True,
    trainable: bool = False,
) -> PeftModel:
    """Add the adapter stored in ``folder`` to ``model`` (a ``Sam`` or a PeftModel holding one).

    Arguments:
      model: the base model; a plain ``Sam`` is wrapped by peft (its layers are adapted in place).
      folder: an adapter folder written by :func:`save_adapter`.
      expected_base_hash: ``LoadedModel.base_hash()`` of ``model``; the adapter must have been trained on it.
      name: the name to give the adapter in the model (default: its metadata name).
      activate: make it the active adapter (else the model's active adapter, or the base, stays).
      trainable: leave its parameters trainable (to continue training); otherwise they are frozen.

    Returns:
      the PeftModel (``model`` itself when it already was one).

    Raises:
      ModelError: one line, for a missing folder or file, invalid JSON, unreadable tensors, another base
        model, or tensors that do not fit the model's layers; ``model`` is then left unchanged.
    """
    contents = read_adapter(folder)
    name = check_adapter_name(name or contents.metadata.name)
    check_fits(contents, model, expected_base_hash, name)
    config = _config_for(contents, name, trainable)
    try:
        with warnings.catch_warnings():
            # peft checks AdaLoRA's rank_pattern keys as if they were LoRA rank patterns; AdaLoRA
            # applies them itself when the weights are set, so its "did not match" warning is noise.
            warnings.filterwarnings(
                "ignore", message="The following rank_pattern keys", category=RuntimeWarning
            )
            if isinstance(model, PeftModel):
                return _add_to_peft_model(
                    model, config, contents.tensors, name, activate, trainable
                )
            return _wrap_plain_model(model, config, contents.tensors, name, activate, trainable)
    except ModelError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(
            f"adapter {contents.metadata.name} could not be applied ({reason})"
        ) from None


def _config_for(contents: AdapterContents, name: str, trainable: bool) -> PeftConfig:
    config = copy.deepcopy(contents.config)
    config.inference_mode = not trainable
    if config.peft_type.value == "ADALORA" and config.rank_pattern:
        # peft's resize takes "<layer>.lora_E.<name>" apart by whether <name> occurs in the key; with the
        # name appended the layer path comes out right whatever the adapter is called.
        config.rank_pattern = {
            f"{key.split('.lora_E')[0]}.lora_E.{name}": mask
            for key, mask in config.rank_pattern.items()
        }
    if contents.metadata.spec:
        try:
            config.minisam_spec = AdapterSpec.from_dict(contents.metadata.spec)
        except ModelError:
            pass  # the spec is informative only; the peft config is what gets applied
    return config


def _set_weights(
    model: PeftModel, config: PeftConfig, tensors: dict[str, torch.Tensor], name: str
) -> None:
    result = set_peft_model_state_dict(model, dict(tensors), adapter_name=name)
    # set_peft_model_state_dict loads with strict=False: check every tensor found its parameter.
    if result.unexpected_keys:
        raise ModelError(
            f"adapter {name}: tensors {describe(sorted(result.unexpected_keys))} fit no layer"
        )
    # Whole key components only: adapter "ct" must not claim the keys of an adapter "ct2".
    missing = [
        k
        for k in result.missing_keys
        if f".{name}." in f"{k}." and any(s in k for s in (".lora_A.", ".lora_B.", ".lora_E."))
    ]
    if missing:
        raise ModelError(f"adapter {name}: no tensors for {describe(sorted(missing))}")


def _add_to_peft_model(
    model: PeftModel,
    config: PeftConfig,
    tensors: dict[str, torch.Tensor],
    name: str,
    activate: bool,
    trainable: bool,
) -> PeftModel:
    previous = model.active_adapter
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    mark_quantized(base_module(model))
    try:
        model.add_adapter(name, config)
        _set_weights(model, config, tensors, name)
    except BaseException:
        # peft's add_adapter rolls back only its config; re-register it so delete_adapter finds the layers.
        model.peft_config.setdefault(name, config)
        model.delete_adapter(name)
        drop_empty_tuner_layers(model)
        if previous in model.peft_config:
            model.set_adapter(previous, inference_mode=True)
        for key, param in model.named_parameters():
            param.requires_grad_(flags.get(key, False))
        raise
    if activate:
        model.set_adapter(name, inference_mode=not trainable)
    return model


def _wrap_plain_model(
    sam: torch.nn.Module,
    config: PeftConfig,
    tensors: dict[str, torch.Tensor],
    name: str,
    activate: bool,
    trainable: bool,
) -> PeftModel:
    flags = {k: p.requires_grad for k, p in sam.named_parameters()}
    had_config = "peft_config" in vars(sam)
    mark_quantized(sam)
    try:
        peft_model = get_peft_model(sam, config, adapter_name=name)
        _set_weights(peft_model, config, tensors, name)
    except BaseException:
        # Put the original layers back (peft's unload() needs the PeftModel, which a failed
        # get_peft_model never returns, yet may already have replaced some layers).
        _strip_tuner_layers(sam)
        if not had_config:
            vars(sam).pop("peft_config", None)
        for key, param in sam.named_parameters():
            param.requires_grad_(flags.get(key, False))
        raise
    peft_model.set_adapter(name, inference_mode=not trainable)
    if not activate:
        peft_model.base_model.disable_adapter_layers()
    return peft_model


def _strip_tuner_layers(root: torch.nn.Module) -> None:
    for module in list(root.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(module, child_name, child.get_base_layer())
