"""MiniSAMSegmentLib's ``SegmentEditor`` on trame-slicer's segment modifier (undo through its undo stack)."""

from __future__ import annotations

from trame_slicer.segmentation import ModificationMode, SegmentModifier


class TrameSegmentEditor:
    """What ``MiniSAMSegmentLogic.write_slices`` needs, from trame-slicer's ``SegmentModifier``.

    Writes go through ``SegmentModifier.apply_labelmap`` (``vtkSlicerSegmentEditorLogic``, so masking and
    overwrite settings apply); the caller groups one write's modifier images into one undo step with
    ``modifier.group_undo_commands``.
    """

    def __init__(self, modifier: SegmentModifier) -> None:
        self.modifier = modifier

    def reference_geometry(self):
        """The segmentation's modifier labelmap (its reference geometry), as the Slicer effect's
        ``defaultModifierLabelmap()``."""
        return self.modifier.create_modifier_labelmap()

    def save_state_for_undo(self) -> None:
        """Nothing to do: each ``apply_labelmap`` pushes its own undo command (grouped by the caller)."""

    def modify_selected_segment(self, modifier, remove: bool) -> None:
        mode = ModificationMode.Remove if remove else ModificationMode.Add
        self.modifier.apply_labelmap(modifier, modification_mode=mode)
