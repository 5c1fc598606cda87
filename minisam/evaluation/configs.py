"""Model configurations to evaluate: a name, a model, a quantization scheme and an adapter.

Two ways to ask for them on the command line (they can be mixed):

* ``--config NAME=MODEL[,quant=Q][,adapter=A]`` (repeatable), e.g. ``--config fp32=default``
  ``--config nf4=default,quant=nf4``;
* ``--model M`` (repeatable) with ``--quant``/``--adapter`` given once (applied to every
  ``--model``) or once per ``--model`` (aligned by position); their names are
  ``MODEL[-QUANT][+ADAPTER]`` (``default``, ``default-nf4``).

``MODEL``, ``QUANT`` and ``ADAPTER`` take the values of ``minisam segment``; with adapter ``auto``
each case gets the adapter for its family (DICOM modality, else the family of its preset), and the
case row's ``adapter`` cell says which (``auto:<name>`` or ``auto:none``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from minisam.errors import InputError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")


@dataclass(frozen=True)
class Configuration:
    """One model configuration."""

    name: str
    model: str = "default"
    quant: str = "fp32"
    adapter: str = "none"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _auto_name(model: str, quant: str, adapter: str) -> str:
    name = Path(model).name.split(".")[0] if ("/" in model or "." in model) else model
    name = name.replace(":", "-")
    if quant != "fp32":
        name += "-" + re.sub(r"[^A-Za-z0-9]+", "_", quant)
    if adapter.lower() != "none":
        name += "+" + Path(adapter).name
    return name


def parse_config(text: str) -> Configuration:
    """Parse ``NAME=MODEL[,quant=Q][,adapter=A]``."""
    name, sep, rest = text.partition("=")
    if not sep or not _NAME.match(name.strip()) or not rest.strip():
        raise InputError(
            f"--config {text!r}: expected NAME=MODEL[,quant=Q][,adapter=A] "
            "(NAME: letters, digits, _ . + -)"
        )
    model, *options = [part.strip() for part in rest.split(",")]
    values = {"quant": "fp32", "adapter": "none"}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key.strip() not in values or not value.strip():
            raise InputError(f"--config {text!r}: unknown option {option!r} (quant=, adapter=)")
        values[key.strip()] = value.strip()
    return Configuration(name.strip(), model, values["quant"], values["adapter"])


def _aligned(values: list[str], count: int, flag: str, default: str) -> list[str]:
    if not values:
        return [default] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise InputError(f"{flag} given {len(values)} times for {count} --model: give 1 or {count}")
    return values


def build_configurations(
    configs: list[str] | None,
    models: list[str] | None,
    quants: list[str] | None,
    adapters: list[str] | None,
) -> list[Configuration]:
    """The configurations the flags ask for, in order; ``default`` fp32 when none is asked."""
    result = [parse_config(text) for text in configs or []]
    models = list(models or [])
    if (quants or adapters) and not models:
        if result:
            raise InputError(
                "--quant/--adapter go with --model; inside --config use quant=/adapter="
            )
        models = ["default"]
    if not models and not result:
        models = ["default"]
    quant_list = _aligned(list(quants or []), len(models), "--quant", "fp32")
    adapter_list = _aligned(list(adapters or []), len(models), "--adapter", "none")
    for model, quant, adapter in zip(models, quant_list, adapter_list, strict=True):
        result.append(Configuration(_auto_name(model, quant, adapter), model, quant, adapter))
    names = [config.name for config in result]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputError(
            f"configuration name(s) {', '.join(duplicates)} given twice: name them with --config"
        )
    return result
