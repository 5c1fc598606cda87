"""MiniSAMTrain: fine-tune a MiniSAM modality adapter on the slices you segmented, and install it.

Pick a volume and a segmentation whose segments are drawn on some slices; the module counts the annotated
slices, trains a LoRA / AdaLoRA adapter on them in a separate ``minisam train-adapter`` process (full speed,
the GUI stays responsive; progress, live validation Dice, cancel) and installs it into the adapter library,
where the MiniSAM Segment Editor effect picks it up by modality. The work is done by ``MiniSAMTrainLib``
(``train_logic``, ``training_process``: no Qt); this file is the panel.
"""

import math
import shutil
import tempfile

import numpy as np
import qt
import slicer
from MiniSAMTrainLib.train_logic import (
    AXIS_NAMES,
    COMMON_FAMILIES,
    MIN_ANNOTATED_SLICES,
    ensure_training_packages,
    suggested_modality,
)
from MiniSAMTrainLib.train_logic import MiniSAMTrainLogic as TrainLogic
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from minisam.errors import MiniSAMError

POLL_MSEC = 200  # how often the panel reads the training process's progress
COUNT_DELAY_MSEC = 500  # recount annotated slices this long after the last segment edit
PROGRESS_STEPS = 1000
METHOD_CHOICES = (("LoRA", "lora"), ("AdaLoRA", "adalora"))
QUANT_CHOICES = ("auto", "nf4", "int8", "fp32")
AXIS_HINTS = {
    "K": "axial in most scans",
    "J": "coronal in most scans",
    "I": "sagittal in most scans",
}


class MiniSAMTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MiniSAM Train"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["MiniSAMSegment"]
        self.parent.contributors = ["MiniSAM developers"]
        self.parent.helpText = (
            "Teach MiniSAM a new image type from a few slices you segmented. Choose the volume and the "
            "segmentation (segments drawn on some slices: slices without drawing are ignored), name the "
            "modality, then <b>Train adapter</b>. The adapter is installed into your adapter library and "
            "the <b>MiniSAM</b> Segment Editor effect uses it for that modality right away. Training "
            "runs in a separate process, so Slicer stays responsive; Cancel ends it and installs "
            "nothing."
        )
        self.parent.acknowledgementText = (
            "Part of the MiniSAM extension. Adapters are LoRA / AdaLoRA (peft) on the quantized "
            "base model."
        )


class MiniSAMTrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.job = None  # the running MiniSAMTrainLib.training_process.TrainingProcess
        self.suggestions = []  # MiniSAMTrainLib.suggestions.SliceSuggestion, as listed
        self._segmentation = None  # the vtkSegmentation whose segment events are observed

    # -- layout ------------------------------------------------------------------------------------------

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = MiniSAMTrainLogic()

        inputs = qt.QGroupBox("Annotated slices")
        form = qt.QFormLayout(inputs)
        self.volumeSelector = self._nodeSelector(
            ["vtkMRMLScalarVolumeNode"], "the annotated volume"
        )
        self.volumeSelector.hideChildNodeTypes = ["vtkMRMLLabelMapVolumeNode"]
        form.addRow("Volume:", self.volumeSelector)
        self.segmentationSelector = self._nodeSelector(
            ["vtkMRMLSegmentationNode"], "segments drawn on some slices of the volume"
        )
        form.addRow("Segmentation:", self.segmentationSelector)
        self.segmentList = qt.QListWidget()
        self.segmentList.setToolTip("Each checked segment drawn on a slice is one training sample")
        form.addRow("Segments:", self.segmentList)
        self.axisSelector = qt.QComboBox()
        for name in AXIS_NAMES:
            self.axisSelector.addItem(f"{name} slices ({AXIS_HINTS[name]})")
        form.addRow("Slice direction:", self.axisSelector)
        self.annotatedLabel = qt.QLabel()
        self.annotatedLabel.wordWrap = True
        form.addRow(self.annotatedLabel)
        self.suggestButton = qt.QPushButton("Suggest slices to annotate")
        self.suggestButton.setToolTip(
            "Score the slices around your annotations with the current model (Base model, and the "
            "installed adapter for the modality) and list where it is least sure"
        )
        form.addRow(self.suggestButton)
        self.suggestionList = qt.QListWidget()
        self.suggestionList.setToolTip("Click a slice to show it in the slice views")
        form.addRow(self.suggestionList)
        self.layout.addWidget(inputs)

        options = qt.QGroupBox("Adapter")
        form = qt.QFormLayout(options)
        self.modalitySelector = qt.QComboBox()
        self.modalitySelector.editable = True
        self.modalitySelector.addItems(list(COMMON_FAMILIES))
        self.modalitySelector.setToolTip("DICOM modality of the images (CT, MR, US, XRAY, DX, ...)")
        form.addRow("Modality:", self.modalitySelector)
        self.methodSelector = qt.QComboBox()
        for label, method in METHOD_CHOICES:
            self.methodSelector.addItem(label, method)
        self.methodSelector.setToolTip("AdaLoRA moves the rank budget to the layers that need it")
        form.addRow("Method:", self.methodSelector)
        self.rankSpinBox = qt.QSpinBox()
        self.rankSpinBox.setRange(1, 64)
        self.rankSpinBox.value = 8
        form.addRow("Rank:", self.rankSpinBox)
        self.qatCheckBox = qt.QCheckBox("Quantization-aware (AdaLoRA-QAT)")
        self.qatCheckBox.setToolTip(
            "Second stage trained through the quantized layers (AdaLoRA only)"
        )
        form.addRow(self.qatCheckBox)
        self.modelEdit = qt.QLineEdit("default")
        self.modelEdit.setToolTip(
            "Base model the adapter is trained for (the MiniSAM effect must use the same one): "
            "'default', a registered name such as litemedsam or mobilesam, or a checkpoint path"
        )
        form.addRow("Base model:", self.modelEdit)
        self.quantSelector = qt.QComboBox()
        self.quantSelector.addItems(list(QUANT_CHOICES))
        self.quantSelector.setToolTip("Precision of the frozen base model while training")
        form.addRow("Base precision:", self.quantSelector)
        self.epochsSpinBox = qt.QSpinBox()
        self.epochsSpinBox.setRange(1, 500)
        self.epochsSpinBox.value = 20
        self.epochsSpinBox.setToolTip("Training stops earlier when validation Dice stops improving")
        form.addRow("Epochs:", self.epochsSpinBox)
        self.nameEdit = qt.QLineEdit()
        self.nameEdit.placeholderText = "automatic: <modality>_<volume name>"
        form.addRow("Adapter name:", self.nameEdit)
        self.layout.addWidget(options)

        buttons = qt.QHBoxLayout()
        self.trainButton = qt.QPushButton("Train adapter")
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.enabled = False
        buttons.addWidget(self.trainButton)
        buttons.addWidget(self.cancelButton)
        self.layout.addLayout(buttons)
        self.progressBar = qt.QProgressBar()
        self.progressBar.setRange(0, PROGRESS_STEPS)
        self.layout.addWidget(self.progressBar)
        self.diceLabel = qt.QLabel("Validation Dice: -")
        self.diceLabel.wordWrap = True
        self.layout.addWidget(self.diceLabel)
        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.layout.addWidget(self.statusLabel)
        self.layout.addStretch(1)

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_MSEC)
        self.pollTimer.connect("timeout()", self.onPoll)
        self.countTimer = qt.QTimer()
        self.countTimer.setSingleShot(True)
        self.countTimer.setInterval(COUNT_DELAY_MSEC)
        self.countTimer.connect("timeout()", self.updateAnnotatedCount)

        self.volumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onVolumeChanged)
        self.segmentationSelector.connect(
            "currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged
        )
        self.segmentList.connect(
            "itemChanged(QListWidgetItem*)", lambda item: self.countTimer.start()
        )
        self.axisSelector.connect("currentIndexChanged(int)", lambda index: self.countTimer.start())
        self.methodSelector.connect("currentIndexChanged(int)", self.onMethodChanged)
        self.qatCheckBox.connect("toggled(bool)", self.onMethodChanged)
        self.suggestButton.connect("clicked(bool)", self.onSuggest)
        self.suggestionList.connect("itemClicked(QListWidgetItem*)", self.onSuggestionClicked)
        self.trainButton.connect("clicked(bool)", self.onTrain)
        self.cancelButton.connect("clicked(bool)", self.onCancel)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)

        self.onMethodChanged()
        self.onVolumeChanged(self.volumeSelector.currentNode())
        self.onSegmentationChanged(self.segmentationSelector.currentNode())

    @staticmethod
    def _nodeSelector(nodeTypes, toolTip):
        selector = slicer.qMRMLNodeComboBox()
        selector.nodeTypes = nodeTypes
        selector.noneEnabled = True
        selector.addEnabled = False
        selector.removeEnabled = False
        selector.selectNodeUponCreation = True
        selector.setMRMLScene(slicer.mrmlScene)
        selector.setToolTip(toolTip)
        return selector

    def enter(self):
        self.countTimer.start()

    def cleanup(self):
        self.stopTraining("MiniSAM Train was closed", show=False)
        self.pollTimer.stop()
        self.countTimer.stop()
        self.removeObservers()
        if self.logic is not None:
            self.logic.release()  # the suggestions' sessions, embeddings and model

    # -- inputs ------------------------------------------------------------------------------------------

    def onVolumeChanged(self, volumeNode):
        if volumeNode is not None:
            try:
                self.modalitySelector.currentText = suggested_modality(volumeNode)
            except (MiniSAMError, ImportError):
                pass  # no image data yet, or the Python packages are not installed: keep the text
        self.countTimer.start()

    def onSegmentationChanged(self, segmentationNode):
        self.removeObservers(self.onSegmentsChanged)
        self._segmentation = segmentationNode.GetSegmentation() if segmentationNode else None
        if self._segmentation is not None:
            for event in (
                slicer.vtkSegmentation.SegmentAdded,
                slicer.vtkSegmentation.SegmentRemoved,
                slicer.vtkSegmentation.SegmentModified,
            ):
                self.addObserver(self._segmentation, event, self.onSegmentsChanged)
        self.updateSegmentList()

    def onSegmentsChanged(self, caller=None, event=None):
        self.updateSegmentList()

    def updateSegmentList(self):
        """One checkable row per segment; check states survive edits, new segments come checked."""
        unchecked = {
            self.segmentList.item(row).data(qt.Qt.UserRole)
            for row in range(self.segmentList.count)
            if self.segmentList.item(row).checkState() != qt.Qt.Checked
        }
        self.segmentList.blockSignals(True)
        self.segmentList.clear()
        segmentation = self._segmentation
        for index in range(segmentation.GetNumberOfSegments() if segmentation else 0):
            segmentId = segmentation.GetNthSegmentID(index)
            item = qt.QListWidgetItem(segmentation.GetSegment(segmentId).GetName() or segmentId)
            item.setData(qt.Qt.UserRole, segmentId)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Unchecked if segmentId in unchecked else qt.Qt.Checked)
            self.segmentList.addItem(item)
        self.segmentList.blockSignals(False)
        self.countTimer.start()

    def checkedSegmentIds(self):
        items = [self.segmentList.item(row) for row in range(self.segmentList.count)]
        return [i.data(qt.Qt.UserRole) for i in items if i.checkState() == qt.Qt.Checked]

    def updateAnnotatedCount(self):
        """Show how many annotated slices the current choice gives (or why it gives none)."""
        volumeNode = self.volumeSelector.currentNode()
        segmentationNode = self.segmentationSelector.currentNode()
        segmentIds = self.checkedSegmentIds()
        ready = False
        if volumeNode is None or segmentationNode is None or not segmentIds:
            text = "Choose a volume, a segmentation and at least one segment drawn on some slices."
        else:
            try:
                found = self.logic.annotated_slices(
                    volumeNode, segmentationNode, segmentIds, self.axisSelector.currentIndex
                )
            except MiniSAMError as exc:
                text = str(exc)
            else:
                ready = len(found) >= MIN_ANNOTATED_SLICES
                text = found.describe() + (
                    "" if ready else f": need at least {MIN_ANNOTATED_SLICES}"
                )
        self.annotatedLabel.text = text
        self.trainButton.enabled = ready and self.job is None

    def onMethodChanged(self, *args):
        adalora = self.methodSelector.itemData(self.methodSelector.currentIndex) == "adalora"
        if not adalora:
            self.qatCheckBox.checked = False
        self.qatCheckBox.enabled = adalora
        self.quantSelector.enabled = not self.qatCheckBox.checked

    # -- suggestions -------------------------------------------------------------------------------------

    def onSuggest(self):
        with slicer.util.tryWithErrorDisplay("MiniSAM could not suggest slices:", waitCursor=True):
            from MiniSAMSegmentLib.busy import BusyError

            self.logic.installDependencies()
            dialog = slicer.util.createProgressDialog(
                labelText="MiniSAM: scoring the slices around your annotations...",
                windowTitle="MiniSAM Train", maximum=0,
            )  # fmt: skip
            try:
                self.suggestions = self.logic.suggest(
                    self.volumeSelector.currentNode(),
                    self.segmentationSelector.currentNode(),
                    self.checkedSegmentIds(),
                    self.axisSelector.currentIndex,
                    model=self.modelEdit.text.strip() or "default",
                    modality=self.modalitySelector.currentText.strip(),
                    pump=lambda: slicer.app.processEvents(),
                )
            except BusyError as exc:
                self.statusLabel.text = str(exc)
                return
            finally:
                dialog.close()
            self.suggestionList.clear()
            axis = AXIS_NAMES[self.axisSelector.currentIndex]
            for suggestion in self.suggestions:
                self.suggestionList.addItem(suggestion.describe(axis))

    def onSuggestionClicked(self, item):
        row = self.suggestionList.row(item)
        if 0 <= row < len(self.suggestions):
            self.logic.jumpTo(self.suggestions[row])

    # -- training ----------------------------------------------------------------------------------------

    def trainingOptions(self):
        return {
            "modality": self.modalitySelector.currentText.strip(),
            "method": self.methodSelector.itemData(self.methodSelector.currentIndex),
            "rank": self.rankSpinBox.value,
            "epochs": self.epochsSpinBox.value,
            "quant": self.quantSelector.currentText,
            "qat": self.qatCheckBox.checked,
            "model": self.modelEdit.text.strip() or "default",
            "axis": self.axisSelector.currentIndex,
            "name": self.nameEdit.text.strip() or None,
        }

    def onTrain(self):
        if self.job is not None:  # a second click while one runs: refused, never a second process
            return
        with slicer.util.tryWithErrorDisplay("MiniSAM training could not start:", waitCursor=True):
            self.logic.installDependencies()
            plan = self.logic.prepare(
                self.volumeSelector.currentNode(),
                self.segmentationSelector.currentNode(),
                self.checkedSegmentIds(),
                **self.trainingOptions(),
            )
            self.job = self.logic.start(plan)
            self.setRunning(True)
            self.diceLabel.text = "Validation Dice: -"
            self.statusLabel.text = (
                f"Starting the training of {plan.name} ({plan.samples} samples)..."
            )
            self.pollTimer.start()

    def onCancel(self):
        job = self.job
        if job is not None:
            self.cancelButton.enabled = False
            with slicer.util.tryWithErrorDisplay("MiniSAM training could not be cancelled:"):
                job.cancel()
            self.finishTraining(job)

    def onPoll(self):
        job = self.job
        if job is None:
            self.pollTimer.stop()
            return
        job.poll()
        state = job.state
        self.progressBar.value = int(round(state.fraction * PROGRESS_STEPS))
        history = job.validation_history
        if history:
            recent = ", ".join(f"{d:.3f}" for d in history[-8:])
            self.diceLabel.text = (
                f"Validation Dice: {history[-1]:.3f} (best {max(history):.3f}; per epoch: {recent})"
            )
        if not state.done:
            loss = "" if math.isnan(state.loss) else f", loss {state.loss:.3f}"
            epochs = job.plan.epochs + (max(1, job.plan.epochs // 2) if job.plan.qat else 0)
            where = (
                f": epoch {state.epoch + 1} of {epochs}{loss}" if state.phase == "training" else ""
            )
            data = (
                f" ({job.train_slices} training, {job.val_slices} validation samples)"
                if job.train_slices
                else ""
            )
            self.statusLabel.text = f"{state.phase.capitalize()}{where}{data}"
            return
        self.finishTraining(job)

    def finishTraining(self, job, reason=None, show=True):
        """Report a training that has ended (or was ended because the scene or module closed)."""
        self.pollTimer.stop()
        self.job = None
        self.setRunning(False)
        if job.error is not None:
            self.statusLabel.text = str(job.error)
            if show:
                with slicer.util.tryWithErrorDisplay("MiniSAM training failed:"):
                    raise job.error
            return
        finished = job.result is not None and not job.result.cancelled
        if finished or reason is None:
            self.statusLabel.text = job.result.describe() if job.result else "Training stopped."
        else:
            self.statusLabel.text = f"{reason}: training stopped, nothing installed."
        if finished:
            self.progressBar.value = PROGRESS_STEPS

    def stopTraining(self, reason, show=True):
        """End a running training process (the user's segmentation is never written)."""
        job = self.job
        if job is None:
            return
        job.cancel()
        self.finishTraining(job, reason, show)

    def onSceneStartClose(self, caller=None, event=None):
        self.stopTraining("The scene was closed")
        self.removeObservers(self.onSegmentsChanged)
        self._segmentation = None

    def setRunning(self, running):
        self.trainButton.enabled = not running
        self.cancelButton.enabled = running
        if not running:
            self.countTimer.start()  # re-enables Train when the inputs are still valid


class MiniSAMTrainLogic(ScriptedLoadableModuleLogic, TrainLogic):
    """The Qt-free training logic (MiniSAMTrainLib.train_logic) as the module's logic."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def installDependencies(self):
        """Install what segmentation and training need, after one confirmation each (if anything)."""
        from MiniSAMSegmentLib.dependencies import (
            background_pip_installer,
            background_torch_installer,
            ensure_dependencies,
        )

        def confirm(text):
            return slicer.util.confirmOkCancelDisplay(text, "MiniSAM")

        pump = slicer.app.processEvents  # pip and torch install off the GUI thread
        pip_install = background_pip_installer(pump)
        installed = ensure_dependencies(
            confirm, pip_install=pip_install, install_torch=background_torch_installer(pump)
        )
        return installed + ensure_training_packages(confirm, pip_install)

    def jumpTo(self, suggestion):
        from MiniSAMTrainLib.suggestions import jump_to

        jump_to(slicer.mrmlScene, suggestion)


class MiniSAMTrainTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (CTest via slicer_add_python_unittest); Testing/slicer_core covers the logic."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_panel_counts_annotated_slices()
        self.setUp()
        self.test_training_installs_adapter()

    def _annotatedSphere(self):
        """A synthetic CT-like volume with a sphere segmented on 6 of its 24 slices."""
        from MiniSAMSegmentLib.segment_io import write_mask_to_segment

        z, y, x = np.mgrid[:24, :64, :64]
        sphere = (z - 12) ** 2 + (y - 32) ** 2 + (x - 30) ** 2 < 10**2
        volume = slicer.util.addVolumeFromArray(
            (sphere * 800 - 400).astype(np.int16), name="sphere"
        )
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        labels = np.zeros(sphere.shape, np.uint8)
        labels[6:18:2] = sphere[6:18:2]
        segmentId = write_mask_to_segment(segmentation, "", volume, labels, mode="replace")
        return volume, segmentation, segmentId

    def test_panel_counts_annotated_slices(self):
        volume, segmentation, _ = self._annotatedSphere()
        widget = slicer.util.getModuleWidget("MiniSAMTrain")
        widget.volumeSelector.setCurrentNode(volume)
        widget.segmentationSelector.setCurrentNode(segmentation)
        widget.updateAnnotatedCount()
        self.assertIn("6 annotated K slices", widget.annotatedLabel.text)
        self.assertTrue(widget.trainButton.enabled)

    def test_training_installs_adapter(self):
        from MiniSAMSegmentLib.segment_io import segment_array

        from minisam.adapters import AdapterLibrary

        logic = MiniSAMTrainLogic()
        logic.installDependencies()
        volume, segmentation, segmentId = self._annotatedSphere()
        before = segment_array(segmentation, segmentId, volume)
        library = tempfile.mkdtemp(prefix="MiniSAMTrainTest-")
        try:
            plan = logic.prepare(
                volume, segmentation, [segmentId], "CT", rank=2, epochs=1, batch_size=2,
                library_root=library,
            )  # fmt: skip
            job = logic.start(plan)
            self.assertTrue(job.wait(600))
            self.assertIsNone(job.error)
            self.assertFalse(job.result.cancelled)
            installed = AdapterLibrary(library, builtin=None).list()
            self.assertEqual([(a.name, a.modality) for a in installed], [(job.result.name, "CT")])
            np.testing.assert_array_equal(segment_array(segmentation, segmentId, volume), before)
            self.delayDisplay(job.result.describe())
        finally:
            shutil.rmtree(library, ignore_errors=True)
