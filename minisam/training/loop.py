"""The epoch loop every MiniSAM trainer runs: base training, distillation fine-tuning, adapters.

Deterministic by construction, so that a run can be cancelled and resumed, or spread over
``torchrun`` processes, and still compute what one uninterrupted process computes:

- the sample order of epoch ``e`` comes from a generator seeded with (seed, e), the augmentation of
  step ``s`` from (seed, e, s) and the simulated prompt of sample ``i`` from (seed, e, i); nothing
  depends on how many steps ran before in this process;
- the resume file holds the trainable parameters, optimiser, learning-rate schedule, best weights,
  history and step counters (written atomically after every epoch and on cancel);
- with several processes each takes its share of the global batch and DistributedDataParallel
  averages the gradients (:mod:`minisam.training.distributed`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import torch
import torch.distributed as dist

from minisam.atomic import atomic_output
from minisam.errors import InputError, OutputError
from minisam.training.distributed import World, current_world, shard, wrap

ProgressCallback = Callable[[dict], bool | None]  # return False to cancel
RESUME_FORMAT = "minisam.resume/1"


class BatchSource(Protocol):
    """The training samples of one objective, as arguments of its loss module."""

    def __len__(self) -> int: ...

    def batch(
        self, index: torch.Tensor, part: torch.Tensor, epoch: int, step: int, device: torch.device
    ) -> tuple:
        """Arguments for the positions ``part`` of the global batch ``index`` (sample numbers).

        Anything random must depend only on the loop's seed, ``epoch``, ``step`` and ``index``, and
        be drawn for the whole global batch before ``part`` is taken, so that every process count
        and every resume sees the same batch.
        """
        ...


@dataclass
class TrainSettings:
    """Optimisation settings shared by all trainers.

    Arguments:
      patience: stop after this many epochs without a better validation Dice (None: never).
      warmup_fraction: share of all steps with a linear learning-rate warm-up (then cosine decay).
      max_minutes: stop (resumably) after the epoch that passes this wall-clock budget.
      correction_clicks: corrective rounds per sample after its first prompt (SAM's interactive
        training; see :mod:`minisam.training.mask_loss`).
      geometric_augmentation: share of samples given a small random affine transform.

    ``resume_keys`` names the settings a resumed run must share with the run that wrote the resume
    file; a subclass with settings of its own that shape the run extends it.
    """

    resume_keys: ClassVar[tuple[str, ...]] = (
        "epochs",
        "batch_size",
        "learning_rate",
        "weight_decay",
        "seed",
        "warmup_fraction",
    )
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    seed: int = 0
    box_probability: float = 0.6
    iou_loss_weight: float = 1.0
    max_minutes: float | None = None
    patience: int | None = None
    warmup_fraction: float = 0.05
    clip_norm: float = 1.0
    correction_clicks: int = 1
    geometric_augmentation: float = 0.5


@dataclass
class TrainReport:
    """What a training run did; ``best_epoch`` -1 means the starting weights stayed best."""

    best_val_dice: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    cancelled: bool = False
    stopped_early: bool = False
    baseline_val_dice: float = float("nan")
    resumed: bool = False


@dataclass
class LoopHooks:
    """Optional callbacks of :func:`fit`.

    Arguments:
      progress: called with {"epoch", "step", "steps", "loss"} after each step and {"epoch",
        "validation": row} after each validation; returning False cancels (resumably).
      on_best: called on rank 0 with (epoch, val_dice) when the weights are the best so far.
      after_step: called with the global step after each optimiser step (AdaLoRA's rank budget).
      extra_state / load_extra_state: more tensors to keep in the resume file and restore from it.
    """

    progress: ProgressCallback | None = None
    on_best: Callable[[int, float], None] | None = None
    after_step: Callable[[int], None] | None = None
    extra_state: Callable[[], dict] | None = None
    load_extra_state: Callable[[dict], None] | None = None


def derived_seed(*parts: int) -> int:
    """A 32-bit seed determined by ``parts`` (seed, epoch, step, ...), for reproducible draws."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of ``epoch``: a permutation fixed by (seed, epoch)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(derived_seed(seed, epoch)))


def _warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, round(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return factor


def _snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in params.items()}


def restore(params: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor]) -> None:
    """Copy ``saved`` tensors into ``params`` (same names)."""
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(saved[key])


