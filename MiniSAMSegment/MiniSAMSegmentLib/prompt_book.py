"""The clicks and boxes a user has placed, per volume, slicing axis and slice. No Qt.

Clicks on a slice accumulate (each refines that slice's mask); a new box replaces the slice's box. The book
keeps every prompted slice of the current volume and axis, which is what propagation starts from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minisam.prompts import Prompt

__all__ = ["PromptBook", "SliceClicks"]


@dataclass
class SliceClicks:
    """Prompts on one slice in its pixel coordinates (x = column, y = row)."""

    positive: list[list[float]] = field(default_factory=list)
    negative: list[list[float]] = field(default_factory=list)
    box: list[float] | None = None

    def prompt(self) -> Prompt:
        return Prompt.create(self.positive, self.negative, self.box)


class PromptBook:
    """Prompted slices of one (volume, axis); switching volume or axis starts a new book."""

    def __init__(self) -> None:
        self.volume_id: str | None = None
        self.axis: int | None = None
        self.slices: dict[int, SliceClicks] = {}

    def _page(self, volume_id: str, axis: int, index: int) -> SliceClicks:
        if (volume_id, axis) != (self.volume_id, self.axis):
            self.clear()
            self.volume_id, self.axis = volume_id, axis
        return self.slices.setdefault(index, SliceClicks())

    def add(self, volume_id: str, axis: int, index: int, prompt: Prompt) -> Prompt:
        """Merge a new prompt (clicks and/or a box) into its slice; return the slice's combined prompt."""
        page = self._page(volume_id, axis, index)
        if prompt.points is not None:
            for point, label in zip(prompt.points.tolist(), prompt.labels.tolist(), strict=True):
                (page.positive if label == 1 else page.negative).append(point)
        if prompt.box is not None:
            page.box = prompt.box.tolist()
        return page.prompt()

    def prompts(self, volume_id: str, axis: int) -> dict[int, Prompt]:
        """Prompt per slice index for this volume and axis (empty if the book holds another one)."""
        if (volume_id, axis) != (self.volume_id, self.axis):
            return {}
        return {index: page.prompt() for index, page in sorted(self.slices.items())}

    def clear(self) -> None:
        self.volume_id, self.axis, self.slices = None, None, {}
