"""Model configurations to evaluate: a name, a model, a quantization scheme and an adapter.

Two ways to ask for them on the command line (they can be mixed):

* ``--config NAME=MODEL[,quant=Q][,adapter=A]`` (repeatable), e.g. ``--config fp32=default``
  ``--config nf4=default,quant=nf4``;
* ``--model M`` (repeatable) with ``--quant``/``--adapter`` given once (applied to every
  ``--model``) or once per ``--model`` (aligned by position); their names are
  ``MODEL[-QUANT][+ADAPTER]`` (``default``, ``default-nf4``).

``MODEL``, ``QUANT`` and ``ADAPTER`` take the values of ``minisam segment``; with adapter ``auto``
each case gets the adapter for its family (DICOM modality, else the family of its preset), and the
case row's ``adapter`` cell says which (``auto:<name>`` or ``auto:none``). ``runtime=`` and
``precision=`` choose where the image encoder runs (``--runtime``/``--precision`` of ``minisam
segment``; evaluate's default is torch, the reference), per configuration or for all of them with
``--runtime``/``--precision``. ``lone_click=raw`` keeps SAM's best of three candidates for a lone click
as it is instead of refining it with its box (``--lone-click`` of ``minisam segment``; it matters only
with ``--multimask auto``, the product's protocol).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from minisam.errors import InputError
from minisam.prompts import check_lone_click

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")


@dataclass(frozen=True)
class Configuration:
    """One model configuration."""

    name: str
    model: str = "default"
    quant: str = "fp32"
    adapter: str = "none"
    runtime: str = "torch"
    precision: str = "auto"
    lone_click: str = "refine"

    def as_dict(self, lone_clicks_answered: bool = False) -> dict[str, str]:
        """The fields as recorded in run.json; ``lone_click`` only when ``lone_clicks_answered`` (the
        protocol leaves a lone click's answer to the engine: ``--multimask auto``), the one case where
        it changes a mask, so that runs recorded before it existed resume exactly when their answers
        would be the same."""
        values = asdict(self)
        # left out at their defaults, so runs recorded before runtimes existed still resume
        for key, default in (("runtime", "torch"), ("precision", "auto")):
            if values[key] == default:
                values.pop(key)
        if not lone_clicks_answered:
            values.pop("lone_click")
        return values


def _auto_name(model: str, quant: str, adapter: str) -> str:
    name = Path(model).name.split(".")[0] if ("/" in model or "." in model) else model
    name = name.replace(":", "-")
    if quant != "fp32":
        name += "-" + re.sub(r"[^A-Za-z0-9]+", "_", quant)
    if adapter.lower() != "none":
        name += "+" + Path(adapter).name
    return name


def _checked(config: Configuration, where: str) -> Configuration:
    """``config`` with its runtime and precision normalised, or a one-line InputError naming ``where``."""
    from minisam.errors import MiniSAMError
    from minisam.runtime import check_precision, check_runtime

    try:
        runtime = check_runtime(config.runtime, flag="runtime=")
        precision = check_precision(config.precision, runtime, flag="precision=")
        check_lone_click(config.lone_click, flag="lone_click=")
    except MiniSAMError as error:
        raise InputError(f"{where}: {error}") from None
    return replace(config, runtime=runtime, precision=precision)


def parse_config(text: str, runtime: str = "torch", precision: str = "auto") -> Configuration:
    """Parse ``NAME=MODEL[,quant=Q][,adapter=A][,runtime=R][,precision=P][,lone_click=L]``; ``runtime`` and
    ``precision`` are the values when the text does not set them."""
    name, sep, rest = text.partition("=")
    if not sep or not _NAME.match(name.strip()) or not rest.strip():
        raise InputError(
            f"--config {text!r}: expected NAME=MODEL[,quant=Q][,adapter=A][,runtime=R] "
            "(NAME: letters, digits, _ . + -)"
        )
    model, *options = [part.strip() for part in rest.split(",")]
    values = {
        "quant": "fp32",
        "adapter": "none",
        "runtime": runtime,
        "precision": precision,
        "lone_click": "refine",
    }
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key.strip() not in values or not value.strip():
            raise InputError(
                f"--config {text!r}: unknown option {option!r} "
                "(quant=, adapter=, runtime=, precision=, lone_click=)"
            )
        values[key.strip()] = value.strip()
    return _checked(Configuration(name.strip(), model, **values), f"--config {text!r}")


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
    runtime: str = "torch",
    precision: str = "auto",
) -> list[Configuration]:
    """The configurations the flags ask for, in order; ``default`` fp32 when none is asked.

    ``runtime`` / ``precision`` (``--runtime`` / ``--precision``) apply to every configuration that
    does not set its own.
    """
    result = [parse_config(text, runtime, precision) for text in configs or []]
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
        config = Configuration(
            _auto_name(model, quant, adapter), model, quant, adapter, runtime, precision
        )
        result.append(_checked(config, "--runtime/--precision"))
    names = [config.name for config in result]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputError(
            f"configuration name(s) {', '.join(duplicates)} given twice: name them with --config"
        )
    return result
