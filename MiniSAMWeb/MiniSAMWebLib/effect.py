"""The MiniSAM effect for trame-slicer's segmentation editor: slice-view gestures -> prompts in RAS.

Built the trame-slicer way: a ``SegmentationEffect`` registered in the ``SegmentationEditor`` and a
``SegmentationEffectPipeline`` per slice view that receives the view's interaction events. Left click =
positive point, Shift + left click or right click = negative point, left drag = box (its four corners), and
the keys C (SAM's next candidate mask) and P (propagate), as in the Slicer effect
(``MiniSAMSegmentLib.view_gestures`` decides which). What a gesture means for the segment
is decided by whoever :meth:`MiniSAMEffect.set_prompt_handler` was given (the app's controller).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from MiniSAMSegmentLib.view_gestures import Gesture, gesture, shortcut
from slicer import (
    vtkMRMLAbstractViewNode,
    vtkMRMLInteractionEventData,
    vtkMRMLNode,
    vtkMRMLSliceNode,
)
from trame_slicer.segmentation import SegmentationEffect, SegmentationEffectPipeline
from vtkmodules.vtkCommonCore import vtkCommand
from vtkmodules.vtkRenderingCore import vtkRenderer

from .drag_feedback import DragRectangle

__all__ = [
    "MiniSAMEffect",
    "MiniSAMSlicePipeline",
    "PromptHandler",
    "ShortcutHandler",
    "xy_to_ras",
]

SHIFT, CTRL, ALT = 1, 2, 4  # vtkEvent modifiers
YIELD_DISTANCE2 = 1e5
"""Squared display distance the pipeline claims a button press at: a widget under the mouse claims a smaller
one (a prompt markup picked within its tolerance), so prompt points can be dragged; elsewhere the press is
MiniSAM's."""

PromptHandler = Callable[[vtkMRMLSliceNode, Gesture, np.ndarray], None]
"""Called with the slice node of the view, the gesture and its points in world RAS ((1, 3) or (4, 3))."""
ShortcutHandler = Callable[[str], None]
"""Called with the action of a key pressed over a slice view (``view_gestures.SHORTCUTS``)."""


def xy_to_ras(slice_node: vtkMRMLSliceNode, points_xy: Sequence[Sequence[float]]) -> np.ndarray:
    """World RAS (N, 3) of slice-view display positions (pixels, origin bottom left)."""
    matrix = slice_node.GetXYToRAS()
    return np.array([matrix.MultiplyPoint([x, y, 0.0, 1.0])[:3] for x, y in points_xy])


class MiniSAMEffect(SegmentationEffect):
    """Prompts from the slice views; the segment edit itself is the prompt handler's (shared logic)."""

    def __init__(self) -> None:
        super().__init__()
        self._handler: PromptHandler | None = None
        self._shortcut_handler: ShortcutHandler | None = None

    def set_prompt_handler(self, handler: PromptHandler | None) -> None:
        self._handler = handler

    def set_shortcut_handler(self, handler: ShortcutHandler | None) -> None:
        self._shortcut_handler = handler

    def shortcut(self, action: str) -> None:
        """Hand a key's action (e.g. "next candidate", "propagate") to the shortcut handler."""
        if self._shortcut_handler is not None:
            self._shortcut_handler(action)

    def prompt(self, slice_node: vtkMRMLSliceNode, action: Gesture) -> None:
        """Hand a finished gesture of a slice view to the handler, its points in world RAS."""
        if self._handler is not None:
            self._handler(slice_node, action, xy_to_ras(slice_node, action.points))

    def _create_pipeline(
        self, view_node: vtkMRMLAbstractViewNode, _parameter: vtkMRMLNode
    ) -> SegmentationEffectPipeline | None:
        # 2D only: a prompt lies on one slice of the volume
        return MiniSAMSlicePipeline() if isinstance(view_node, vtkMRMLSliceNode) else None


class MiniSAMSlicePipeline(SegmentationEffectPipeline[MiniSAMEffect]):
    """Turns a slice view's button press and release into one gesture for the effect."""

    _EVENTS = (
        int(vtkCommand.LeftButtonPressEvent),
        int(vtkCommand.LeftButtonReleaseEvent),
        int(vtkCommand.RightButtonPressEvent),
        int(vtkCommand.RightButtonReleaseEvent),
        int(vtkCommand.MouseMoveEvent),
        int(vtkCommand.KeyPressEvent),
    )

    def __init__(self) -> None:
        super().__init__()
        self._press: tuple[int, tuple[float, float], bool] | None = None  # button event, xy, shift
        self._rectangle = DragRectangle()

    def OnRendererAdded(self, renderer: vtkRenderer | None) -> None:
        self._rectangle.set_renderer(renderer)

    def OnRendererRemoved(self, _renderer: vtkRenderer) -> None:
        self._rectangle.set_renderer(None)

    def CanProcessInteractionEvent(
        self, event_data: vtkMRMLInteractionEventData
    ) -> tuple[bool, float]:
        if not self.IsActive() or event_data.GetType() not in self._EVENTS:
            return False, 0.0
        if event_data.GetType() == int(vtkCommand.MouseMoveEvent):
            return self._press is not None, 0.0  # only while a button is down (the drag of a box)
        if event_data.GetType() == int(vtkCommand.KeyPressEvent):
            return self._key_action(event_data) is not None, 0.0  # other keys stay Slicer's
        return True, YIELD_DISTANCE2

    @staticmethod
    def _key_action(event_data: vtkMRMLInteractionEventData) -> str | None:
        modified = bool(event_data.GetModifiers() & (CTRL | ALT))
        return shortcut(event_data.GetKeySym(), modified)

    def ProcessInteractionEvent(self, event_data: vtkMRMLInteractionEventData) -> bool:
        kind = event_data.GetType()
        xy = tuple(float(v) for v in event_data.GetDisplayPosition())
        if kind in (int(vtkCommand.LeftButtonPressEvent), int(vtkCommand.RightButtonPressEvent)):
            self._press = (kind, xy, bool(event_data.GetModifiers() & SHIFT))
            return True
        if kind == int(vtkCommand.MouseMoveEvent):
            if self._press is None:
                return False
            button, start, _ = self._press
            if button == int(vtkCommand.LeftButtonPressEvent) and gesture(start, xy).kind == "box":
                self._rectangle.show(start, xy)
                self.RequestRender()
            return True
        if kind == int(vtkCommand.KeyPressEvent):
            action = self._key_action(event_data)
            if action is not None and self._effect is not None:
                self._effect.shortcut(action)
            return action is not None
        if self._press is None:
            return False
        button, start, shift = self._press
        self._press = None
        self._rectangle.hide()
        self.RequestRender()
        if button == int(vtkCommand.RightButtonPressEvent):
            # a right click is a negative point wherever the button is released
            action = gesture(start, start, negative=True)
        else:
            action = gesture(start, xy, negative=shift)
        slice_node = self.GetViewNode()
        if self._effect is not None and isinstance(slice_node, vtkMRMLSliceNode):
            self._effect.prompt(slice_node, action)
        return True

    def LoseFocus(self, event_data: vtkMRMLInteractionEventData | None) -> None:
        super().LoseFocus(event_data)
        self._press = None
        self._rectangle.hide()
