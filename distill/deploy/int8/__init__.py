"""Int8 students that keep their accuracy: where PTQ breaks, function-preserving rescaling, the recipe, speed.

ONNX in, ONNX out, onnxruntime CPU; every piece usable alone:

* :mod:`.diagnose`: :func:`compare_layers` (SQNR and cosine of every intermediate tensor, int8 against
  fp32) and :func:`layer_sensitivity` (the output error each quantiser causes alone).
* :mod:`.rescale`: :func:`equalize_cross_layer`, :func:`equalize_activations` (Nagel et al., ICCV 2019):
  the fp32 function is unchanged, the int8 one gets closer to it.
* :mod:`.recipe`: :class:`Int8Recipe`, :func:`quantize_recipe`, :func:`correct_output_bias`,
  :data:`RECOMMENDED` (the study's choice, ``benchmarks/int8_study.py``), :data:`BASELINE` (onnxruntime's default).
* :mod:`.speed`: :func:`compare_throughput`, :func:`profile_ops`.

Why MobileNet face students need more than the default: the embedding head (global pool, Linear,
BatchNorm1d) reads a small face-specific variation on top of a large feature vector common to all
faces, so noise 50 dB below the pooled features is amplified ~45 dB by the head; quantising the head
itself, or the last block's activations, loses the faces (docs/int8.md).

Example::

    x = preprocess(training_faces)                          # (N, 3, S, S) float32; never the evaluation people
    q = quantize_recipe("student.onnx", "student.int8.onnx", x[:1024], RECOMMENDED)
    p = prepare_fp32("student.onnx").model
    print(compare_layers(p, quantize_recipe(p, "plain.int8.onnx", x[:256], BASELINE).path, x[:64]).table())
"""
from .diagnose import LayerError, LayerReport, Sensitivity, SensitivityReport, _bypass, compare_layers, \
    layer_sensitivity
from .graph import centered_sqnr_db, load_model, mean_cosine, run_model, sqnr_db
from .recipe import (BASELINE, RECOMMENDED, ArrayReader, BiasCorrection, Int8Recipe, PreparedModel, QuantizedModel,
                     calibrate, conv_layers, correct_output_bias, fp32_node_names, head_nodes, prepare_fp32,
                     quantize_prepared, quantize_recipe)
from .rescale import (ActivationScaling, EqualizedPair, Equalization, equalizable_pairs, equalize_activations,
                      equalize_cross_layer)
from .speed import OpProfile, OpTime, Throughput, compare_throughput, profile_ops, throughput

__all__ = [
    "compare_layers", "LayerReport", "LayerError", "layer_sensitivity", "Sensitivity", "SensitivityReport",
    "equalize_cross_layer", "equalize_activations", "correct_output_bias", "equalizable_pairs", "Equalization",
    "EqualizedPair", "ActivationScaling", "BiasCorrection",
    "Int8Recipe", "RECOMMENDED", "BASELINE", "quantize_recipe", "prepare_fp32", "PreparedModel", "calibrate",
    "quantize_prepared", "QuantizedModel", "ArrayReader", "fp32_node_names", "head_nodes", "conv_layers",
    "compare_throughput", "throughput", "Throughput", "profile_ops", "OpProfile", "OpTime",
    "load_model", "run_model", "sqnr_db", "centered_sqnr_db", "mean_cosine",
]
