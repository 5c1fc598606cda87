"""The remembered prompts as markups in the scene: visible, movable, saved with the scene. MRML level, no Qt.

Per segment (and slice axis) one point list holds the clicks of every prompted slice, positive ones labelled
"+", negative ones "-", each described "slice N"; each slice with a box has an ROI around it. The nodes carry
the attribute :data:`OWNER_ATTRIBUTE` ("volume ID|segmentation ID|segment ID|axis"), so they are found again
after moving a point, and after the scene was saved and loaded (node attributes are saved with the scene).
:func:`show` writes the prompt book's pages into markups, :func:`read` reads them back (where the user moved
them), :func:`owners_in_scene` lists whose markups a loaded scene holds.
"""

from __future__ import annotations

import re

import numpy as np
import slicer
import vtk

from minisam.prompts import Prompt

from .prompt_book import Owner, SliceClicks
from .slice_geometry import IN_PLANE_IJK, ijk_to_slice_prompt, ras_to_ijk, roi_corners
from .volume_node import world_to_local

__all__ = ["OWNER_ATTRIBUTE", "clicks_of", "nodes_of", "owners_in_scene", "read", "remove", "show"]

OWNER_ATTRIBUTE = "MiniSAM.PromptOwner"
SLICE_ATTRIBUTE = "MiniSAM.PromptSlice"  # on an ROI: the slice whose box it is
POSITIVE, NEGATIVE = "+", "-"
_SLICE = re.compile(r"slice (\d+)")


def _key(owner: Owner, axis: int) -> str:
    return f"{owner.volume_id}|{owner.segmentation_id}|{owner.segment_id}|{axis}"


def nodes_of(scene, owner: Owner, axis: int) -> tuple[object | None, dict[int, object]]:
    """(the point list or None, {slice: ROI node}) holding the prompts of ``owner`` on ``axis``."""
    key, points, boxes = _key(owner, axis), None, {}
    for node in _markups(scene):
        if node.GetAttribute(OWNER_ATTRIBUTE) != key:
            continue
        if node.IsA("vtkMRMLMarkupsROINode"):
            boxes[int(node.GetAttribute(SLICE_ATTRIBUTE))] = node
        elif node.IsA("vtkMRMLMarkupsFiducialNode"):
            points = node
    return points, boxes


def owners_in_scene(scene) -> list[tuple[Owner, int]]:
    """(owner, axis) of every prompt markups node in ``scene`` (e.g. after loading a saved scene)."""
    found = []
    for node in _markups(scene):
        value = node.GetAttribute(OWNER_ATTRIBUTE)
        if value and value.count("|") == 3:
            volume_id, segmentation_id, segment_id, axis = value.split("|")
            pair = (Owner(volume_id, segmentation_id, segment_id), int(axis))
            if pair not in found:
                found.append(pair)
    return found


def show(
    scene, volume_node, owner: Owner, axis: int, pages: dict[int, SliceClicks], name: str
) -> None:
    """Make the markups of ``owner`` on ``axis`` show ``pages`` (slice -> clicks and box): points
    and ROIs are created, moved or removed; with no page left, the nodes go."""
    points, boxes = nodes_of(scene, owner, axis)
    clicks = [
        (index, label, xy)
        for index, page in sorted(pages.items())
        for label, group in ((POSITIVE, page.positive), (NEGATIVE, page.negative))
        for xy in group
    ]
    if clicks and points is None:
        points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"MiniSAM prompts: {name}")
        points.SetAttribute(OWNER_ATTRIBUTE, _key(owner, axis))
        points.CreateDefaultDisplayNodes()
    if points is not None:
        if not clicks:
            scene.RemoveNode(points)
        else:
            was = points.StartModify()
            points.RemoveAllControlPoints()
            positions = _to_world(volume_node, [_ijk(axis, index, xy) for index, _, xy in clicks])
            for (index, label, _), position in zip(clicks, positions, strict=True):
                number = points.AddControlPoint(position.tolist(), label)
                points.SetNthControlPointDescription(number, f"slice {index}")
            points.EndModify(was)
    for index, roi in list(boxes.items()):
        if pages.get(index) is None or pages[index].box is None:
            scene.RemoveNode(roi)
            boxes.pop(index)
    for index, page in pages.items():
        if page.box is None:
            continue
        roi = boxes.get(index)
        if roi is None:
            roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", f"MiniSAM box: {name}, {index}")
            roi.SetAttribute(OWNER_ATTRIBUTE, _key(owner, axis))
            roi.SetAttribute(SLICE_ATTRIBUTE, str(index))
            roi.CreateDefaultDisplayNodes()
        x0, y0, x1, y1 = page.box
        corners = [
            _ijk(axis, index + side, xy) for side in (-0.5, 0.5) for xy in ((x0, y0), (x1, y1))
        ]
        world = _to_world(volume_node, corners)
        low, high = world.min(axis=0), world.max(axis=0)
        roi.SetCenter(*((low + high) / 2).tolist())
        roi.SetSize(*(high - low).tolist())


