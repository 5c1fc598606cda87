"""MiniSAM Segment Editor effect: clicks and boxes on a slice view -> SAM mask -> selected segment.

Thin Qt glue. Left click = positive point, Shift + left click = negative point, left drag = box
(``MiniSAMSegmentLib.view_gestures``); the right button stays Slicer's (right-drag zoom, context menu).
View positions become voxel indices with the base class's ``xyToIjk``; everything else is in the Qt-free
``MiniSAMSegmentLib`` modules (imported on first use, after the dependencies are installed). Package
installation, model loading and the slice encoder run while Qt keeps processing events (a progress dialog
for the first two); one busy guard (``MiniSAMSegmentLib.busy``) refuses a click that arrives meanwhile.
"""

import logging
import os

import qt
import slicer
import vtk
from SegmentEditorEffects.AbstractScriptedSegmentEditorEffect import (
    AbstractScriptedSegmentEditorEffect,
)

__all__ = ["SegmentEditorEffect"]

DEVICES = ("auto", "cpu", "cuda")
# minisam.runtime.RUNTIMES (not imported here: it needs torch, which may not be installed yet)
RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
PRECISIONS = ("auto", "f32", "bf16", "int8")  # minisam.runtime.PRECISIONS
ADAPTER_CHOICES = ("auto", "none")  # then the library's adapters for the loaded model
# Slicer keeps the GIL on the GUI thread while Qt idles: while background embeddings are pending, every
# BACKGROUND_TICK_MS the GUI thread waits up to BACKGROUND_WAIT_S without it so the worker runs.
BACKGROUND_TICK_MS = 40
BACKGROUND_WAIT_S = 0.02
PARAMETER_DEFAULTS = {
    "Model": "default",
    "Adapter": "auto",
    "Modality": "auto",
    "Device": "auto",
    "Runtime": "auto",
    "Precision": "auto",
    "MinScore": 0.5,
    "MaxSlices": 0,
}


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Promptable SAM segmentation of the selected segment, slice by slice, with propagation."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "MiniSAM"
        scriptedEffect.title = "MiniSAM"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.logic = None
        self._guard = None  # MiniSAMSegmentLib.busy.BusyGuard, shared with the logic
        self._adapterNames = []  # the library's adapters for the model of _adapterModel
        self._adapterModel = None
        self._press = None  # (xy, negative) while the left button is down
        self._lastEdit = None  # (SliceEdit, volume, segmentation, segment ID) of the latest prompt
        self._markupObservations = []  # (markups node, observer tag) of the shown prompts
        self._bands = {}  # view widget -> (points, actor) of the box being dragged
        self._backgroundTimer = None  # qt.QTimer: time for the background worker (_runBackground)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        path = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        return (
            "<html>Segment Anything on the slice views.<p>"
            "<b>Left click</b>: part of the structure. <b>Shift + left click</b>: not part of it. "
            "<b>Left drag</b>: a box around it (right drag still zooms). Each prompt updates the "
            "selected segment on that slice; prompts belong to the selected segment, and Undo also takes "
            "the last prompt back. A single click gets SAM's best mask answered again with its own box, "
            "then SAM's three masks as they came (part, organ, both): <b>C</b> switches to the next one, "
            "<b>P</b> propagates (mouse over a slice view)."
            "<p>While MiniSAM installs packages, loads a model or propagates, a new "
            "prompt is refused (the status line says what is running).<p><b>Propagate</b> extends the "
            "mask from the prompted slices to "
            "their neighbours until the structure ends.<p><b>Adapter</b>: <i>auto</i> applies the installed "
            "modality adapter for the volume's DICOM modality (if there is one for the model), <i>none</i> "
            "the model alone.<p><b>Runtime</b>: <i>auto</i> runs the image encoder and mask decoder with "
            "OpenVINO on the CPU when it is installed, else torch. While you look at a slice, MiniSAM embeds it and "
            "its neighbours in the background, so a click there needs only the fast decoder. <b>Precision</b>: "
            "<i>bf16</i> is faster on a CPU with bf16, <i>int8</i> runs a calibrated INT8 encoder (made "
            "once by <tt>minisam calibrate-int8</tt>) for CPUs without it.</html>"
        )

    # -- options -------------------------------------------------------------------------------------------

    def setupOptionsFrame(self):
        from minisam.modality import PRESET_CHOICES

        self.modelEdit = qt.QLineEdit()
        self.modelEdit.toolTip = (
            "'default' (embedded), litemedsam, mobilesam (fetched once, verified), sam_vit_b/l/h, "
            "medsam_vit_b, or a checkpoint path"
        )
        self.scriptedEffect.addLabeledOptionsWidget("Model:", self.modelEdit)
        self.adapterCombo = qt.QComboBox()
        for name in ADAPTER_CHOICES:
            self.adapterCombo.addItem(name)
        self.adapterCombo.toolTip = (
            "Modality adapter: auto = the installed adapter for the volume's DICOM modality, "
            "none = the model alone, or a named adapter trained for this model"
        )
        self.scriptedEffect.addLabeledOptionsWidget("Adapter:", self.adapterCombo)
        self.modalityCombo = qt.QComboBox()
        for name in PRESET_CHOICES:
            self.modalityCombo.addItem(name)
        self.modalityCombo.toolTip = "Intensity normalisation; auto reads the DICOM modality"
        self.scriptedEffect.addLabeledOptionsWidget("Modality:", self.modalityCombo)
        self.deviceCombo = qt.QComboBox()
        for name in DEVICES:
            self.deviceCombo.addItem(name)
        self.scriptedEffect.addLabeledOptionsWidget("Device:", self.deviceCombo)
        self.runtimeCombo = qt.QComboBox()
        for name in RUNTIMES:
            self.runtimeCombo.addItem(name)
        self.runtimeCombo.toolTip = (
            "Where the image encoder and mask decoder run: auto = OpenVINO on the CPU when installed "
            "(exported once, cached), else torch; torch is the reference; openvino / onnxruntime or a "
            "one-line error"
        )
        self.scriptedEffect.addLabeledOptionsWidget("Runtime:", self.runtimeCombo)
        self.precisionCombo = qt.QComboBox()
        for name in PRECISIONS:
            self.precisionCombo.addItem(name)
        self.precisionCombo.toolTip = (
            "OpenVINO's arithmetic: auto = encoder f32, decoder bf16 where the CPU has it; bf16 = both "
            "faster, masks within ~1 %; int8 = the encoder calibrated by `minisam calibrate-int8`"
        )
        self.scriptedEffect.addLabeledOptionsWidget("Precision:", self.precisionCombo)
        self.minScoreSpin = qt.QDoubleSpinBox()
        self.minScoreSpin.setRange(0.0, 1.0)
        self.minScoreSpin.setSingleStep(0.05)
        self.minScoreSpin.toolTip = "Propagation stops where the predicted IoU drops below this"
        self.scriptedEffect.addLabeledOptionsWidget("Minimum score:", self.minScoreSpin)
        self.maxSlicesSpin = qt.QSpinBox()
        self.maxSlicesSpin.setRange(0, 100000)
        self.maxSlicesSpin.specialValueText = "no limit"
        self.scriptedEffect.addLabeledOptionsWidget("Max slices each way:", self.maxSlicesSpin)
        self.propagateButton = qt.QPushButton("Propagate")
        self.propagateButton.toolTip = (
            "Extend the mask from the prompted slices to their neighbours"
        )
        self.clearButton = qt.QPushButton("Clear prompts")
        buttons = qt.QHBoxLayout()
        buttons.addWidget(self.propagateButton)
        buttons.addWidget(self.clearButton)
        self.scriptedEffect.addOptionsWidget(buttons)
        self.statusLabel = qt.QLabel("")
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        self.modelEdit.connect("editingFinished()", self.updateMRMLFromGUI)
        self.adapterCombo.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.modalityCombo.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.deviceCombo.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.runtimeCombo.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.precisionCombo.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.minScoreSpin.connect("valueChanged(double)", self.updateMRMLFromGUI)
        self.maxSlicesSpin.connect("valueChanged(int)", self.updateMRMLFromGUI)
        self.propagateButton.connect("clicked()", self.onPropagate)
        self.clearButton.connect("clicked()", self.onClearPrompts)

    def setMRMLDefaults(self):
        for name, value in PARAMETER_DEFAULTS.items():
            self.scriptedEffect.setParameterDefault(name, value)

    def updateGUIFromMRML(self):
        widgets = (
            self.modelEdit,
            self.adapterCombo,
            self.modalityCombo,
            self.deviceCombo,
            self.runtimeCombo,
            self.precisionCombo,
            self.minScoreSpin,
            self.maxSlicesSpin,
        )
        for widget in widgets:
            widget.blockSignals(True)
        self.modelEdit.text = self.scriptedEffect.parameter("Model")
        self._fillAdapterCombo(self.scriptedEffect.parameter("Adapter") or "auto")
        self.modalityCombo.setCurrentText(self.scriptedEffect.parameter("Modality"))
        self.deviceCombo.setCurrentText(self.scriptedEffect.parameter("Device"))
        self.runtimeCombo.setCurrentText(self.scriptedEffect.parameter("Runtime") or "auto")
        self.precisionCombo.setCurrentText(self.scriptedEffect.parameter("Precision") or "auto")
        self.minScoreSpin.value = self.scriptedEffect.doubleParameter("MinScore")
        self.maxSlicesSpin.value = self.scriptedEffect.integerParameter("MaxSlices")
        for widget in widgets:
            widget.blockSignals(False)

    def updateMRMLFromGUI(self):
        self.scriptedEffect.setParameter("Model", self.modelEdit.text.strip() or "default")
        self.scriptedEffect.setParameter("Adapter", self.adapterCombo.currentText or "auto")
        self.scriptedEffect.setParameter("Modality", self.modalityCombo.currentText)
        self.scriptedEffect.setParameter("Device", self.deviceCombo.currentText)
        self.scriptedEffect.setParameter("Runtime", self.runtimeCombo.currentText)
        self.scriptedEffect.setParameter("Precision", self.precisionCombo.currentText)
        self.scriptedEffect.setParameter("MinScore", self.minScoreSpin.value)
        self.scriptedEffect.setParameter("MaxSlices", self.maxSlicesSpin.value)

    def _fillAdapterCombo(self, current):
        """auto, none, the library's adapters for the model, and ``current`` (e.g. a folder set from Python)."""
        names = list(ADAPTER_CHOICES) + [n for n in self._adapterNames if n not in ADAPTER_CHOICES]
        if current not in names:
            names.append(current)
        blocked = self.adapterCombo.blockSignals(True)
        self.adapterCombo.clear()
        for name in names:
            self.adapterCombo.addItem(name)
        self.adapterCombo.setCurrentText(current)
        self.adapterCombo.blockSignals(blocked)

    def _refreshAdapters(self, logic):
        """List the library's adapters for the logic's model (loads the model) in the Adapter combo box."""
        if self._adapterModel == logic.model_spec:
            return
        try:
            self._adapterNames = logic.available_adapters()
        except Exception:  # the list is a convenience; the choice itself is checked when it is used
            logging.debug("MiniSAM: adapters not listed", exc_info=True)
            return
        self._adapterModel = logic.model_spec
        self._fillAdapterCombo(self.scriptedEffect.parameter("Adapter") or "auto")

    # -- lifecycle -----------------------------------------------------------------------------------------

    def activate(self):
        """Refill the Adapter list (adapters may have been installed or trained meanwhile) when that needs
        no installation and no download: MiniSAM's packages are there and the model is loaded already or is
        the embedded default one. Otherwise the list fills after the first prompt."""
        from MiniSAMSegmentLib.dependencies import missing_requirements

        self._adapterModel = None
        spec = self.scriptedEffect.parameter("Model") or "default"
        loaded = self.logic is not None and self.logic.model_is_loaded(spec)
        if missing_requirements() != (False, []) or not (loaded or spec == "default"):
            return
        try:
            with slicer.util.WaitCursor():
                self._refreshAdapters(self._logic())
        except Exception:
            logging.debug("MiniSAM: adapters not listed", exc_info=True)

    def deactivate(self):
        self._unobserveMarkups()
        self._press = None
        for viewWidget in list(self._bands):
            self._removeBand(viewWidget)

    def cleanup(self):
        """Release the sessions, embeddings, prompts and models (Slicer calls this when the effect goes)."""
        self._unobserveMarkups()
        if self._backgroundTimer is not None:
            self._backgroundTimer.stop()
        if self.logic is not None:
            self.logic.release()
            self.logic = None

    def createCursor(self, widget):
        mainWindow = slicer.util.mainWindow()
        return mainWindow.cursor if mainWindow else qt.QCursor()

    # -- interaction ---------------------------------------------------------------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        xy = tuple(callerInteractor.GetEventPosition())
        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            self._press = (xy, bool(callerInteractor.GetShiftKey()))
            return True
        if eventId == vtk.vtkCommand.MouseMoveEvent and self._press is not None:
            self._showBand(viewWidget, self._press[0], xy)
            return True
        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent and self._press is not None:
            from MiniSAMSegmentLib.view_gestures import gesture

            start, negative = self._press
            self._press = None
            self._removeBand(viewWidget)
            done = gesture(start, xy, negative, _devicePixelRatio(viewWidget))
            if done.kind == "box":
                self._run(self._segmentSlice, viewWidget, box=done.points)
            else:
                self._run(self._segmentSlice, viewWidget, **{done.kind: list(done.points)})
            return True
        if eventId == vtk.vtkCommand.KeyPressEvent:
            from MiniSAMSegmentLib.view_gestures import shortcut

            modified = callerInteractor.GetControlKey() or callerInteractor.GetAltKey()
            action = shortcut(callerInteractor.GetKeySym(), bool(modified))
            if action == "next candidate":
                self._run(self._nextCandidate)
            elif action == "propagate":
                self.onPropagate()
            return action is not None
        # the right button, the wheel, other keys: Slicer's own (zoom, context menu, ...)
        return False

    def processViewNodeEvents(self, callerViewNode, eventId, viewWidget):
        """A slice view moved: the background worker embeds the slice it shows and the neighbours (once
        the model is loaded; this never loads a model and never waits for the encoder)."""
        if self.logic is None or not callerViewNode.IsA("vtkMRMLSliceNode"):
            return
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        if parameterSetNode is None:
            return
        try:
            if self.logic.focus_view(parameterSetNode.GetSourceVolumeNode(), callerViewNode):
                self._runBackground()
        except Exception:  # a convenience: the next click embeds its slice anyway
            logging.debug("MiniSAM: slice not queued for the background", exc_info=True)

    def _runBackground(self):
        """While background embeddings are pending, give the worker thread time on a timer."""
        if self._backgroundTimer is None:
            self._backgroundTimer = qt.QTimer()
            self._backgroundTimer.setInterval(BACKGROUND_TICK_MS)
            self._backgroundTimer.connect("timeout()", self._onBackgroundTick)
        if not self._backgroundTimer.isActive():
            self._backgroundTimer.start()

    def _onBackgroundTick(self):
        if self.logic is None or self.logic.wait_for_background(BACKGROUND_WAIT_S):
            self._backgroundTimer.stop()

    def _showBand(self, viewWidget, start, end):
        if viewWidget not in self._bands:
            points = vtk.vtkPoints()
            points.SetNumberOfPoints(5)
            lines = vtk.vtkCellArray()
            lines.InsertNextCell(5)
            for index in range(5):
                lines.InsertCellPoint(index)
            polyData = vtk.vtkPolyData()
            polyData.SetPoints(points)
            polyData.SetLines(lines)
            mapper = vtk.vtkPolyDataMapper2D()
            mapper.SetInputData(polyData)
            actor = vtk.vtkActor2D()
            actor.SetMapper(mapper)
            actor.GetProperty().SetColor(1.0, 0.8, 0.1)
            self.scriptedEffect.addActor2D(viewWidget, actor)
            self._bands[viewWidget] = (points, actor)
        points, _ = self._bands[viewWidget]
        (x0, y0), (x1, y1) = start, end
        for index, (x, y) in enumerate([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]):
            points.SetPoint(index, x, y, 0.0)
        points.Modified()
        self.scriptedEffect.scheduleRender(viewWidget)

    def _removeBand(self, viewWidget):
        band = self._bands.pop(viewWidget, None)
        if band is not None:
            self.scriptedEffect.removeActor2D(viewWidget, band[1])
            self.scriptedEffect.scheduleRender(viewWidget)

    # -- actions -------------------------------------------------------------------------------------------

    def _run(self, action, *args, **kwargs):
        """Run an action; a failure is shown as one message (details in the log), never raised into VTK.
        An action refused because another one runs only says so in the status line."""
        from MiniSAMSegmentLib.busy import BusyError

        def guarded():
            try:
                action(*args, **kwargs)
            except BusyError as exc:
                self.statusLabel.text = str(exc)

        try:
            with slicer.util.tryWithErrorDisplay("MiniSAM:", waitCursor=True):
                guarded()
        except Exception:
            logging.debug("MiniSAM action failed", exc_info=True)

    def _busyGuard(self):
        if self._guard is None:
            from MiniSAMSegmentLib.busy import BusyGuard

            self._guard = BusyGuard()
        return self._guard

    @staticmethod
    def _pump(dialog=None):
        """What the GUI thread does while MiniSAM works on a worker thread: process events."""

        def pump():
            if dialog is not None:
                dialog.value = 0  # an indeterminate bar (maximum 0) moves on each update
            slicer.app.processEvents()

        return pump

    def _logic(self):
        if self.logic is None:
            # Once per session: the logic exists only after the packages were found (or installed).
            from MiniSAMSegmentLib.dependencies import (
                background_pip_installer,
                background_torch_installer,
                ensure_dependencies,
                missing_requirements,
            )

            guard = self._busyGuard()
            with guard("installing Python packages"):
                dialog = None
                if missing_requirements() != (False, []):
                    dialog = slicer.util.createProgressDialog(
                        labelText="MiniSAM: installing Python packages (see the Python console)...",
                        windowTitle="MiniSAM", maximum=0,
                    )  # fmt: skip
                pump = self._pump(dialog)
                try:  # pip and torch install off the GUI thread; the dialog and Slicer stay alive
                    ensure_dependencies(
                        lambda text: slicer.util.confirmOkCancelDisplay(text, "MiniSAM"),
                        pip_install=background_pip_installer(pump),
                        install_torch=background_torch_installer(pump),
                    )
                finally:
                    if dialog is not None:
                        dialog.close()
            from MiniSAMSegmentLib.logic import MiniSAMSegmentLogic

            self.logic = MiniSAMSegmentLogic(guard=guard)
            self.logic.observe_scene(slicer.mrmlScene)
            self.logic.restore_prompts(slicer.mrmlScene)  # markups of a loaded scene
        self.logic.model_spec = self.scriptedEffect.parameter("Model") or "default"
        self.logic.adapter = self.scriptedEffect.parameter("Adapter") or "auto"
        self.logic.modality = self.scriptedEffect.parameter("Modality") or "auto"
        self.logic.device = self.scriptedEffect.parameter("Device") or "auto"
        self.logic.runtime = self.scriptedEffect.parameter("Runtime") or "auto"
        self.logic.precision = self.scriptedEffect.parameter("Precision") or "auto"
        if not self.logic.is_ready():
            dialog = slicer.util.createProgressDialog(
                labelText=f"MiniSAM: loading model {self.logic.model_spec} (the first time, its "
                "weights may be downloaded and its encoder exported)...",
                windowTitle="MiniSAM", maximum=0,
            )  # fmt: skip
            try:
                self.logic.load(self._pump(dialog))
            finally:
                dialog.close()
        return self.logic

    def _nodes(self):
        from minisam.errors import InputError

        parameterSetNode = self.scriptedEffect.parameterSetNode()
        volumeNode = parameterSetNode.GetSourceVolumeNode()
        segmentationNode = parameterSetNode.GetSegmentationNode()
        segmentId = parameterSetNode.GetSelectedSegmentID()
        if volumeNode is None or segmentationNode is None or not segmentId:
            raise InputError("select a segmentation, a segment and a source volume first")
        return volumeNode, segmentationNode, segmentId

    def _segmentSlice(self, viewWidget, positive=(), negative=(), box=None):
        volumeNode, segmentationNode, segmentId = self._nodes()
        if not self.scriptedEffect.confirmCurrentSegmentVisible():
            return
        logic = self._logic()
        sliceToRas = viewWidget.mrmlSliceNode().GetSliceToRAS()
        normal = [sliceToRas.GetElement(row, 2) for row in range(3)]
        geometry = logic_module().geometry_image(volumeNode)
        transform = volumeNode.GetParentTransformNode()

        def toIjk(xy):
            return self.xyToIjk(xy, viewWidget, geometry, transform)

        edit = logic.prompt_slice(
            volumeNode,
            normal,
            positive_ijk=[toIjk(xy) for xy in positive],
            negative_ijk=[toIjk(xy) for xy in negative],
            box_ijk=None if box is None else [toIjk(xy) for xy in box],
            segmentation_node=segmentationNode,
            segment_id=segmentId,
            pump=self._pump(),
        )
        editor = EffectEditor(self.scriptedEffect)
        self._lastEdit = None
        logic.apply_edit(editor, volumeNode, segmentationNode, segmentId, edit)
        self._lastEdit = (edit, volumeNode, segmentationNode, segmentId)
        self._showEdit(edit, logic)
        self._showPrompts(volumeNode, segmentationNode, segmentId)
        self._refreshAdapters(logic)
        self._runBackground()  # the neighbours the click queued

    def _showPrompts(self, volumeNode, segmentationNode, segmentId):
        """The segment's prompts as markups; moving one segments its slice again."""
        from MiniSAMSegmentLib import prompt_markups
        from MiniSAMSegmentLib.prompt_book import Owner

        self.logic.show_prompts(volumeNode, segmentationNode, segmentId)
        self._unobserveMarkups()
        owner = Owner(volumeNode.GetID(), segmentationNode.GetID(), segmentId)
        for axis in range(3):
            points, boxes = prompt_markups.nodes_of(slicer.mrmlScene, owner, axis)
            for node in ([points] if points is not None else []) + list(boxes.values()):

                def moved(caller, event, axis=axis):
                    self._run(self._repromptMoved, volumeNode, segmentationNode, segmentId, axis)

                tag = node.AddObserver(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, moved)
                self._markupObservations.append((node, tag))

    def _unobserveMarkups(self):
        for node, tag in self._markupObservations:
            node.RemoveObserver(tag)
        self._markupObservations = []

    def _repromptMoved(self, volumeNode, segmentationNode, segmentId, axis):
        editor = EffectEditor(self.scriptedEffect)
        for index in self.logic.moved_prompts(volumeNode, segmentationNode, segmentId, axis):
            edit = self.logic.reprompt_from_markups(
                editor, volumeNode, segmentationNode, segmentId, axis, index
            )
            self._lastEdit = (edit, volumeNode, segmentationNode, segmentId)
            self._showEdit(edit, self.logic)

    def _showEdit(self, edit, logic):
        count = 0 if edit.candidates is None else len(edit.candidates)
        choice = f"; mask {edit.choice + 1} of {count}, C for the next" if count > 1 else ""
        self.statusLabel.text = (
            f"Slice {edit.index}: predicted IoU {edit.score:.2f}, {int(edit.mask.sum())} voxels"
            f"{choice} ({logic.describe()})."
        )

    def _nextCandidate(self):
        from minisam.errors import PromptError

        if self._lastEdit is None or self.logic is None:
            raise PromptError(
                "click on a structure first: a single click gets SAM's candidate masks"
            )
        edit, volumeNode, segmentationNode, segmentId = self._lastEdit
        if (volumeNode, segmentationNode, segmentId) != self._nodes():
            raise PromptError("the masks belong to another segment or volume: click again")
        edit = self.logic.apply_next_candidate(
            EffectEditor(self.scriptedEffect), volumeNode, segmentationNode, segmentId, edit
        )
        self._lastEdit = (edit, volumeNode, segmentationNode, segmentId)
        self._showEdit(edit, self.logic)

    def onClearPrompts(self):
        self._run(self._clearPrompts)

    def _clearPrompts(self):
        self._unobserveMarkups()
        if self.logic is not None:
            self.logic.clear_prompts(slicer.mrmlScene)
        self.statusLabel.text = "Prompts cleared."

    def onPropagate(self):
        self._run(self._propagate)

    def _propagate(self):
        from minisam.errors import PromptError
        from minisam.propagation import PropagationSettings

        volumeNode, segmentationNode, segmentId = self._nodes()
        if not self.scriptedEffect.confirmCurrentSegmentVisible():
            return
        logic = self._logic()
        axis, prompts = logic.remembered_prompts(volumeNode, segmentationNode, segmentId)
        if not prompts:
            raise PromptError("click on the structure or drag a box on a slice before propagating")
        maxSlices = self.scriptedEffect.integerParameter("MaxSlices")
        settings = PropagationSettings(
            min_score=self.scriptedEffect.doubleParameter("MinScore"),
            max_slices=maxSlices if maxSlices > 0 else None,
        )
        dialog = slicer.util.createProgressDialog(
            labelText="MiniSAM: propagating the mask...", windowTitle="MiniSAM", maximum=0
        )

        def progress(done, total):
            dialog.maximum = total
            dialog.value = done
            slicer.app.processEvents()
            return not dialog.wasCanceled

        try:
            result = logic.propagate(volumeNode, axis, prompts, settings, progress, self._pump())
        finally:
            dialog.close()
        logic.write_slices(
            EffectEditor(self.scriptedEffect),
            volumeNode,
            segmentationNode,
            segmentId,
            result.labels,
            axis,
            sorted(result.slices),
        )
        cancelled = " (cancelled)" if result.cancelled else ""
        scores = [item.score for item in result.slices.values()] or [float("nan")]
        self.statusLabel.text = (
            f"Propagation filled {len(result.slices)} slices{cancelled}, predicted IoU "
            f"{min(scores):.2f}..{max(scores):.2f} per slice ({logic.describe()})."
        )
        self.statusLabel.toolTip = "\n".join(
            f"slice {i}: predicted IoU {item.score:.2f}"
            for i, item in sorted(result.slices.items())
        )
        self._refreshAdapters(logic)


def _devicePixelRatio(viewWidget):
    """Physical pixels per logical pixel of the view (VTK event positions are physical)."""
    try:
        return float(viewWidget.devicePixelRatioF())
    except (AttributeError, TypeError, ValueError):
        return 1.0


class EffectEditor:
    """The logic's ``SegmentEditor`` on top of the effect's ``scriptedEffect`` (undo, masking, geometry)."""

    def __init__(self, scriptedEffect):
        self.scriptedEffect = scriptedEffect

    def reference_geometry(self):
        return self.scriptedEffect.defaultModifierLabelmap()

    def save_state_for_undo(self):
        self.scriptedEffect.saveStateForUndo()

    def modify_selected_segment(self, modifier, remove):
        modes = slicer.qSlicerSegmentEditorAbstractEffect
        mode = modes.ModificationModeRemove if remove else modes.ModificationModeAdd
        self.scriptedEffect.modifySelectedSegmentByLabelmap(modifier, mode)


def logic_module():
    """MiniSAMSegmentLib.logic, imported on first use (it needs torch, installed on demand)."""
    from MiniSAMSegmentLib import logic

    return logic
