"""Post-training quantization of the frozen SAM weights with bitsandbytes (NF4, INT8).

* :mod:`~minisam.quantization.scheme`: schemes ("nf4", "int8:attn", "nf4:mlp+int8:attn" ...), as data and text;
* :mod:`~minisam.quantization.layers`: bitsandbytes layers, their stored payload and CPU strategies;
* :mod:`~minisam.quantization.quantizer`: which linears a scheme selects, and the in-place quantizer.

Timings that chose the defaults: docs/bench/quant_kernels.md.
"""

from minisam.quantization.layers import (
    CPU_STRATEGIES,
    DEFAULT_CPU_STRATEGY,
    DequantizedLinear,
    cpu_strategy_of,
    dequantize_payload,
    is_quantized_layer,
    layer_classes,
    layer_payload,
    resolve_cpu_strategy,
    restore_layer,
)
from minisam.quantization.quantizer import (
    QuantReport,
    decoder_linears,
    encoder_linears,
    quantizable_linears,
    quantize_encoder,
    quantize_model,
    quantized_scheme_of,
    tensor_bytes,
)
from minisam.quantization.scheme import (
    ENCODER_GROUPS,
    GROUP_ALIASES,
    GROUPS,
    KINDS,
    QuantScheme,
    parse_scheme,
)

__all__ = [
    "CPU_STRATEGIES",
    "DEFAULT_CPU_STRATEGY",
    "ENCODER_GROUPS",
    "GROUPS",
    "GROUP_ALIASES",
    "KINDS",
    "DequantizedLinear",
    "QuantReport",
    "QuantScheme",
    "cpu_strategy_of",
    "decoder_linears",
    "dequantize_payload",
    "encoder_linears",
    "is_quantized_layer",
    "layer_classes",
    "layer_payload",
    "parse_scheme",
    "quantizable_linears",
    "quantize_encoder",
    "quantize_model",
    "quantized_scheme_of",
    "resolve_cpu_strategy",
    "restore_layer",
    "tensor_bytes",
]
