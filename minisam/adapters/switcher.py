"""One base model, several adapters loaded into it, and a fast switch between them (or to the base).

Switching only flips which adapter peft's layers apply (``set_adapter``) or turns them off
(``disable_adapter_layers``); no weights are loaded or copied, so it takes milliseconds. The ``sam``
module is adapted in place: hand :attr:`AdapterSwitcher.sam` to ``SamEngine`` once and it always runs
the active adapter. Image embeddings depend on the adapter, so cache them under :attr:`state_key`.
"""

from __future__ import annotations

import os
import threading
import time

import torch
from peft import PeftModel

from minisam.adapters.choice import AdapterChoice
from minisam.adapters.injection import load_adapter
from minisam.adapters.library import AdapterLibrary
from minisam.adapters.lora import drop_empty_tuner_layers
from minisam.checkpoints import LoadedModel
from minisam.errors import ModelError


class AdapterSwitcher:
    """Holds a base model and the adapters loaded into it; :meth:`activate` picks one, None the base.

    Arguments:
      model: the base model as loaded (its :meth:`LoadedModel.base_hash` identifies it), or a ``Sam``
        together with ``base_hash``.
      base_hash: required when ``model`` is a bare module.
      library: where :meth:`add` finds adapters given by name (default: the user's library).
    """

    def __init__(
        self,
        model: LoadedModel | torch.nn.Module,
        base_hash: str | None = None,
        library: AdapterLibrary | None = None,
    ) -> None:
        if isinstance(model, LoadedModel):
            self.sam = model.sam
            self.base_hash = base_hash or model.base_hash()
        else:
            if base_hash is None:
                raise ModelError(
                    "AdapterSwitcher needs the base model's hash (LoadedModel.base_hash())"
                )
            self.sam = model
            self.base_hash = base_hash
        self.library = library
        self.peft: PeftModel | None = None
        self._active: str | None = None
        # Held while switching; inference that must not see a switch half way can hold it too.
        self.lock = threading.RLock()
        self.last_switch_s = 0.0
        # For use(): (resolved folder, created) -> name inside peft, and that name -> the adapter's own.
        self._by_folder: dict[tuple[str, str], str] = {}
        self._own_names: dict[str, str] = {}

    @property
    def names(self) -> list[str]:
        """Loaded adapters, in load order."""
        return list(self.peft.peft_config) if self.peft is not None else []

    @property
    def active(self) -> str | None:
        """The adapter in use, None for the base model."""
        return self._active

    @property
    def state_key(self) -> str:
        """Identifies what the model computes now (base hash + adapter), for embedding-cache keys."""
        return f"{self.base_hash}+{self._active or 'base'}"

    def add(self, adapter: str | os.PathLike[str], name: str | None = None) -> str:
        """Load an adapter folder (or an installed adapter's name) without activating it; its name."""
        folder = adapter
        if isinstance(adapter, str) and os.sep not in adapter and not os.path.isdir(adapter):
            folder = (self.library or AdapterLibrary()).path(adapter)
        with self.lock:
            target = self.peft if self.peft is not None else self.sam
            before = set(self.names)
            self.peft = load_adapter(target, folder, self.base_hash, name=name, activate=False)
            (added,) = set(self.names) - before
            # New peft layers start enabled; restore what was active (possibly the base).
            self._apply(self._active)
        return added

    def use(self, choice: AdapterChoice | None) -> str:
        """Activate a resolved choice (None: the base model), loading its folder the first time.

        An adapter folder is loaded once; a folder replaced on disk since (another ``created``) is
        loaded again and its stale copy unloaded. A second adapter of the same name gets a numbered
        name inside peft (``ct-2``); :meth:`own_name` gives the adapter's own name back.

        Returns:
          what the model computes now, for cache keys: "base" or ``<name>@<created>``.
        """
        if choice is None:
            self.activate(None)
            return "base"
        key = (str(choice.folder.resolve()), choice.created)
        with self.lock:
            name = self._by_folder.get(key)
            if name is None:
                stale = [k for k in self._by_folder if k[0] == key[0]]
                name = self.add(choice.folder, name=_free_name(choice.name, self.names))
                self.sam.eval()
                for old in stale:
                    self.remove(self._by_folder[old])
                self._by_folder[key] = name
                self._own_names[name] = choice.name
            self.activate(name)
        return f"{name}@{choice.created}"

    def own_name(self, name: str | None) -> str | None:
        """The adapter's own name of peft adapter ``name`` (they differ after a clash, see :meth:`use`)."""
        return None if name is None else self._own_names.get(name, name)

    def remove(self, name: str) -> None:
        """Unload adapter ``name`` (the base model becomes active if it was)."""
        with self.lock:
            if name not in self.names:
                raise ModelError(f"adapter {name!r} is not loaded (loaded: {self.names})")
            self._own_names.pop(name, None)
            self._by_folder = {k: v for k, v in self._by_folder.items() if v != name}
            if self._active == name:
                self._apply(None)
                self._active = None
            if len(self.names) == 1:
                self.peft.unload()  # last one: put the original layers back
                vars(self.sam).pop("peft_config", None)
                self.peft = None
            else:
                if self.peft.active_adapter == name:
                    # Hand peft another active adapter first (layers stay as they are: disabled when
                    # the base is active), else delete_adapter warns and picks one itself.
                    other = next(n for n in self.names if n != name)
                    self.peft.set_adapter(other, inference_mode=True)
                self.peft.delete_adapter(name)
                drop_empty_tuner_layers(self.peft)
                self._apply(self._active)

    def activate(self, name: str | None) -> float:
        """Make adapter ``name`` (None: the base model) active; returns the seconds the switch took."""
        if name is not None and name not in self.names:
            raise ModelError(
                f"adapter {name!r} is not loaded (loaded: {', '.join(self.names) or 'none'})"
            )
        with self.lock:
            start = time.perf_counter()
            self._apply(name)
            self._active = name
            self.last_switch_s = time.perf_counter() - start
        return self.last_switch_s

    def _apply(self, name: str | None) -> None:
        if self.peft is None:
            return
        tuner = self.peft.base_model
        if name is None:
            tuner.disable_adapter_layers()
            return
        # enable_adapter_layers() re-marks the active adapter trainable; set_adapter(inference_mode=True)
        # right after freezes it again (inference never needs gradients).
        tuner.enable_adapter_layers()
        self.peft.set_adapter(name, inference_mode=True)


def _free_name(name: str, taken: list[str]) -> str:
    """``name``, or ``name-2``, ``name-3``, ... when an adapter of that name is loaded already."""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name[:60]}-{number}"
    return candidate