def _all_agree(flag: bool, world: World) -> bool:
    """True on every rank when any rank says True (one rank's cancel stops all of them)."""
    if world.size == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


@dataclass
class _Position:
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    stale: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    elapsed: float = 0.0


class _Run:
    """State of one :func:`fit` call (kept together so it can be written to and read from disk)."""

    def __init__(self, params, settings, steps_per_epoch, world, hooks, state_file):
        self.params = params
        self.settings = settings
        self.steps_per_epoch = steps_per_epoch
        self.world = world
        self.hooks = hooks
        self.state_file = state_file
        self.optimizer = torch.optim.AdamW(
            list(params.values()), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        total = settings.epochs * steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _warmup_cosine(total, settings.warmup_fraction)
        )
        self.at = _Position()
        self.best = _snapshot(params)

    def save(self, report: TrainReport) -> None:
        """Write the resume file atomically (rank 0 only)."""
        if self.state_file is None or not self.world.is_main:
            return
        state = {
            "format": RESUME_FORMAT,
            "settings": json.dumps(asdict(self.settings)),
            "position": json.dumps(asdict(self.at)),
            "report": json.dumps(asdict(report)),
            "params": _snapshot(self.params),
            "best": self.best,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "extra": self.hooks.extra_state() if self.hooks.extra_state else {},
        }
        try:
            with atomic_output(self.state_file) as tmp:
                torch.save(state, tmp)
        except OSError as exc:
            raise OutputError(f"cannot write resume file {self.state_file} ({exc})") from None

    def load(self, path: Path, report: TrainReport) -> None:
        """Continue from a resume file written by :meth:`save` for the same model and data."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise InputError(f"--resume {path}: no such file") from None
        except Exception as exc:  # pickle / zip errors of a damaged file
            raise InputError(f"--resume {path}: not a readable resume file ({exc})") from None
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            raise InputError(f"--resume {path}: not a MiniSAM resume file")
        saved = json.loads(state["settings"])
        keys = self.settings.resume_keys
        changed = [k for k in keys if saved.get(k) != getattr(self.settings, k)]
        if changed:
            raise InputError(
                f"--resume {path}: written with other settings ("
                + ", ".join(f"{k} {saved.get(k)} != {getattr(self.settings, k)}" for k in changed)
                + ")"
            )
        if set(state["params"]) != set(self.params) or any(
            state["params"][k].shape != p.shape for k, p in self.params.items()
        ):
            raise InputError(f"--resume {path}: its parameters do not match this model")
        restore(self.params, state["params"])
        self.best = state["best"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.hooks.load_extra_state:
            self.hooks.load_extra_state(state["extra"])
        self.at = _Position(**json.loads(state["position"]))
        saved_report = json.loads(state["report"])
        for key, value in saved_report.items():
            setattr(report, key, value)
        report.history = [row for row in report.history if not row.get("partial")]
        report.cancelled = report.stopped_early = False
        report.resumed = True


def fit(
    step_loss: torch.nn.Module,
    batches: BatchSource,
    params: dict[str, torch.nn.Parameter],
    validate: Callable[[], float],
    settings: TrainSettings,
    hooks: LoopHooks | None = None,
    baseline: bool = False,
    state_file: Path | None = None,
    resume_from: Path | None = None,
    world: World | None = None,
) -> tuple[TrainReport, dict[str, torch.Tensor]]:
    """Train ``params`` (the trainable tensors inside ``step_loss``) on ``batches``.

    Arguments:
      step_loss: the module whose forward returns the summed loss of the samples it is given;
        wrapped in DistributedDataParallel when ``world`` has several ranks.
      batches: turns sample indices into ``step_loss``'s arguments (deterministically).
      params: the trainable parameters by name (everything else is frozen by the caller).
      validate: validation Dice of the current weights (higher is better), after every epoch.
      baseline: validate before the first step and count the starting weights as epoch -1 (adapters:
        the zero-shot base must be beaten).
      state_file: where to keep the resume file (None: no resume file). Removed when the run ends by
        itself (all epochs or early stopping); kept after a cancel or the time budget.
      resume_from: continue from this resume file instead of starting afresh.

    Returns:
      the report and the best weights seen (the caller restores or saves them).
    """
    hooks = hooks or LoopHooks()
    world = world or current_world()
    steps_per_epoch = math.ceil(len(batches) / settings.batch_size)
    run = _Run(params, settings, steps_per_epoch, world, hooks, state_file)
    report = TrainReport()
    module = wrap(step_loss, world)
    if resume_from is not None:
        run.load(Path(resume_from), report)
    elif baseline:
        report.baseline_val_dice = report.best_val_dice = validate()
    started = time.monotonic() - run.at.elapsed
    at = run.at
    while at.epoch < settings.epochs and not report.cancelled:
        step_loss.train()
        order = epoch_order(len(batches), settings.seed, at.epoch)
        while at.step < steps_per_epoch:
            loss = _train_step(module, run, batches, order)
            at.epoch_losses.append(loss)
            at.step += 1
            at.global_step += 1
            info = {"epoch": at.epoch, "step": at.step - 1, "steps": steps_per_epoch, "loss": loss}
            wants_stop = hooks.progress is not None and hooks.progress(info) is False
            if _all_agree(wants_stop, world):
                report.cancelled = True
                break
        _end_epoch(run, report, validate, started)
    if not report.cancelled and state_file is not None and world.is_main:
        if not _over_time(report, settings):
            Path(state_file).unlink(missing_ok=True)
    report.seconds = time.monotonic() - started
    return report, run.best


def _train_step(module, run: _Run, batches: BatchSource, order: torch.Tensor) -> float:
    """One optimiser step on the global batch ``run.at.step`` of the epoch; this rank's mean loss."""
    settings, at = run.settings, run.at
    index = order[at.step * settings.batch_size : (at.step + 1) * settings.batch_size]
    part, weight = shard(torch.arange(len(index)), run.world)
    device = next(iter(run.params.values())).device
    total = module(*batches.batch(index, part, at.epoch, at.step, device))
    run.optimizer.zero_grad(set_to_none=True)
    (total * weight).backward()
    torch.nn.utils.clip_grad_norm_(list(run.params.values()), run.settings.clip_norm)
    run.optimizer.step()
    run.scheduler.step()
    if run.hooks.after_step is not None:  # peft AdaLoRA: after step(), before gradients are cleared
        run.hooks.after_step(at.global_step + 1)
    return float(total.detach()) / len(part) if weight else float("nan")


