"""MiniSAMSegment: registers the MiniSAM Segment Editor effect; its panel installs and checks dependencies.

The segmentation itself happens in the Segment Editor (effect "MiniSAM"); the work is done by
``MiniSAMSegmentLib.logic``, which the headless script ``Scripts/batch_segment.py`` uses as well.
"""

import logging
import os

import numpy as np
import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

EFFECT_NAME = "MiniSAM"


class MiniSAMSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MiniSAM Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["MiniSAM developers"]
        self.parent.helpText = (
            "Segment Anything (SAM) for medical images. Open the <b>Segment Editor</b> and choose the "
            "<b>MiniSAM</b> effect: click on a structure or drag a box around it, then propagate through "
            "the volume. This panel installs the Python packages MiniSAM needs."
        )
        self.parent.acknowledgementText = (
            "Uses Segment Anything (Meta AI, Apache-2.0). The embedded default model is described in "
            "minisam/pretrained/MODEL_CARD.md."
        )
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        # Slicer loads SegmentEditorEffect.py as the module named after its folder, MiniSAMSegmentLib,
        # unless that module exists: import the package first, or the effect would replace it with a plain
        # module and its imports of MiniSAMSegmentLib.logic etc. would fail (unless another module happened
        # to import the package before).
        try:
            import MiniSAMSegmentLib  # noqa: F401
        except ImportError as exc:
            logging.error(f"The MiniSAM effect is not available: {exc}")
            return
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        instance = effects.qSlicerSegmentEditorScriptedEffect(None)
        effectPath = os.path.join(
            os.path.dirname(__file__), "MiniSAMSegmentLib", "SegmentEditorEffect.py"
        )
        instance.setPythonSource(effectPath.replace("\\", "/"))
        instance.self().register()


class MiniSAMSegmentWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = MiniSAMSegmentLogic()
        info = qt.QLabel(
            "Use the <b>MiniSAM</b> effect in the Segment Editor. Its options (model, modality, device) are "
            "saved with the scene."
        )
        info.wordWrap = True
        self.layout.addWidget(info)
        self.statusLabel = qt.QLabel(self.logic.status())
        self.statusLabel.wordWrap = True
        self.layout.addWidget(self.statusLabel)
        self.installButton = qt.QPushButton("Install / check Python packages")
        self.installButton.connect("clicked()", self.onInstall)
        self.layout.addWidget(self.installButton)
        self.editorButton = qt.QPushButton("Open Segment Editor")
        self.editorButton.connect("clicked()", lambda: slicer.util.selectModule("SegmentEditor"))
        self.layout.addWidget(self.editorButton)
        self.layout.addStretch(1)

    def onInstall(self):
        self.installButton.enabled = (
            False  # one installation at a time (see dependencies.INSTALLING)
        )
        try:
            with slicer.util.tryWithErrorDisplay("MiniSAM:", waitCursor=True):
                self.logic.installDependencies()
        finally:
            self.installButton.enabled = True
        self.statusLabel.text = self.logic.status()


class MiniSAMSegmentLogic(ScriptedLoadableModuleLogic):
    """Module-level helpers; the segmentation logic is MiniSAMSegmentLib.logic.MiniSAMSegmentLogic."""

    def installDependencies(self):
        from MiniSAMSegmentLib.dependencies import (
            background_pip_installer,
            background_torch_installer,
            ensure_dependencies,
        )

        pump = slicer.app.processEvents  # pip and torch install off the GUI thread
        return ensure_dependencies(
            lambda text: slicer.util.confirmOkCancelDisplay(text, "MiniSAM"),
            pip_install=background_pip_installer(pump),
            install_torch=background_torch_installer(pump),
        )

    def status(self):
        try:
            from MiniSAMSegmentLib.dependencies import missing_requirements, resolve_device
        except ImportError as exc:  # e.g. a Slicer release older than MiniSAM supports
            return str(exc)

        torchMissing, missing = missing_requirements()
        if torchMissing or missing:
            names = (["torch"] if torchMissing else []) + missing
            return f"Not installed yet: {', '.join(names)}."
        return f"Python packages installed; MiniSAM will run on: {resolve_device('auto')}."


class MiniSAMSegmentTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (CTest via slicer_add_python_unittest); the pytest suite covers slicer-core."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_effect_registered()
        self.test_logic_writes_slice_mask()

    def test_effect_registered(self):
        names = [
            e.name for e in slicer.qSlicerSegmentEditorEffectFactory.instance().registeredEffects()
        ]
        self.assertIn(EFFECT_NAME, names)

    def test_logic_writes_slice_mask(self):
        MiniSAMSegmentLogic().installDependencies()
        from MiniSAMSegmentLib.logic import MiniSAMSegmentLogic as SegmentLogic
        from MiniSAMSegmentLib.logic import segment_array

        from minisam.prompts import Prompt

        z, y, x = np.mgrid[:20, :64, :64]
        sphere = ((z - 10) ** 2 + (y - 32) ** 2 + (x - 32) ** 2 < 12**2) * 800 - 400
        volume = slicer.util.addVolumeFromArray(sphere.astype(np.int16), name="sphere")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        logic = SegmentLogic(model_spec="default", device="cpu")
        mask, _ = logic.predict_on_slice(volume, 0, 10, Prompt.create(box=[18, 18, 46, 46]))
        segmentId = logic.write_mask_to_segment(segmentation, "", volume, mask, axis=0, index=10)
        written = segment_array(segmentation, segmentId, volume)
        np.testing.assert_array_equal(written[10], mask.astype(np.uint8))
        self.assertEqual(int(written.sum()), int(mask.sum()))
