"""MiniSAM: fast, adaptable Segment Anything for medical images.

The core package has no Slicer import: model building and checkpoints, image/volume I/O, prompts, the slice
predictor with propagation, metrics and the ``minisam`` command line.
"""

__version__ = "0.1.0"
