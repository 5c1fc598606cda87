"""The evaluation loop: every case × configuration, one row each, failures recorded not dropped.

Models of all configurations are loaded (and checked) before any case runs, and stay in memory;
cases are read once and evaluated with every configuration in turn. A case that cannot be loaded
(missing file, size or geometry mismatch, no foreground) gives one line on stderr and a ``failed``
row for each configuration; the other cases go on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from minisam.adapters.choice import apply_adapter, resolve_adapter
from minisam.checkpoints import LoadedModel
from minisam.dataset_manifest import CaseSpec
from minisam.engine import Prediction, SamEngine, SliceEmbedding
from minisam.errors import MiniSAMError
from minisam.evaluation.cases import LoadedCase, load_case
from minisam.evaluation.configs import Configuration
from minisam.evaluation.prompting import PromptMode, case_rng, simulate
from minisam.evaluation.ssim import mask_ssim
from minisam.metrics import segmentation_metrics
from minisam.modality import AUTO, adapter_family
from minisam.prompts import Prompt

METRICS = ("dice", "iou", "nsd", "hd95", "ssim", "score", "encoder_s", "decoder_s")
"""Numeric columns of a case row (``score``: the model's predicted IoU of its final mask)."""

CASE_ERRORS = (MiniSAMError, ValueError, RuntimeError, OSError)


@dataclass(frozen=True)
class EvaluationSettings:
    """Everything besides data and configurations that a case row depends on."""

    prompt: PromptMode
    seed: int = 0
    tolerance_mm: float = 1.0
    propagate: bool = False
    multimask: bool | None = False  # None: three candidates for a lone click only, as the product
    device: str = "cpu"

    def as_dict(self) -> dict[str, object]:
        values = asdict(self)
        values["prompt"] = str(self.prompt)
        values.pop("device")
        return values


class TimedEngine:
    """A :class:`SamEngine` that adds up the seconds spent in the encoder and in the decoder."""

    def __init__(self, engine: SamEngine) -> None:
        self.engine = engine
        self.encoder_s = 0.0
        self.decoder_s = 0.0

    def reset(self) -> None:
        self.encoder_s = self.decoder_s = 0.0

    def embed(self, rgb: np.ndarray) -> SliceEmbedding:
        start = time.perf_counter()
        result = self.engine.embed(rgb)
        self.encoder_s += time.perf_counter() - start
        return result

    def predict(self, embedding: SliceEmbedding, prompt: Prompt, multimask: bool | None = False):
        start = time.perf_counter()
        result = self.engine.predict(embedding, prompt, multimask=multimask)
        self.decoder_s += time.perf_counter() - start
        return result


@dataclass
class LoadedConfiguration:
    """A configuration's model, loaded, quantized and (for a named adapter) adapted.

    ``adapter``: the adapter the engine runs (with adapter "auto": the one of the last case
    prepared), None for the base model alone.
    """

    config: Configuration
    engine: TimedEngine
    adapter: str | None
    trained: bool = True
    model: LoadedModel | None = None
    switcher: object = None  # adapter "auto": minisam.adapters.AdapterSwitcher, made when needed

    @property
    def automatic(self) -> bool:
        """Whether the adapter is chosen per case (adapter "auto")."""
        return _per_case(self.config)

    def prepare(self, case: LoadedCase) -> str | None:
        """Make the engine run this configuration's adapter for ``case``; the adapter's name.

        A named adapter was loaded with the model. "auto" picks per case, for the case's family (its
        DICOM modality, else the family of its preset: "ct-lung" is CT), as ``minisam segment
        --adapter auto`` does; adapters are loaded once and switched.
        """
        if not self.automatic:
            return self.adapter
        family = adapter_family(case.dicom_modality, case.modality)
        chosen = resolve_adapter(AUTO, self.model.base_hash(), family)
        if chosen is not None and self.switcher is None:
            from minisam.adapters import AdapterSwitcher

            self.switcher = AdapterSwitcher(self.model)
        if self.switcher is not None:
            self.switcher.use(chosen)
        self.adapter = None if chosen is None else chosen.name
        return self.adapter


def _per_case(config: Configuration) -> bool:
    return config.adapter.strip().lower() == AUTO


def load_configuration(config: Configuration, device: str = "cpu") -> LoadedConfiguration:
    """Load, quantize and adapt the model of ``config`` (as ``minisam segment`` does)."""
    from minisam.model_loader import load_model

    loaded = load_model(config.model)
    if config.quant != "fp32":
        from minisam.quantization import quantize_model

        quantize_model(loaded, config.quant, device=device)
    adapter = None if _per_case(config) else apply_adapter(config.adapter, loaded)
    engine = TimedEngine(
        SamEngine(
            loaded.sam, loaded.config, device, config.runtime, config.precision, config.lone_click
        )
    )
    trained = bool(loaded.card.get("trained", True))
    return LoadedConfiguration(config, engine, adapter, trained, loaded)


def base_row(spec: CaseSpec, config: Configuration, settings: EvaluationSettings) -> dict:
    """The identifying columns of a case row."""
    return {
        "dataset": spec.dataset,
        "case": spec.case,
        "modality": spec.modality if spec.modality != "auto" else "",
        "config": config.name,
        "model": config.model,
        "quant": config.quant,
        "adapter": config.adapter,
        "prompt": str(settings.prompt),
        "status": "failed",
        "error": "",
    }


def evaluate_case(
    case: LoadedCase, loaded: LoadedConfiguration, settings: EvaluationSettings
) -> dict[str, object]:
    """Metrics of one configuration on one loaded case (no identifying columns)."""
    from minisam.propagation import PropagationSettings
    from minisam.volume_session import VolumeSession

    adapter = loaded.prepare(case)
    engine = loaded.engine
    engine.reset()
    session = VolumeSession(engine, case.normalized, is_rgb=case.is_rgb)  # type: ignore[arg-type]
    rng = case_rng(settings.seed, case.spec.dataset, case.spec.case)

    def predict(prompt: Prompt) -> Prediction:
        return session.predict(0, case.slice_index, prompt, multimask=settings.multimask)

    prompt, prediction = simulate(settings.prompt, case.slice_truth, rng, predict)
    if settings.propagate and case.is_volume:
        result = session.segment(
            0,
            {case.slice_index: prompt},
            propagate=True,
            settings=PropagationSettings(),
            multimask=settings.multimask,
        )
        pred, truth, spacing, scope = result.labels != 0, case.truth, case.spacing, "volume"
    else:
        pred, truth, spacing = prediction.mask, case.slice_truth, case.slice_spacing
        scope = "slice" if case.is_volume else "image"
    values: dict[str, object] = dict(
        segmentation_metrics(pred, truth, spacing, settings.tolerance_mm)
    )
    values["ssim"] = mask_ssim(pred, truth)
    values["score"] = prediction.score
    values["encoder_s"] = engine.encoder_s
    values["decoder_s"] = engine.decoder_s
    values.update(
        status="ok",
        modality_used=case.modality,
        **({"adapter": f"{AUTO}:{adapter or 'none'}"} if loaded.automatic else {}),
        scope=scope,
        slice=case.slice_index,
        pred_pixels=int(np.count_nonzero(pred)),
        truth_pixels=int(np.count_nonzero(truth)),
    )
    return values


@dataclass
class RunState:
    """Rows by (dataset, case, config) and the problems met, in order."""

    rows: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def run_cases(
    specs: list[CaseSpec],
    configs: list[LoadedConfiguration],
    settings: EvaluationSettings,
    state: RunState,
    on_case_done: Callable[[RunState], None] | None = None,
    progress: bool = True,
    report: Callable[[str], None] | None = None,
) -> RunState:
    """Evaluate every (case, configuration) not already ``ok`` in ``state.rows``.

    Arguments:
      specs: cases in manifest order.
      configs: loaded configurations in the order asked.
      settings: prompt protocol, seed, tolerance, propagation.
      state: rows kept from a previous run (resume); updated in place.
      on_case_done: called after each case (writes cases.csv, so an interrupted run resumes).
      progress: show a tqdm bar on stderr.
      report: prints one problem line (default: stderr).
    """
    from tqdm import tqdm

    def say(line: str) -> None:
        state.problems.append(line)
        if report is not None:
            report(line)
        elif bar is not None:
            bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    total = len(specs) * len(configs)
    bar = tqdm(total=total, desc="evaluating", unit="run", file=sys.stderr) if progress else None
    for spec in specs:
        keys = [(spec.dataset, spec.case, item.config.name) for item in configs]
        pending = [
            item
            for item, key in zip(configs, keys, strict=True)
            if state.rows.get(key, {}).get("status") != "ok"
        ]
        if bar is not None:
            bar.update(len(configs) - len(pending))
        if not pending:
            continue
        try:
            case = load_case(spec)
        except CASE_ERRORS as error:
            say(f"minisam evaluate: {spec.dataset}/{spec.case} failed: {_one_line(error)}")
            for item in pending:
                row = base_row(spec, item.config, settings)
                row["error"] = _one_line(error)
                state.rows[(spec.dataset, spec.case, item.config.name)] = row
            if bar is not None:
                bar.update(len(pending))
            if on_case_done is not None:
                on_case_done(state)
            continue
        for item in pending:
            row = base_row(spec, item.config, settings)
            if not row["modality"]:
                row["modality"] = case.modality
            try:
                row.update(evaluate_case(case, item, settings))
            except CASE_ERRORS as error:
                row["error"] = _one_line(error)
                say(
                    f"minisam evaluate: {spec.dataset}/{spec.case} with {item.config.name} "
                    f"failed: {row['error']}"
                )
            state.rows[(spec.dataset, spec.case, item.config.name)] = row
            if bar is not None:
                bar.update(1)
        if on_case_done is not None:
            on_case_done(state)
    if bar is not None:
        bar.close()
    return state


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, MiniSAMError) else f"{type(error).__name__}: {text}"