def _over_time(report: TrainReport, settings: TrainSettings) -> bool:
    last = report.history[-1]["minutes"] if report.history else 0.0
    return settings.max_minutes is not None and last > settings.max_minutes


def _end_epoch(run: _Run, report: TrainReport, validate, started: float) -> None:
    """Validate, record, keep the best weights, decide on early stopping, write the resume file."""
    settings, at = run.settings, run.at
    complete = at.step >= run.steps_per_epoch
    val_dice = validate()
    row = {
        "epoch": at.epoch,
        "train_loss": float(np.nanmean(at.epoch_losses)) if at.epoch_losses else float("nan"),
        "val_dice": val_dice,
        "minutes": (time.monotonic() - started) / 60,
    }
    if not complete:
        row["partial"] = True
    report.history.append(row)
    if val_dice > report.best_val_dice:
        report.best_val_dice, report.best_epoch, at.stale = val_dice, at.epoch, 0
        run.best = _snapshot(run.params)
        if run.hooks.on_best is not None and run.world.is_main:
            run.hooks.on_best(at.epoch, val_dice)
    elif complete:
        at.stale += 1
    if complete:
        at.epoch, at.step, at.epoch_losses = at.epoch + 1, 0, []
    if (
        settings.patience is not None
        and at.stale >= settings.patience
        and at.epoch < settings.epochs
    ):
        report.stopped_early = True
    at.elapsed = time.monotonic() - started
    if run.hooks.progress is not None:
        run.hooks.progress({"epoch": row["epoch"], "validation": row})
    run.save(report)
    if report.stopped_early or _over_time(report, settings):
        at.epoch = settings.epochs  # ends the loop; the resume file (if any) stays for over-time
