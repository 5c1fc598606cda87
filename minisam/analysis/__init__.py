"""Analyses of MiniSAM models: quantization error of the image encoder (``minisam quant-report``)."""
