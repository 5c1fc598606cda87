"""What the browser app reports after every change: the UI shows it, the end-to-end tests poll it."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PromptReport", "SessionReport"]


@dataclass
class PromptReport:
    """Where the last prompt landed and what it gave, as the server saw it."""

    kind: str  # "positive", "negative" or "box"
    ras: list[list[float]]  # the gesture's points in world RAS
    ijk: list[list[float]]  # ... as continuous voxel indices of the volume
    axis: int  # numpy axis of the (Z, Y, X) array the slice is taken along
    slice: int  # the slice index along it
    score: float  # predicted IoU of the mask written
    voxels: int  # voxels of the mask on that slice


@dataclass
class SessionReport:
    """The session's state: volume, segments, the last prompt, what runs, the choices made."""

    volume: str = ""  # the name of the volume shown and edited
    volume_id: str = ""  # ... its node ID
    volumes: list[dict] = field(default_factory=list)  # the open volumes: [{"id", "name"}]
    # the volume's voxel-to-world matrix
    ijk_to_ras: list[list[float]] = field(default_factory=list)
    segments: list[dict] = field(default_factory=list)  # [{"id", "name", "color", "voxels"}]
    segment_id: str = ""
    busy: str = ""  # what runs now ("" when idle)
    status: str = "Load a volume."
    error: str = ""  # the last action's one-line error ("" when it succeeded)
    prompt: dict | None = None  # asdict(PromptReport) of the last prompt
    progress: list[int] = field(default_factory=lambda: [0, 0])  # propagation (done, total)
    segment_voxels: int = 0  # voxels in the selected segment
    can_undo: bool = False
    can_redo: bool = False
    saved: str = ""  # path of the last saved file
    # what segments: the model spec, the adapter choice, the intensity preset, the encoder runtime
    model: str = ""
    adapter: str = ""
    modality: str = ""
    runtime: str = ""
    # the adapter library's adapters for the model
    adapters: list[str] = field(default_factory=list)
    actions: int = 0  # finished actions, successful or not (tests wait for it to move)
