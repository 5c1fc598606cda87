"""A MRML scene with the logics MiniSAM needs: the application's, or a new one in plain Python. No Qt.

Inside Slicer the scene (``slicer.mrmlScene``) and module logics exist already. With the ``slicer-core``
package (plain Python, no application) they must be created and registered on the scene before volumes
are read or segments are created.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import slicer

from minisam.errors import InputError

from .volume_node import DICOM_MODALITY_ATTRIBUTE

__all__ = ["MRMLContext", "in_application", "mrml_context"]


def in_application() -> bool:
    """True inside the Slicer application (``slicer.app`` exists), False in plain Python."""
    return getattr(slicer, "app", None) is not None


@dataclass
class MRMLContext:
    """A scene and the volumes logic that reads files into it."""

    scene: object
    volumes_logic: object
    _keep: list = field(default_factory=list, repr=False)  # logics created here, kept alive

    def load_volume(self, path: str | os.PathLike[str], name: str | None = None):
        """Read a volume file (NIfTI, NRRD, MHA, ...) or a DICOM series folder into a
        vtkMRMLScalarVolumeNode.

        A folder is read as ``minisam segment`` reads it (``minisam.imageio.read_image``: the series with
        most files, every file complete, even slice gaps), then handed to Slicer as a temporary NRRD
        file; the node gets the series' DICOM Modality as its 'DICOM.Modality' attribute.

        Raises:
          InputError: the path is missing, not readable as a volume, or a folder without a usable
            3D DICOM series.
        """
        path = Path(path)
        if not path.exists():
            raise InputError(f"--input {path} does not exist")
        if path.is_dir():
            return self._load_dicom_folder(path, name or path.name)
        node = self.volumes_logic.AddArchetypeVolume(str(path), name or _stem(path))
        if node is None or node.GetImageData() is None:
            raise InputError(f"--input {path} cannot be read as a volume")
        return node

    def _load_dicom_folder(self, folder: Path, name: str):
        import SimpleITK as sitk

        from minisam.imageio import read_image

        image = read_image(folder)  # refuses a folder without a series, or with a bad one
        if not image.is_volume:
            raise InputError(f"--input {folder} holds a single DICOM image; give a 3D series")
        with tempfile.TemporaryDirectory(prefix="minisam-dicom-") as tmp:
            file = Path(tmp) / "series.nrrd"
            sitk.WriteImage(image.image, str(file), False)
            node = self.volumes_logic.AddArchetypeVolume(str(file), name)
            if node is None or node.GetImageData() is None:
                raise InputError(f"--input {folder} cannot be read as a volume")
            node.SetAndObserveStorageNodeID(None)  # the temporary file is gone: nothing to reload
        if image.modality:
            node.SetAttribute(DICOM_MODALITY_ATTRIBUTE, image.modality)
        return node

    def new_segmentation(self, reference_volume, name: str = "MiniSAM segmentation"):
        """An empty vtkMRMLSegmentationNode with display nodes and the volume's geometry."""
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        return node


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".seg.nrrd", ".nrrd", ".nii", ".mha", ".mhd", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def mrml_context(scene=None) -> MRMLContext:
    """The application's scene and volumes logic, or (plain Python, or ``scene`` given) a prepared scene.

    In plain Python the application, colour, volumes and segmentations logics are created and registered,
    so volumes load with display nodes and segments can be created.
    """
    if scene is None and in_application():
        return MRMLContext(scene=slicer.mrmlScene, volumes_logic=slicer.modules.volumes.logic())
    scene = scene if scene is not None else slicer.vtkMRMLScene()
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    keep = [application]
    for name, logic in (
        ("Colors", slicer.vtkMRMLColorLogic()),
        ("Volumes", slicer.vtkSlicerVolumesLogic()),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic()),
    ):
        logic.SetMRMLApplicationLogic(application)
        logic.SetMRMLScene(scene)
        application.SetModuleLogic(name, logic)
        keep.append(logic)
    application.SetColorLogic(keep[1])
    return MRMLContext(scene=scene, volumes_logic=keep[2], _keep=keep)
