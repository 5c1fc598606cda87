"""MiniSAM: fast, adaptable Segment Anything for medical images.

The core package has no Slicer import: model building and checkpoints, image/volume I/O, prompts, the slice
predictor with propagation, metrics and the ``minisam`` command line.
"""

from minisam.library_noise import quiet_library_noise

__version__ = "0.1.0"

quiet_library_noise()  # before anything imports peft (which imports bitsandbytes)
