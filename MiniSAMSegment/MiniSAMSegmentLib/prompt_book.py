"""The clicks and boxes a user has placed, per volume, segment, slicing axis and slice. No Qt, no MRML.

Clicks on a slice accumulate (each refines that slice's mask); a new box replaces the slice's box. Each
(volume, segment) has its own prompts, so selecting another segment starts clean and coming back resumes.
Every prompt is a step that can be taken back: when the Segment Editor's Undo has restored the segment
as it was before a prompt's edit, :meth:`PromptBook.sync` drops that prompt too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from minisam.prompts import Prompt

__all__ = ["MAX_STEPS", "Owner", "PromptBook", "SliceClicks"]

MAX_STEPS = 100
"""Prompts remembered for undo (the Segment Editor keeps fewer undo states than this)."""


class Owner(NamedTuple):
    """Whose prompts: node IDs of the source volume and the segmentation, and the segment's ID."""

    volume_id: str
    segmentation_id: str
    segment_id: str


@dataclass
class SliceClicks:
    """Prompts on one slice in its pixel coordinates (x = column, y = row)."""

    positive: list[list[float]] = field(default_factory=list)
    negative: list[list[float]] = field(default_factory=list)
    box: list[float] | None = None

    def prompt(self) -> Prompt:
        return Prompt.create(self.positive, self.negative, self.box)

    def merge(self, prompt: Prompt) -> SliceClicks:
        """Add ``prompt``'s clicks; its box (if any) replaces the slice's box. Returns self."""
        if prompt.points is not None:
            for point, label in zip(prompt.points.tolist(), prompt.labels.tolist(), strict=True):
                (self.positive if label == 1 else self.negative).append(point)
        if prompt.box is not None:
            self.box = prompt.box.tolist()
        return self


@dataclass
class _Step:
    """One prompt: where it went, the slice's prompts before it, and the edit it made (see ``mark``)."""

    owner: Owner
    axis: int
    index: int
    before: SliceClicks | None
    region: object = None  # what the edit covered, as the caller describes it
    content: tuple[object, object] | None = None  # (before, after) the edit, in the caller's terms


class PromptBook:
    """Prompted slices per (volume, segment, axis), and the prompts in the order they were given."""

    def __init__(self) -> None:
        self.pages: dict[tuple[Owner, int], dict[int, SliceClicks]] = {}
        self._steps: list[_Step] = []

    def add(self, owner: Owner, axis: int, index: int, prompt: Prompt) -> Prompt:
        """Merge a new prompt (clicks and/or a box) into its slice; return the slice's combined prompt."""
        page = self.pages.setdefault((owner, axis), {})
        before = copy.deepcopy(page.get(index))
        clicks = page.setdefault(index, SliceClicks()).merge(prompt)
        self._steps.append(_Step(owner, axis, index, before))
        del self._steps[:-MAX_STEPS]
        return clicks.prompt()

    def replace(self, owner: Owner, axis: int, index: int, clicks: SliceClicks) -> Prompt:
        """Put ``clicks`` in place of the slice's prompts (e.g. moved in the scene), as one more prompt
        that Undo takes back like any other; return the slice's prompt."""
        page = self.pages.setdefault((owner, axis), {})
        before = copy.deepcopy(page.get(index))
        page[index] = copy.deepcopy(clicks)
        self._steps.append(_Step(owner, axis, index, before))
        del self._steps[:-MAX_STEPS]
        return page[index].prompt()

    def mark(self, region: object, before: object, after: object) -> None:
        """Record what the last prompt's edit did: the segment's content in ``region`` before and after."""
        if self._steps:
            self._steps[-1].region, self._steps[-1].content = region, (before, after)

    def last_edit(self) -> tuple[Owner, int, int, tuple[object, object] | None] | None:
        """(owner, axis, slice, (content before, after) or None) of the latest prompt; None if none."""
        if not self._steps:
            return None
        step = self._steps[-1]
        return step.owner, step.axis, step.index, step.content

    def sync(self, owner: Owner, content: Callable[[object], object]) -> int:
        """Drop the owner's latest prompts whose edits were undone; returns how many were dropped.

        ``content(region)`` gives the segment's content in a marked region now. A prompt counts as undone
        when that equals the content before its edit (and the edit had changed something); edits made by
        other means leave the prompts alone.
        """
        dropped = 0
        for step in reversed([s for s in self._steps if s.owner == owner]):
            if step.content is None or step.content[0] == step.content[1]:
                break
            if content(step.region) != step.content[0]:
                break
            self._take_back(step)
            dropped += 1
        return dropped

    def take_back_last(self) -> None:
        """Forget the latest prompt (its edit failed or was not made)."""
        if self._steps:
            self._take_back(self._steps[-1])

    def _take_back(self, step: _Step) -> None:
        self._steps.remove(step)
        page = self.pages.get((step.owner, step.axis), {})
        if step.before is None:
            page.pop(step.index, None)
        else:
            page[step.index] = step.before
        if not page:
            self.pages.pop((step.owner, step.axis), None)

    def prompts(self, owner: Owner, axis: int) -> dict[int, Prompt]:
        """Prompt per slice index for this owner and axis (empty when there are none)."""
        page = self.pages.get((owner, axis), {})
        return {index: clicks.prompt() for index, clicks in sorted(page.items())}

    def latest_axis(self, owner: Owner) -> int | None:
        """The axis of the owner's latest prompt (None: the owner has no prompts)."""
        for step in reversed(self._steps):
            if step.owner == owner and (owner, step.axis) in self.pages:
                return step.axis
        axes = [axis for (o, axis) in self.pages if o == owner]
        return axes[-1] if axes else None

    def drop(
        self,
        volume_id: str | None = None,
        segmentation_id: str | None = None,
        segment_id: str | None = None,
    ) -> None:
        """Forget the prompts of a volume, a segmentation, or one segment (with ``segmentation_id``)."""

        def matches(owner: Owner) -> bool:
            if volume_id is not None and owner.volume_id == volume_id:
                return True
            if segmentation_id is None or owner.segmentation_id != segmentation_id:
                return False
            return segment_id is None or owner.segment_id == segment_id

        self.pages = {key: page for key, page in self.pages.items() if not matches(key[0])}
        self._steps = [step for step in self._steps if not matches(step.owner)]

    def clear(self) -> None:
        self.pages, self._steps = {}, []
