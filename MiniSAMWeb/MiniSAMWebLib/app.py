"""The trame app: slice views and a 3D view served by trame-slicer, and the MiniSAM panel.

Every change of the session is published as the state variable ``minisam`` (a :class:`SessionReport`), shown
in the panel and, as JSON, in the element ``#minisam-report`` that the end-to-end tests poll.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

# Offscreen rendering without a display (OSMesa is not installed on the servers we run on)
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

from MiniSAMSegmentLib.logic import MiniSAMSegmentLogic  # noqa: E402
from trame.app import get_server  # noqa: E402
from trame.ui.vuetify3 import SinglePageWithDrawerLayout  # noqa: E402
from trame.widgets import html  # noqa: E402
from trame.widgets import vuetify3 as v3  # noqa: E402
from trame_server import Server  # noqa: E402
from trame_slicer import module as trame_slicer_module  # noqa: E402
from trame_slicer.core import LayoutManager, SlicerApp  # noqa: E402
from trame_slicer.rca_view import register_rca_factories  # noqa: E402

from minisam.errors import MiniSAMError  # noqa: E402
from minisam.modality import PRESET_CHOICES  # noqa: E402
from minisam.model_loader import PACKAGED_MODELS  # noqa: E402
from minisam.runtime import RUNTIMES  # noqa: E402

from .controller import WebSegmentation  # noqa: E402
from .report import SessionReport  # noqa: E402

__all__ = ["MiniSAMWebApp"]

LAYOUT = "Axial Primary"  # the axial view large, the 3D, coronal and sagittal views beside it


class MiniSAMWebApp:
    """One server: a Slicer scene with its views, the MiniSAM session on it and the page around them."""

    def __init__(
        self,
        logic: MiniSAMSegmentLogic,
        output_dir: str | os.PathLike[str] = ".",
        server: Server | None = None,
    ) -> None:
        self.server = server or get_server(client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state = self.server.state
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server)
        self.layout_manager = LayoutManager(
            self.slicer.scene, self.slicer.view_manager, self.server
        )
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUT)
        self.session = WebSegmentation(self.slicer, logic, self._publish, output_dir)
        self._publish(self.session.report)
        self.state.minisam_views = {}
        self.state.upload = None
        self.state.upload_segmentation = None
        self.state.save_name = "segmentation.seg.nrrd"
        self.state.change("upload")(self._on_upload)
        self.state.change("upload_segmentation")(self._on_segmentation_upload)
        self.state.change("selected_segment")(self._on_segment_selected)
        self.state.change("selected_volume")(self._on_volume_selected)
        models = list(PACKAGED_MODELS)
        if logic.model_spec not in models:  # a checkpoint given with --model
            models.append(logic.model_spec)
        self.state.model_choices = models
        self.state.modality_choices = list(PRESET_CHOICES)
        self.state.runtime_choices = list(RUNTIMES)
        choices = ("chosen_model", "chosen_adapter", "chosen_modality", "chosen_runtime")
        self.state.change(*choices)(self._on_choice)
        self.server.controller.trigger("minisam_download")(self.download)
        self._build_ui()
        for view in self.slicer.view_manager.get_slice_views():  # created by the layout grid
            view.set_visible_in_3d(True)
            view.get_view_node().AddObserver("ModifiedEvent", self._on_view_moved)

    # -- state -----------------------------------------------------------------------------------------

    def _publish(self, report: SessionReport) -> None:
        with self.state:
            self.state.minisam = asdict(report)
            self.state.selected_segment = report.segment_id
            self.state.selected_volume = report.volume_id
            self.state.chosen_model = report.model
            self.state.chosen_adapter = report.adapter
            self.state.chosen_modality = report.modality
            self.state.chosen_runtime = report.runtime
            self.state.adapter_choices = ["auto", "none", *report.adapters]

    def _on_choice(
        self, chosen_model=None, chosen_adapter=None, chosen_modality=None, chosen_runtime=None, **_
    ) -> None:
        report = self.session.report
        wanted = (chosen_model, chosen_adapter, chosen_modality, chosen_runtime)
        if not all(wanted) or wanted == (
            report.model,
            report.adapter,
            report.modality,
            report.runtime,
        ):
            return
        self.session.spawn(self.session.choose(*wanted))

    def _on_view_moved(self, slice_node, _event=None) -> None:
        """A slice view moved: embed its slice ahead of a click; publish the views' geometry."""
        self.session.focus(slice_node)
        self._publish_views()

    def _publish_views(self, *_) -> None:
        """Each slice view's size and display-to-RAS matrix, so a client (a test) can aim at a voxel."""
        views = {}
        for view in self.slicer.view_manager.get_slice_views():
            node = view.get_view_node()
            matrix = node.GetXYToRAS()
            views[node.GetName()] = {
                "orientation": node.GetOrientation(),
                "size": list(node.GetDimensions()[:2]),
                "xy_to_ras": [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)],
            }
        with self.state:
            self.state.minisam_views = views

    def _guarded(self, action, *args) -> None:
        """Run a synchronous action; a MiniSAM error is the status line (one sentence)."""
        try:
            action(*args)
        except MiniSAMError as error:
            self.session._fail(str(error))

    def load(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        self._guarded(self.session.load_volume, path, name)

    def _on_upload(self, upload=None, **_) -> None:
        with uploaded(upload) as paths:
            if paths:  # one file: a volume file; several: the slices of one DICOM series
                folder = paths[0].parent
                self.load(paths[0] if len(paths) == 1 else folder, paths[0].name.split(".")[0])
        self.state.upload = None

    def _on_segmentation_upload(self, upload_segmentation=None, **_) -> None:
        """A .seg.nrrd or label map uploaded for the volume shown replaces its segmentation."""
        if uploaded_files(upload_segmentation):
            self.session.spawn(self._open_segmentation(upload_segmentation))
        self.state.upload_segmentation = None

    async def _open_segmentation(self, upload) -> None:
        with uploaded(upload) as paths:
            await self.session.load_segmentation(paths[0])

    def _on_segment_selected(self, selected_segment=None, **_) -> None:
        if selected_segment and selected_segment != self.session.report.segment_id:
            self._guarded(self.session.select_segment, selected_segment)

    def _on_volume_selected(self, selected_volume=None, **_) -> None:
        if selected_volume and selected_volume != self.session.report.volume_id:
            self._guarded(self.session.show_volume, selected_volume)

    def add_segment(self) -> None:
        self._guarded(self.session.add_segment)

    def delete_segment(self) -> None:
        self.session.spawn(self.session.delete_segment())

    def close_volume(self) -> None:
        self.session.spawn(self.session.close_volume())

    def propagate(self) -> None:
        self.session.spawn(self.session.propagate())

    def next_candidate(self) -> None:
        self.session.spawn(self.session.next_candidate())

    def save(self) -> None:
        self._guarded(self.session.save, self.state.save_name)

    def download(self):
        """The segmentation as the file named in "Save as", sent to the browser (an attachment)."""
        name = Path(self.state.save_name or "segmentation.seg.nrrd").name
        with tempfile.TemporaryDirectory(prefix="minisam-download-") as folder:
            target = Path(folder) / name
            try:
                self.session.write(target)
            except MiniSAMError as error:
                self.session._fail(str(error))
                return None
            return self.server.protocol.addAttachment(target.read_bytes())

    # -- page ------------------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        self.state.trame__title = "MiniSAM"
        with SinglePageWithDrawerLayout(self.server, full_height=True) as self.ui:
            self.ui.title.set_text("MiniSAM")
            with self.ui.toolbar:
                v3.VSpacer()
                html.Span("{{ minisam.volume }}", classes="mr-4", id="minisam-volume")
            with self.ui.drawer as drawer:
                drawer.width = 340
                with html.Div(classes="pa-3 d-flex flex-column ga-2"):
                    v3.VFileInput(
                        v_model=("upload", None),
                        label="Open a volume (NIfTI, NRRD, MHA, DICOM files)",
                        multiple=True,
                        density="compact",
                        id="minisam-upload",
                    )
                    v3.VSelect(
                        v_model=("selected_volume", ""),
                        items=("minisam.volumes",),
                        item_title="name",
                        item_value="id",
                        label="Volume",
                        density="compact",
                        id="minisam-volume-select",
                    )
                    v3.VBtn(
                        "Close volume", click=self.close_volume, id="minisam-close-volume",
                        disabled=("minisam.busy !== '' || !minisam.volume_id",),
                    )  # fmt: skip
                    v3.VSelect(
                        v_model=("selected_segment", ""),
                        items=("minisam.segments",),
                        item_title="name",
                        item_value="id",
                        label="Segment",
                        density="compact",
                        id="minisam-segment",
                    )
                    with html.Div(classes="d-flex ga-2"):
                        v3.VBtn("Add segment", click=self.add_segment, id="minisam-add-segment")
                        v3.VBtn(
                            "Delete segment", click=self.delete_segment,
                            id="minisam-delete-segment",
                            disabled=("minisam.busy !== '' || !minisam.segment_id",),
                        )  # fmt: skip
                    html.Div(
                        "Left click: positive point · Shift+click or right click: negative point · "
                        "drag: box",
                        classes="text-caption",
                    )
                    v3.VBtn(
                        "Next mask (C)", click=self.next_candidate, id="minisam-next-candidate",
                        disabled=("minisam.busy !== ''",),
                    )  # fmt: skip
                    with html.Div(classes="d-flex ga-2"):
                        v3.VBtn(
                            "Undo", click=self.session.undo, disabled=("!minisam.can_undo",),
                            id="minisam-undo",
                        )  # fmt: skip
                        v3.VBtn(
                            "Redo", click=self.session.redo, disabled=("!minisam.can_redo",),
                            id="minisam-redo",
                        )  # fmt: skip
                    with html.Div(classes="d-flex ga-2"):
                        v3.VBtn(
                            "Propagate", click=self.propagate, disabled=("minisam.busy !== ''",),
                            id="minisam-propagate",
                        )  # fmt: skip
                        v3.VBtn(
                            "Cancel", click=self.session.cancel,
                            disabled=("minisam.busy !== 'propagating'",), id="minisam-cancel",
                        )  # fmt: skip
                    v3.VProgressLinear(
                        model_value=(
                            "minisam.progress[1] ? 100 * minisam.progress[0] / minisam.progress[1] : 0",
                        ),
                        indeterminate=("minisam.busy !== '' && !minisam.progress[1]",),
                        active=("minisam.busy !== ''",),
                    )
                    for name, items, label in (
                        ("chosen_model", "model_choices", "Model"),
                        ("chosen_adapter", "adapter_choices", "Adapter"),
                        ("chosen_modality", "modality_choices", "Intensities (modality)"),
                        ("chosen_runtime", "runtime_choices", "Runtime"),
                    ):
                        v3.VSelect(
                            v_model=(name, ""), items=(items, []), label=label, density="compact",
                            id=f"minisam-{name.replace('_', '-')}",
                            disabled=("minisam.busy !== ''",),
                        )  # fmt: skip
                    v3.VTextField(
                        v_model=("save_name",), label="File name (.seg.nrrd, .nii.gz)",
                        density="compact", id="minisam-save-name",
                    )  # fmt: skip
                    v3.VFileInput(
                        v_model=("upload_segmentation", None),
                        label="Open a segmentation for this volume (.seg.nrrd, label map)",
                        density="compact", id="minisam-upload-segmentation",
                        disabled=("minisam.busy !== '' || !minisam.volume_id",),
                    )  # fmt: skip
                    with html.Div(classes="d-flex ga-2"):
                        v3.VBtn("Save", click=self.save, id="minisam-save")
                        v3.VBtn(
                            "Download",
                            click="utils.download(save_name, trigger('minisam_download'), "
                            "'application/octet-stream')",
                            id="minisam-download",
                        )
                    html.Div(
                        "{{ minisam.status }}", classes="text-body-2", id="minisam-status",
                        style="overflow-wrap: anywhere;",
                    )  # fmt: skip
                    html.Div(
                        "{{ minisam.segment_voxels }} voxels in the segment",
                        classes="text-caption",
                    )
                    html.Pre(
                        "{{ JSON.stringify(minisam) }}", id="minisam-report", style="display: none;"
                    )
                    html.Pre(
                        "{{ JSON.stringify(minisam_views) }}", id="minisam-views",
                        style="display: none;",
                    )  # fmt: skip
            with self.ui.content:
                with html.Div(style="position: relative; width: 100%; height: calc(100vh - 64px);"):
                    self.layout_manager.initialize_layout_grid(self.ui)

    def start(self, host: str = "127.0.0.1", port: int = 8080, **kwargs) -> None:
        """Serve until interrupted (no browser is opened)."""
        self.server.start(host=host, port=port, open_browser=False, **kwargs)


def uploaded_files(upload) -> list[dict]:
    """The files of a VFileInput's value (one file or a list), those with content."""
    files = upload if isinstance(upload, list) else [upload] if upload else []
    return [f for f in files if isinstance(f, dict) and f.get("content") is not None]


@contextmanager
def uploaded(upload) -> Iterator[list[Path]]:
    """The uploaded files written into a temporary folder (removed afterwards), under their names."""
    with tempfile.TemporaryDirectory(prefix="minisam-upload-") as folder:
        paths = []
        for item in uploaded_files(upload):
            target = Path(folder) / Path(item["name"]).name
            content = item["content"]
            target.write_bytes(b"".join(content) if isinstance(content, list) else content)
            paths.append(target)
        yield paths