def read(scene, volume_node, owner: Owner, axis: int) -> dict[int, Prompt]:
    """The prompt of each slice as the markups of ``owner`` on ``axis`` hold it now (moved or not).

    A point keeps its slice (its description); its position within the slice is read back. A box is
    the bounding box of its ROI's corners on the slice.
    """
    points, boxes = nodes_of(scene, owner, axis)
    shape = tuple(reversed(volume_node.GetImageData().GetDimensions()))  # (K, J, I), no voxel read
    by_slice: dict[int, dict[str, list]] = {}
    if points is not None:
        for number in range(points.GetNumberOfControlPoints()):
            match = _SLICE.fullmatch(points.GetNthControlPointDescription(number) or "")
            if match is None:
                continue
            index = int(match.group(1))
            position = [0.0, 0.0, 0.0]
            points.GetNthControlPointPositionWorld(number, position)
            kind = "negative" if points.GetNthControlPointLabel(number) == NEGATIVE else "positive"
            by_slice.setdefault(index, {}).setdefault(kind, []).append(position)
    for index, roi in boxes.items():
        by_slice.setdefault(index, {})["box"] = roi_corners(roi)
    prompts = {}
    for index, parts in sorted(by_slice.items()):
        box = parts.get("box")
        prompts[index] = ijk_to_slice_prompt(
            shape,
            axis,
            positive_ijk=_ijk_of(volume_node, parts.get("positive", [])),
            negative_ijk=_ijk_of(volume_node, parts.get("negative", [])),
            box_ijk=None if box is None else ras_to_ijk(volume_node, box),
            index=index,
        ).prompt
    return prompts


def remove(
    scene,
    segmentation_id: str | None = None,
    segment_id: str | None = None,
    volume_id: str | None = None,
) -> None:
    """Remove MiniSAM's prompt markups: all, those of a volume, a segmentation, or one segment."""
    for node in _markups(scene):
        value = node.GetAttribute(OWNER_ATTRIBUTE)
        if not value or value.count("|") != 3:
            continue
        volume, segmentation, segment, _ = value.split("|")
        if volume_id is not None and volume != volume_id:
            continue
        if segmentation_id is not None and segmentation != segmentation_id:
            continue
        if segment_id is not None and segment != segment_id:
            continue
        scene.RemoveNode(node)


def clicks_of(prompt: Prompt) -> SliceClicks:
    """A prompt as the book's page of its slice."""
    return SliceClicks().merge(prompt)


def _markups(scene) -> list:
    nodes = []
    for class_name in ("vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsROINode"):
        collection = scene.GetNodesByClass(class_name)
        nodes += [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
    return nodes


def _ijk(axis: int, index: float, xy) -> list[float]:
    ijk = [0.0, 0.0, 0.0]
    x_axis, y_axis = IN_PLANE_IJK[axis]
    ijk[x_axis], ijk[y_axis], ijk[2 - axis] = float(xy[0]), float(xy[1]), float(index)
    return ijk


def _to_world(volume_node, points_ijk) -> np.ndarray:
    points = np.c_[
        np.asarray(points_ijk, dtype=np.float64).reshape(-1, 3), np.ones(len(points_ijk))
    ]
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    local = points @ slicer.util.arrayFromVTKMatrix(matrix).T
    return (local @ np.linalg.inv(world_to_local(volume_node)).T)[:, :3]


def _ijk_of(volume_node, positions) -> np.ndarray:
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    return ras_to_ijk(volume_node, positions) if len(positions) else positions
