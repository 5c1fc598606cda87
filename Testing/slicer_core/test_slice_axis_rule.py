"""One slice-axis rule: the core, ``minisam segment``, Slicer glue and ``batch_segment.py`` agree.

The volumes are oblique (SimpleITK LPS images for the CLI, vtkMRMLScalarVolumeNodes with the same
IJKToRAS for Slicer). On the double-oblique one the two former rules disagreed: the Slicer glue
took the best voxel axis per view, so "axial" and "sagittal" both sliced along i (array axis 2),
while the CLI's one-to-one assignment gave axial k (array axis 0). The shared rule keeps the
assignment.
"""

from __future__ import annotations

import json
from pathlib import Path

import MiniSAMSegmentLib.logic as segment_logic_module
import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from MiniSAMSegmentLib.slice_geometry import slice_axis

from minisam.cli import segment_command
from minisam.cli.main import build_parser
from minisam.errors import PromptError
from minisam.geometry import lps_to_ras, slice_axis_for, slice_axis_from_direction
from minisam.imageio import read_image

VIEWS = ("axial", "coronal", "sagittal")
SIZE = (8, 7, 6)  # i, j, k
SPACING = (0.8, 1.1, 2.5)
ORIGIN = (-12.5, 40.25, 7.0)  # LPS


def _rotation(axis, degrees: float) -> np.ndarray:
    """Rodrigues rotation matrix about a unit axis."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    theta = np.deg2rad(degrees)
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)


# LPS directions (columns = i, j, k) and the rule's axes for (axial, coronal, sagittal).
CASES = {
    # gantry tilt: 35 degrees about L-R; both former rules agreed
    "tilt-35-about-LR": (_rotation([1, 0, 0], 35), (0, 1, 2)),
    # 35 degrees about L-R, then 40 about A-P: |S . i| = 0.643 > |S . k| = 0.628, so the per-view
    # arg-max sent axial to i (array axis 2), the axis sagittal also gets
    "double-oblique": (_rotation([0, 1, 0], 40) @ _rotation([1, 0, 0], 35), (0, 1, 2)),
    # sagittal acquisition (right-handed) tilted 30 degrees about S: i ~ A-P, j ~ S-I, k ~ L-R
    "sagittal-tilted": (
        _rotation([0, 0, 1], 30) @ np.array([[0.0, 0, -1], [1, 0, 0], [0, -1, 0]]),
        (1, 2, 0),
    ),
}


def _sitk_volume(direction: np.ndarray) -> sitk.Image:
    image = sitk.Image(*SIZE, sitk.sitkInt16)
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    return image


def _slicer_volume(context, direction: np.ndarray):
    """The same geometry as a volume node: IJKToRAS = flip(LPS direction * spacing), RAS origin."""
    matrix = np.eye(4)
    matrix[:3, :3] = lps_to_ras(direction.T).T * np.asarray(SPACING)
    matrix[:3, 3] = lps_to_ras(ORIGIN)
    node = context.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    slicer.util.updateVolumeFromArray(node, np.zeros(SIZE[::-1], np.int16))
    return node


def _cli_axis(path: Path, view: str) -> int:
    """The axis ``minisam segment PATH --axis VIEW`` slices along (its prompt step, no model)."""
    args = build_parser().parse_args(
        ["segment", str(path), "--box", "1", "1", "3", "3", "--slice", "0", "--axis", view]
    )
    axis, _ = segment_command._prompts(args, read_image(path))
    return axis


class _Chosen(Exception):
    """Raised by the stand-in logic with the axis the batch script chose (before any model)."""


class _RecordingLogic:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def segment(self, volume, axis, prompts, **kwargs):
        raise _Chosen(axis)

    def release(self) -> None:  # the batch script stops the logic's background worker
        pass


def _batch_axis(batch, monkeypatch, path: Path, tmp_path: Path, view: str) -> int:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"slice": 0, "box": [1, 1, 3, 3]}]))
    monkeypatch.setattr(segment_logic_module, "MiniSAMSegmentLogic", _RecordingLogic)
    monkeypatch.setattr(batch, "_check_dependencies", lambda install: None)
    output = tmp_path / "o.seg.nrrd"
    with pytest.raises(_Chosen) as chosen:
        batch.run(
            [
                "--input",
                str(path),
                "--prompts",
                str(prompts),
                "--output",
                str(output),
                "--axis",
                view,
            ]
        )
    return chosen.value.args[0]


@pytest.mark.parametrize("case", CASES)
def test_cli_batch_effect_and_core_slice_an_oblique_volume_alike(
    case, context, batch, monkeypatch, tmp_path: Path
) -> None:
    direction, expected = CASES[case]
    image = _sitk_volume(direction)
    path = tmp_path / f"{case}.nrrd"
    sitk.WriteImage(image, str(path))
    built = _slicer_volume(context, direction)
    loaded = context.load_volume(path)  # what batch_segment.py reads
    ras = lps_to_ras(direction.T).T
    loaded_ras = vtk.vtkMatrix4x4()
    loaded.GetIJKToRASDirectionMatrix(loaded_ras)  # the same geometry in both worlds
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(loaded_ras)[:3, :3], ras, atol=1e-6)

    choices = {
        "core LPS": [slice_axis_from_direction(direction, v) for v in VIEWS],
        "core RAS": [slice_axis_from_direction(ras, v, space="RAS") for v in VIEWS],
        "slice_axis_for": [slice_axis_for(image, v) for v in VIEWS],
        "CLI": [_cli_axis(path, v) for v in VIEWS],
        "Slicer built": [slice_axis(built, v) for v in VIEWS],
        "Slicer loaded": [slice_axis(loaded, v) for v in VIEWS],
        "batch script": [_batch_axis(batch, monkeypatch, path, tmp_path, v) for v in VIEWS],
    }
    assert choices == {name: list(expected) for name in choices}
    assert sorted(expected) == [0, 1, 2]  # three views, three different planes


def test_effect_normals_on_an_oblique_volume(context) -> None:
    """The effect passes the slice view's RAS normal: a view rotated to the volume plane slices
    along that plane's voxel axis; a plain axial view over a 35-40 degree oblique volume is refused.
    """
    direction, _ = CASES["double-oblique"]
    node = _slicer_volume(context, direction)
    ras = lps_to_ras(direction.T).T
    for index_axis in range(3):
        assert slice_axis(node, -ras[:, index_axis]) == 2 - index_axis
        assert slice_axis_for(_sitk_volume(direction), direction[:, index_axis]) == 2 - index_axis
    with pytest.raises(PromptError, match="oblique to volume .*Rotate to volume plane"):
        slice_axis(node, [0.0, 0.0, 1.0])
    with pytest.raises(PromptError, match="oblique to the volume"):
        slice_axis_for(_sitk_volume(direction), [0.0, 0.0, 1.0])
