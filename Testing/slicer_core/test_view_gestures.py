"""Press/release in a slice view -> click or box: HiDPI threshold, boxes from four corners in rotated views;
and the effect's event handler wired to them (the right button, the wheel and other keys left to Slicer)
and its cleanup."""

from __future__ import annotations

import numpy as np
import pytest
from MiniSAMSegmentLib.slice_geometry import ijk_to_slice_prompt
from MiniSAMSegmentLib.view_gestures import DRAG_THRESHOLD, drag_corners, gesture


def test_a_short_movement_is_a_click_and_shift_makes_it_negative() -> None:
    assert gesture((100, 80), (102, 77)) == ("positive", ((100, 80),))
    assert gesture((100, 80), (100, 80), negative=True) == ("negative", ((100, 80),))
    dragged = gesture((100, 80), (130, 40), negative=True)  # a drag is a box, Shift or not
    assert dragged.kind == "box" and dragged.points == drag_corners((100, 80), (130, 40))
    assert drag_corners((1, 2), (5, 9)) == ((1, 2), (5, 2), (5, 9), (1, 9))


@pytest.mark.parametrize(("ratio", "kind"), [(1.0, "box"), (2.0, "positive"), (0.0, "box")])
def test_the_drag_threshold_is_in_logical_pixels(ratio: float, kind: str) -> None:
    """Six physical pixels are a drag on an ordinary screen, three logical pixels (a click) at ratio 2."""
    moved = DRAG_THRESHOLD + 2
    assert gesture((10, 10), (10 + moved, 10), device_pixel_ratio=ratio).kind == kind


def test_a_box_dragged_in_a_rotated_view_is_bounded_by_its_four_corners() -> None:
    """A view turned 45 degrees in the slice plane: the dragged square's diagonal runs along j."""
    turn = np.radians(45)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])

    def to_ijk(xy) -> tuple[float, float, float]:
        i, j = rotation @ np.asarray(xy, dtype=float) + [60, 20]
        return (i, j, 5.0)

    start, end = (0, 0), (40, 40)
    shape = (10, 100, 120)
    two = ijk_to_slice_prompt(shape, 0, box_ijk=[to_ijk(start), to_ijk(end)]).prompt.box
    four_corners = [to_ijk(xy) for xy in gesture(start, end).points]
    four = ijk_to_slice_prompt(shape, 0, box_ijk=four_corners).prompt.box
    assert two[2] - two[0] == 0  # two opposite corners: a box of no width
    # all four corners: the dragged square's bounding box in the slice, 2 x 40 / sqrt(2) wide
    assert four.tolist() == [32.0, 20.0, 88.0, 77.0]
    inside = np.array([to_ijk(xy)[:2] for xy in [(20, 20), (5, 30), (39, 1)]])  # in the square
    assert ((inside >= four[:2]) & (inside <= four[2:])).all()


def test_keyboard_shortcuts_are_ours_only_without_modifiers() -> None:
    from MiniSAMSegmentLib.view_gestures import shortcut

    assert shortcut("c") == shortcut("C") == "next candidate"
    assert shortcut("p") == "propagate"
    assert shortcut("c", modified=True) is None  # Ctrl+C and friends stay Slicer's
    assert shortcut("r") is None and shortcut(None) is None  # e.g. reset field of view


class _Interactor:
    """The vtkRenderWindowInteractor calls the effect makes, for one event."""

    def __init__(self, xy=(0, 0), shift=False, control=False, key=None) -> None:
        self.xy, self.shift, self.control, self.key = xy, shift, control, key

    def GetEventPosition(self):
        return self.xy

    def GetShiftKey(self):
        return self.shift

    def GetControlKey(self):
        return self.control

    def GetAltKey(self):
        return False

    def GetKeySym(self):
        return self.key


class _View:
    def __init__(self, name: str = "qMRMLSliceWidget", ratio: float = 1.0) -> None:
        self.name, self.ratio = name, ratio

    def className(self) -> str:
        return self.name

    def devicePixelRatioF(self) -> float:
        return self.ratio


