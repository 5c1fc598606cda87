"""MiniSAMTrain: placeholder. Fine-tuning modality adapters on your own segmentations arrives with issue #4.

The module exists so the extension's layout is final; it trains nothing and says so.
"""

import qt
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

NOT_AVAILABLE = (
    "Training is not available yet: fine-tuning MiniSAM adapters on your segmentations arrives with "
    "issue #4. Use the MiniSAM effect in the Segment Editor to segment with the current models."
)


class MiniSAMTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MiniSAM Train"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MiniSAM developers"]
        self.parent.helpText = NOT_AVAILABLE
        self.parent.acknowledgementText = "Part of the MiniSAM extension."


class MiniSAMTrainWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = MiniSAMTrainLogic()
        label = qt.QLabel(NOT_AVAILABLE)
        label.wordWrap = True
        self.layout.addWidget(label)
        self.layout.addStretch(1)


class MiniSAMTrainLogic(ScriptedLoadableModuleLogic):
    """No training yet; :meth:`available` tells callers so instead of pretending."""

    @staticmethod
    def available() -> bool:
        return False


class MiniSAMTrainTest(ScriptedLoadableModuleTest):
    def runTest(self):
        self.assertFalse(MiniSAMTrainLogic.available())
