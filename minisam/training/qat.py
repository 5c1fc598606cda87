"""AdaLoRA-QAT: an adaptive-rank adapter in full precision, then quantization-aware fine-tuning.

Stage 1 trains an AdaLoRA adapter on the fp32 base (ranks re-allocated between layers). Stage 2
quantizes selected layer groups of a fresh copy of the base (INT8 on the attention by default),
loads the stage-1 adapter at its final ranks and fine-tunes it *through* the quantized layers, so
the adapter learns to compensate their error. MiniSAM deploys exactly this: a quantized frozen
encoder with an fp32 adapter on top, so the stage-2 forward pass is the deployed forward pass.

Stage 2 starts from stage 1's adapter on the quantized base, i.e. post-training quantization
(PTQ); its validation Dice is the baseline the QAT epochs must beat and is reported as such.

Cancel and resume (:class:`QatFiles`, next to the output ``OUT``): stage 1 keeps its own resume
file (``OUT.stage1.resume.pt``); when it finishes, its adapter and report are written atomically
to ``OUT.stage1/``, and stage 2 keeps ``OUT.resume.pt``. A resumed run continues stage 1 where it
stopped, or, once ``OUT.stage1/`` exists, skips stage 1 (quantizing a fresh base and loading the
stage-1 adapter, as the uninterrupted run does) and continues stage 2; it ends with the weights and
report of an uninterrupted run. These files are removed when stage 2 ends by itself.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from peft import PeftModel

from minisam.adapters.adapter_io import save_adapter
from minisam.adapters.injection import load_adapter
from minisam.adapters.lora import AdapterSpec
from minisam.atomic import atomic_folder
from minisam.checkpoints import LoadedModel
from minisam.errors import InputError, OutputError
from minisam.quantization import quantize_model
from minisam.training.adapter_trainer import (
    AdapterTrainReport,
    AdapterTrainSettings,
    check_quant,
    fit_adapter,
    train_adapter,
)
from minisam.training.loop import ProgressCallback
from minisam.training.slice_samples import SliceSample

DEFAULT_QAT_SCHEME = "int8:attn"
STAGE1_FORMAT = "minisam.qat-stage1/1"
_STAGE1_REPORT = "stage1.json"


@dataclass(frozen=True)
class QatFiles:
    """Where a resumable AdaLoRA-QAT run keeps its intermediate state.

    Arguments:
      stage1_state: stage 1's resume file (while stage 1 runs, and after a cancel during it).
      stage1: the finished stage-1 adapter (``adapter/``) and its report (``stage1.json``).
      stage2_state: stage 2's resume file.
    """

    stage1_state: Path
    stage1: Path
    stage2_state: Path

    @classmethod
    def next_to(cls, out: str | Path) -> QatFiles:
        """``OUT.stage1.resume.pt``, ``OUT.stage1/`` and ``OUT.resume.pt`` for the output ``OUT``."""
        out = Path(out)
        return cls(
            out.with_name(out.name + ".stage1.resume.pt"),
            out.with_name(out.name + ".stage1"),
            out.with_name(out.name + ".resume.pt"),
        )

    def stage1_done(self) -> bool:
        """Whether stage 1 finished (its folder is written atomically, so it is complete)."""
        return (self.stage1 / _STAGE1_REPORT).is_file()

    def check_resumable(self) -> None:
        """A one-line InputError when there is nothing for ``resume=True`` to continue."""
        if not (self.stage1_done() or self.stage1_state.is_file()):
            raise InputError(
                f"--resume: no resume file {self.stage1_state} or stage-1 folder {self.stage1} "
                "(nothing to continue)"
            )

    def remove(self) -> None:
        """Remove all of them (a finished run, or stale ones before a fresh stage 1)."""
        shutil.rmtree(self.stage1, ignore_errors=True)
        self.stage1_state.unlink(missing_ok=True)
        self.stage2_state.unlink(missing_ok=True)


def _staged(progress: ProgressCallback | None, stage: int) -> ProgressCallback | None:
    if progress is None:
        return None
    return lambda info: progress(dict(info, stage=stage))


def train_adapter_qat(
    loaded: LoadedModel,
    train_samples: list[SliceSample],
    val_samples: list[SliceSample],
    spec: AdapterSpec,
    modality: str,
    settings: AdapterTrainSettings | None = None,
    qat_scheme: str = DEFAULT_QAT_SCHEME,
    qat_epochs: int | None = None,
    progress: ProgressCallback | None = None,
    name: str = "default",
    files: QatFiles | None = None,
    resume: bool = False,
) -> tuple[PeftModel, AdapterTrainReport, LoadedModel]:
    """The two-stage recipe; returns the stage-2 model, a report and the quantized base it runs on.

    Arguments:
      spec: an AdaLoRA spec for stage 1 (its final ranks are kept in stage 2).
      modality: the adapter's modality (stored with the intermediate adapter).
      qat_scheme: what stage 2 quantizes ("int8:attn", "int8", "nf4:mlp+int8:attn", ...).
      qat_epochs: stage-2 epochs (default: half of ``settings.epochs``, at least 1).
      files: where to keep the resume files and the stage-1 adapter (None: no resume files).
      resume: continue the run that left ``files`` (``loaded`` is the fresh base model).

    The report's ``history`` has both stages (rows carry "stage"); ``extra`` holds the stage-1
    (fp32) validation Dice, the PTQ Dice and the QAT Dice. A cancel during stage 1 skips stage 2
    and returns the stage-1 model on the fp32 base.
    """
    settings = settings or AdapterTrainSettings()
    if spec.method != "adalora":
        raise InputError("AdaLoRA-QAT needs an AdaLoRA adapter spec (method 'adalora')")
    scheme = check_quant(qat_scheme)
    if not scheme.groups:
        raise InputError(f"--qat-scheme {qat_scheme!r} quantizes nothing; use e.g. int8:attn")
    stage2 = replace(
        settings,
        epochs=qat_epochs or max(1, settings.epochs // 2),
        learning_rate=settings.learning_rate / 3,
        seed=settings.seed + 1,
    )
    run = {
        "settings": {k: getattr(settings, k) for k in settings.resume_keys},
        "spec": spec.to_dict(),
        "qat_scheme": qat_scheme,
        "qat_epochs": stage2.epochs,
    }
    run = json.loads(json.dumps(run))  # as stage1.json will hold it (lists, not tuples)
    if resume and files is None:
        raise InputError("resume needs the files of the run to continue (files=QatFiles...)")
    if resume:
        files.check_resumable()
    skip = resume and files.stage1_done()
    if skip:  # stage 1 finished earlier: its adapter and report are in files.stage1
        first = _load_stage1(files.stage1, run, loaded.base_hash())
        fresh = loaded
    else:
        if files is not None:  # stale intermediate results of an earlier run must not be resumed
            shutil.rmtree(files.stage1, ignore_errors=True)
            files.stage2_state.unlink(missing_ok=True)
        fresh = copy.deepcopy(loaded)  # stage 2 needs the base without stage 1's peft layers
        model, first = train_adapter(
            loaded, train_samples, val_samples, spec, settings, "fp32", _staged(progress, 1), name,
            state_file=files and files.stage1_state,
            resume_from=files.stage1_state if resume else None,
        )  # fmt: skip
        for row in first.history:
            row["stage"] = 1
        if first.cancelled:
            first.extra = {"stage1_val_dice": first.best_val_dice, "qat_scheme": None}
            return model, first, loaded
    with tempfile.TemporaryDirectory(prefix="minisam-qat-") as tmp:
        stage1 = files.stage1 if files is not None else Path(tmp) / "stage1"
        if not skip:
            meta = {"name": name, "modality": modality, "base_hash": first.base_hash}
            _save_stage1(stage1, model, name, meta, first, run)
        quantize_model(fresh, scheme, cpu_strategy=settings.cpu_strategy)
        quantized = load_adapter(
            fresh.sam, stage1 / "adapter", first.base_hash, name=name, trainable=True
        )
    resume_stage2 = skip and files.stage2_state.is_file()
    second = fit_adapter(
        quantized, name, fresh, train_samples, val_samples, stage2, _staged(progress, 2), False,
        state_file=files and files.stage2_state,
        resume_from=files.stage2_state if resume_stage2 else None,
    )  # fmt: skip
    for row in second.history:
        row["stage"] = 2
    if files is not None and not second.cancelled and not files.stage2_state.exists():
        files.remove()  # stage 2 ended by itself (the loop removed its resume file): done
    stage_epochs = (len(first.history), len(second.history))
    report = second
    report.history = first.history + second.history
    report.zero_shot_val_dice = first.zero_shot_val_dice
    report.base_hash, report.quant = first.base_hash, qat_scheme
    report.seconds = first.seconds + second.seconds
    report.resumed = resume
    report.extra = {
        "stage1_val_dice": first.best_val_dice,
        "ptq_val_dice": second.baseline_val_dice,
        "qat_val_dice": second.best_val_dice,
        "qat_scheme": qat_scheme,
        "stage1_epochs": stage_epochs[0],
        "stage2_epochs": stage_epochs[1],
    }
    return quantized, report, fresh


def _save_stage1(
    folder: Path, model: PeftModel, name: str, meta: dict, report: AdapterTrainReport, run: dict
) -> None:
    """The finished stage 1, atomically: ``adapter/`` and ``stage1.json`` (report and settings)."""
    data = {"format": STAGE1_FORMAT, "run": run, "report": asdict(report)}
    try:
        with atomic_folder(folder) as tmp:
            save_adapter(model, name, tmp / "adapter", meta)
            (tmp / _STAGE1_REPORT).write_text(json.dumps(data, indent=1) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write the stage-1 folder {folder} ({exc})") from None


def _load_stage1(folder: Path, run: dict, base_hash: str) -> AdapterTrainReport:
    """Stage 1's report from ``folder``, if it was written by a run with the same settings."""
    path = folder / _STAGE1_REPORT
    try:
        data = json.loads(path.read_text())
        if data.get("format") != STAGE1_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        report = AdapterTrainReport(**data["report"])
        saved = data["run"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--resume {folder}: not a readable stage-1 folder ({exc})") from None
    changed = [
        f"{k} {saved['settings'].get(k)} != {v}"
        for k, v in run["settings"].items()
        if saved["settings"].get(k) != v
    ]
    changed += [f"{k} {saved.get(k)!r} != {run[k]!r}" for k in ("qat_scheme", "qat_epochs")
                if saved.get(k) != run[k]]  # fmt: skip
    if saved.get("spec") != run["spec"]:
        changed.append("adapter spec (rank, method, targets)")
    if changed:
        raise InputError(f"--resume {folder}: written with other settings ({', '.join(changed)})")
    if report.base_hash != base_hash:
        raise InputError(f"--resume {folder}: stage 1 was trained on another base model")
    return report