@pytest.fixture()
def effect(monkeypatch):
    """SegmentEditorEffect.py loaded as Slicer loads it, over stand-ins for the Qt-only modules, with the
    actions it would run recorded instead of run: what processInteractionEvents does with each event."""
    import sys
    import types

    from slicer_cases import MODULE_DIR

    class Abstract:
        def __init__(self, scriptedEffect) -> None:
            self.scriptedEffect = scriptedEffect

    abstract = types.ModuleType("SegmentEditorEffects.AbstractScriptedSegmentEditorEffect")
    abstract.AbstractScriptedSegmentEditorEffect = Abstract
    for name, module in {
        "qt": types.ModuleType("qt"),
        "SegmentEditorEffects": types.ModuleType("SegmentEditorEffects"),
        abstract.__name__: abstract,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    path = MODULE_DIR / "MiniSAMSegmentLib" / "SegmentEditorEffect.py"
    namespace = {"__name__": "effect_under_test", "__file__": str(path)}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    scripted = types.SimpleNamespace(
        addActor2D=lambda *a: None, removeActor2D=lambda *a: None, scheduleRender=lambda *a: None
    )
    instance = namespace["SegmentEditorEffect"](scripted)
    instance.ran = []
    instance._run = lambda action, *args, **kwargs: instance.ran.append(
        (action.__name__, args[1:], kwargs)  # args[0] is the view widget
    )
    return instance


def test_the_effect_leaves_the_right_button_the_wheel_and_other_keys_to_slicer(effect) -> None:
    """Issue 16, item 7: right-drag zoom and the context menu keep working while the effect is active
    (the effect used to take the right button for a negative click)."""
    import vtk

    command, view = vtk.vtkCommand, _View()
    for event in (
        command.RightButtonPressEvent,
        command.MouseMoveEvent,  # no left button down: a right drag's moves
        command.RightButtonReleaseEvent,
        command.MouseWheelForwardEvent,
        command.LeftButtonReleaseEvent,  # without its press (e.g. it began outside the view)
    ):
        assert effect.processInteractionEvents(_Interactor((50, 60)), event, view) is False
    key = command.KeyPressEvent
    assert effect.processInteractionEvents(_Interactor(key="r"), key, view) is False
    assert effect.processInteractionEvents(_Interactor(key="c", control=True), key, view) is False
    press = command.LeftButtonPressEvent
    assert (
        effect.processInteractionEvents(_Interactor(), press, _View("qMRMLThreeDWidget")) is False
    )
    assert effect.ran == []


def test_the_effect_turns_presses_and_keys_into_prompts_and_actions(effect) -> None:
    """The wiring from VTK events to view_gestures and the actions: clicks, Shift, a drag's four
    corners, the threshold scaled by the view's device pixel ratio, C and P."""
    import vtk

    command = vtk.vtkCommand

    def press_release(start, end, ratio=1.0, shift=False):
        view = _View(ratio=ratio)
        assert effect.processInteractionEvents(
            _Interactor(start, shift), command.LeftButtonPressEvent, view
        )
        assert effect.processInteractionEvents(_Interactor(end), command.MouseMoveEvent, view)
        assert effect.processInteractionEvents(
            _Interactor(end), command.LeftButtonReleaseEvent, view
        )
        return effect.ran.pop()

    assert press_release((100, 80), (102, 77)) == ("_segmentSlice", (), {"positive": [(100, 80)]})
    assert press_release((100, 80), (100, 80), shift=True) == (
        "_segmentSlice",
        (),
        {"negative": [(100, 80)]},
    )
    box = {"box": drag_corners((100, 80), (130, 40))}
    assert press_release((100, 80), (130, 40)) == ("_segmentSlice", (), box)
    moved = (10 + DRAG_THRESHOLD + 2, 10)  # a drag on an ordinary screen, a click at ratio 2
    assert press_release((10, 10), moved)[2] == {"box": drag_corners((10, 10), moved)}
    assert press_release((10, 10), moved, ratio=2.0)[2] == {"positive": [(10, 10)]}
    for key, action in (("c", "_nextCandidate"), ("C", "_nextCandidate"), ("p", "_propagate")):
        assert effect.processInteractionEvents(_Interactor(key=key), command.KeyPressEvent, _View())
        assert effect.ran.pop() == (action, (), {})
    assert effect.ran == []


def test_the_effect_releases_its_logic_when_slicer_cleans_it_up(effect) -> None:
    """Issue 16, item 6 (module cleanup): the effect's cleanup hands everything back through
    MiniSAMSegmentLogic.release (tested in test_segment_logic.py) and forgets the logic."""
    released = []
    effect.logic = type("Logic", (), {"release": lambda self: released.append(True)})()
    effect.cleanup()
    assert released == [True] and effect.logic is None
    effect.cleanup()  # twice, or before any click: nothing to release
    assert released == [True]
