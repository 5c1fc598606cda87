"""What peft adapters make a module compute now: which are active, a cheap signature of that, its hash.

An export is a snapshot of a module's computation. The encoder is exported without adapters (an active
encoder adapter sends it back to torch); the decoder is exported with whichever adapter is active, so
the export cache needs the hash of *what it computes*: the base weights (peft's ``base_layer`` wrapping
looked through) plus the tensors and scalings of the active, unmerged adapters only.
"""

from __future__ import annotations

import hashlib
import sys

import torch

# Keys of peft's adapter tensors inside a wrapped layer (LoRA, AdaLoRA): "<layer>.<part>.<adapter>[...]".
_ADAPTER_PARTS = ("lora_", "ranknum")


def _tuner_layers(module: torch.nn.Module):
    if "peft" not in sys.modules:  # no adapter can exist before peft is imported
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, layer in module.named_modules():
        if isinstance(layer, BaseTunerLayer):
            yield name, layer


def active_adapters(module: torch.nn.Module) -> dict[str, tuple[str, ...]]:
    """{layer name: names of the adapters that change its output now} for every adapted layer that
    has one, unmerged (a merged adapter is already in the base weights)."""
    found = {}
    for name, layer in _tuner_layers(module):
        if layer.disable_adapters or layer.merged:
            continue
        names = tuple(
            adapter
            for adapter in layer.active_adapters
            if any(adapter in getattr(layer, part, {}) for part in layer.adapter_layer_names)
        )
        if names:
            found[name] = names
    return found


def adapter_active(module: torch.nn.Module) -> bool:
    """Whether a peft adapter changes what ``module`` computes now (active, or merged into its weights)."""
    return bool(active_adapters(module)) or any(layer.merged for _, layer in _tuner_layers(module))


def adapter_signature(module: torch.nn.Module) -> tuple:
    """A cheap fingerprint of ``module``'s adapter state: which adapters are active and which merged,
    and a digest of the active ones' tensors (an adapter file replaced on disk can come back under
    the same name). When it is unchanged, so is what the module computes (inference never changes
    base weights in place)."""
    layers = dict(_tuner_layers(module))
    active = active_adapters(module)
    digest = hashlib.sha256()
    for name, adapters in sorted(active.items()):
        layer = layers[name]
        for part in layer.adapter_layer_names:
            holder = getattr(layer, part, {})
            for adapter in adapters:
                if adapter not in holder:
                    continue
                item = holder[adapter]
                tensors = [item] if isinstance(item, torch.Tensor) else list(item.parameters())
                for tensor in tensors:
                    data = tensor.detach().to("cpu").contiguous().reshape(-1)
                    digest.update(data.view(torch.uint8).numpy().tobytes())
    merged = tuple((n, tuple(layer.merged_adapters)) for n, layer in layers.items() if layer.merged)
    return tuple(sorted(active.items())), merged, digest.hexdigest()


def export_hash(module: torch.nn.Module) -> str:
    """SHA-256 (hex, 16 chars) of what ``module`` computes now: names, shapes, dtypes and bytes of its
    base weights and of its active, unmerged adapters' tensors (with their scalings).

    Loaded but inactive adapters are left out and peft's ``base_layer`` wrapping is looked through, so
    a module with adapters loaded (inactive) hashes like the one without; models sharing an encoder
    (``litemedsam`` and ``litemedsam-clicks``) share its export.
    """
    active = active_adapters(module)
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        parts = key.split(".")
        at = next((i for i, part in enumerate(parts) if part.startswith(_ADAPTER_PARTS)), None)
        if at is not None:
            adapter = parts[at + 1] if at + 1 < len(parts) else ""
            if adapter not in active.get(".".join(parts[:at]), ()):
                continue
        name = ".".join(part for part in parts if part != "base_layer")
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    layers = dict(_tuner_layers(module))
    for name, adapters in sorted(active.items()):
        scaling = getattr(layers[name], "scaling", {})
        digest.update(f"{name}:{[(a, scaling.get(a)) for a in adapters]};".encode())
    return digest.hexdigest()[:16]
