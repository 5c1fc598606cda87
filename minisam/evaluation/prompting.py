"""Deterministic prompt simulation from the ground truth of one slice.

Modes (``--prompt``):

* ``box`` or ``box:F`` — the ground-truth bounding box, each side moved by Gaussian noise of
  standard deviation ``F`` × the box size (at most 20 px; default ``F`` = 0.05);
* ``points:K`` — ``K`` positive points drawn uniformly from the ground truth;
* ``clicks:K`` — ``K`` interactive clicks: the first positive at the ground truth's most interior
  pixel, then ``K - 1`` corrective clicks drawn in the larger error region of the previous mask
  (positive in missed foreground, negative in false positives), each fed with the previous
  low-resolution logits.

Every case gets its own generator seeded from ``(seed, crc32(dataset/case))``, so a case's box and
points do not depend on the order of the cases nor on the configuration evaluated; corrective clicks
depend on the configuration's own previous masks, by design.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from minisam.engine import Prediction
from minisam.errors import InputError
from minisam.prompts import Prompt, interior_point
from minisam.training.prompt_simulation import correction_click, jittered_box, sample_points

DEFAULT_BOX_JITTER = 0.05
MAX_JITTER_PX = 20.0


@dataclass(frozen=True)
class PromptMode:
    """A parsed ``--prompt`` value."""

    kind: str  # "box", "points" or "clicks"
    jitter: float = DEFAULT_BOX_JITTER
    count: int = 1

    def __str__(self) -> str:
        if self.kind == "box":
            return f"box:{self.jitter:g}"
        return f"{self.kind}:{self.count}"


def parse_prompt_mode(text: str) -> PromptMode:
    """Parse ``box``, ``box:F``, ``points:K`` or ``clicks:K``."""
    kind, _, value = text.strip().lower().partition(":")
    try:
        if kind == "box":
            jitter = float(value) if value else DEFAULT_BOX_JITTER
            if not 0 <= jitter <= 1:
                raise ValueError
            return PromptMode("box", jitter=jitter)
        if kind in ("points", "clicks"):
            count = int(value) if value else 1
            if count < 1:
                raise ValueError
            return PromptMode(kind, count=count)
    except ValueError:
        pass
    raise InputError(
        f"--prompt {text!r}: expected box, box:F (0 <= F <= 1), points:K or clicks:K (K >= 1)"
    )


def case_rng(seed: int, dataset: str, case: str) -> np.random.Generator:
    """The generator of one case: independent of case order and configuration."""
    return np.random.default_rng([int(seed), zlib.crc32(f"{dataset}/{case}".encode())])


def simulate(
    mode: PromptMode,
    truth: np.ndarray,
    rng: np.random.Generator,
    predict: Callable[[Prompt], Prediction],
) -> tuple[Prompt, Prediction]:
    """Run the prompt protocol on one slice; returns the last prompt and its prediction.

    Arguments:
      mode: the prompt protocol.
      truth: boolean (H, W) ground truth (non-empty).
      rng: the case's generator (:func:`case_rng`).
      predict: runs the model for a prompt on this slice.
    """
    truth = np.asarray(truth, dtype=bool)
    if mode.kind == "box":
        prompt = Prompt(box=jittered_box(truth, rng, mode.jitter, MAX_JITTER_PX))
        return prompt, predict(prompt)
    if mode.kind == "points":
        points = sample_points(truth, mode.count, rng)
        prompt = Prompt(points=points, labels=np.ones(len(points), dtype=np.int64))
        return prompt, predict(prompt)
    first = interior_point(truth)
    prompt = Prompt(points=first[None], labels=np.ones(1, dtype=np.int64))
    prediction = predict(prompt)
    for _ in range(mode.count - 1):
        click = correction_click(truth, prediction.mask, rng)
        if click is None:  # perfect mask: nothing left to correct
            break
        prompt = prompt.with_point(*click, mask_logits=prediction.low_res_logits[:1])
        prediction = predict(prompt)
    return prompt, prediction
