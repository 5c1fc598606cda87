"""MiniSAMTrain's library: the Qt-free training logic (``train_logic``) behind the module's panel.

It reads annotated slices from a volume and a segmentation (MRML, in the calling thread), trains a modality
adapter with the core trainer on a worker thread and installs it into the adapter library. Plain Python with
the ``slicer-core`` package imports it as well (the tests in ``Testing/slicer`` do).
"""
