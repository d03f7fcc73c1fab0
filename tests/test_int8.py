"""int8 deployment: per-layer diagnosis, sensitivity, cross-layer equalisation, the recipe, speed tools.

Every test builds its own small MobileNet-shaped ONNX graph (stem, two depthwise-separable blocks,
global pooling, linear head) and random inputs, so the file runs in seconds without data.

Comparisons of int8 accuracy use 7-bit weights (``reduce_range``, as the recommended recipe does): with
full-range weights onnxruntime's AVX2 kernels (no VNNI) saturate, and the numbers would hold on some
CPUs only. The last tests check that claim on an emulated AVX2-only EPYC (QEMU).
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from distill.deploy.int8 import (BASELINE, RECOMMENDED, Int8Recipe, _bypass, calibrate, compare_layers,
                                 compare_throughput, conv_layers, equalizable_pairs, equalize_activations,
                                 equalize_cross_layer, fp32_node_names, head_nodes, layer_sensitivity, mean_cosine,
                                 prepare_fp32, profile_ops, quantize_recipe, run_model, sqnr_db)

SIZE = 24
#: onnxruntime's default quantisation with 7-bit weights: the same integers on every x86 ISA
PORTABLE = replace(BASELINE, reduce_range=True)


class Tiny(nn.Module):
    """stem 3x3/2 -> (dw 3x3, pw 1x1) x 2 -> global average pool -> linear: the student's layer kinds."""

    def __init__(self, normalize: bool = False) -> None:
        super().__init__()
        self.normalize = normalize
        act = nn.ReLU
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), act(),
            nn.Conv2d(8, 8, 3, 1, 1, groups=8), act(), nn.Conv2d(8, 16, 1), act(),
            nn.Conv2d(16, 16, 3, 2, 1, groups=16), act(), nn.Conv2d(16, 16, 1), act(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)   # exported as GlobalAveragePool, as in the students
        self.fc = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.fc(self.pool(self.body(x)).flatten(1))
        return nn.functional.normalize(e, dim=1) if self.normalize else e


def tiny_onnx(seed: int = 0, badly_scaled: bool = False, normalize: bool = False) -> onnx.ModelProto:
    """The exported graph; ``badly_scaled`` multiplies output channel 0 of the first depthwise conv by
    100 and divides the matching input channel of the next pointwise conv by 100 (same function,
    since Relu(100 x) = 100 Relu(x)): the range imbalance equalisation exists for."""
    torch.manual_seed(seed)
    net = Tiny(normalize).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.uniform_(0.0, 0.3)  # mostly active units, as after BatchNorm folding
        if badly_scaled:
            dw, pw = net.body[2], net.body[4]
            dw.weight[0] *= 100.0
            dw.bias[0] *= 100.0
            pw.weight[:, 0] /= 100.0
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, 3, SIZE, SIZE),), buf, dynamo=False, input_names=["input"],
                          output_names=["embedding"], opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((96, 3, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def prepared() -> onnx.ModelProto:
    return prepare_fp32(tiny_onnx()).model


@pytest.fixture(scope="module")
def quantized(prepared, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "tiny.int8.onnx"
    return quantize_recipe(prepared, out, inputs[:64], BASELINE)


def test_layer_report_finds_a_deliberately_broken_layer(prepared, quantized, inputs, tmp_path):
    healthy = compare_layers(prepared, quantized.path, inputs[64:])
    assert healthy.samples == 32 and len(healthy.layers) >= 5
    assert all(x.quantized for x in healthy.layers[:5])                  # the body's tensors carry QDQ
    assert min(x.sqnr_db for x in healthy.layers[:5]) > 25, healthy.table()
    assert healthy.output().cosine > 0.99

    # break the second pointwise conv: scramble its int8 weights
    q = onnx.load(str(quantized.path))
    pw2 = conv_layers(prepared)[4]
    w_name = next(n for n in prepared.graph.node if n.name == pw2[0]).input[1]
    target = next(t for t in q.graph.initializer if t.name == w_name + "_quantized")
    w = numpy_helper.to_array(target)
    target.CopyFrom(numpy_helper.from_array(np.random.default_rng(1).permutation(w.ravel()).reshape(w.shape),
                                            target.name))
    broken = compare_layers(prepared, q, inputs[64:])
    worst = broken.biggest_drop()
    assert worst.node in pw2, broken.table()                              # the pointwise conv's Relu row
    assert worst.sqnr_db < 10 and broken.first_below(20).node in pw2
    text = broken.table()
    assert "biggest drop" in text and "SQNR dB" in text and "cosine" in text


def test_compare_layers_rejects_an_unrelated_model(prepared, inputs):
    other = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["input"], ["other_out"])], "g",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info("other_out", onnx.TensorProto.FLOAT, None)]))
    with pytest.raises(ValueError, match="no tensor"):
        compare_layers(prepared, other, inputs[:4])


def test_equalization_keeps_the_function_and_fixes_the_ranges(inputs, tmp_path):
    bad = prepare_fp32(tiny_onnx(badly_scaled=True)).model
    assert len(equalizable_pairs(bad)) == 4                               # stem-dw, dw-pw, pw-dw, dw-pw
    eq, record = equalize_cross_layer(bad)
    ref, got = run_model(bad, inputs), run_model(eq, inputs)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)               # fp32 function unchanged
    first = record.pairs[1]                                               # the depthwise -> pointwise pair
    assert first.spread_before > 50 and first.spread_after < first.spread_before / 10
    # and it is why: int8 of the badly scaled graph is much worse than int8 of its equalised twin
    q_bad = quantize_recipe(bad, tmp_path / "bad.onnx", inputs[:64], PORTABLE)
    q_eq = quantize_recipe(bad, tmp_path / "eq.onnx", inputs[:64], replace(PORTABLE, equalize=True))
    sq_bad = sqnr_db(ref[64:], run_model(q_bad.path, inputs[64:]))
    sq_eq = sqnr_db(ref[64:], run_model(q_eq.path, inputs[64:]))
    assert sq_eq > sq_bad + 5, (sq_bad, sq_eq)                           # measured: 34.8 -> 40.8 dB
    assert q_eq.equalization is not None and len(q_eq.equalization.pairs) == 4


def test_activation_equalisation_keeps_the_function_and_uses_the_range(inputs, tmp_path):
    bad = prepare_fp32(tiny_onnx(badly_scaled=True)).model
    eq, recs = equalize_activations(bad, inputs[:64])
    assert len(recs) == 5                                    # 4 conv -> conv edges + last conv -> pool -> head
    ref = run_model(bad, inputs)
    np.testing.assert_allclose(run_model(eq, inputs), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    dw1 = next(r for r in recs if r.conv == conv_layers(bad)[1][0])
    assert dw1.spread_before > 20 and dw1.spread_after == pytest.approx(1.0)   # every channel reaches the max
    base = quantize_recipe(bad, tmp_path / "b.onnx", inputs[:64], PORTABLE)
    act = quantize_recipe(bad, tmp_path / "a.onnx", inputs[:64], replace(PORTABLE, equalize_activations=True))
    assert len(act.activation_scaling) == 5 and act.record()["activation_scaled_pairs"] == 5
    sq_base = sqnr_db(ref[64:], run_model(base.path, inputs[64:]))
    sq_act = sqnr_db(ref[64:], run_model(act.path, inputs[64:]))
    assert sq_act > sq_base + 3, (sq_base, sq_act)
    # the mechanism: the depthwise output's own quantisation gets much finer once its channels share the range
    relu = conv_layers(bad)[1][1]
    local = {k: next(x.local_sqnr_db for x in compare_layers(m, q.path, inputs[64:]).layers if x.node == relu)
             for k, m, q in (("base", bad, base), ("act", eq, act))}
    assert local["act"] > local["base"] + 6, local
    with pytest.raises(ValueError, match="calibration inputs"):
        prepare_fp32(bad, Int8Recipe(equalize_activations=True), None)


def test_sensitivity_ranks_the_badly_ranged_activation_first(inputs, tmp_path):
    bad = prepare_fp32(tiny_onnx(badly_scaled=True)).model
    q = quantize_recipe(bad, tmp_path / "bad.onnx", inputs[:64], BASELINE)
    rep = layer_sensitivity(bad, q.path, inputs[64:])
    dw1 = conv_layers(bad)[1]
    top = rep.rows[0]
    assert top.kind == "activation" and top.node in dw1, rep.table()     # the x100 channel sets a coarse step
    assert rep.all_centered_sqnr_db <= top.centered_sqnr_db + 0.5
    assert "centred" in rep.table()
    # undoing every quantiser gives back the fp32 function (the removed Relus are restored)
    names = {n.name for n in onnx.load(str(q.path)).graph.node if n.op_type == "DequantizeLinear"}
    np.testing.assert_allclose(run_model(_bypass(onnx.load(str(q.path)), bad, names), inputs[:8]),
                               run_model(bad, inputs[:8]), atol=1e-5)


def test_fp32_selection_and_what_the_quantiser_leaves_float(prepared, inputs, tmp_path):
    layers = conv_layers(prepared)
    assert len(layers) == 5 and all(len(x) == 2 for x in layers)          # each conv with its Relu
    head = head_nodes(prepared)
    ops = {n.name: n.op_type for n in prepared.graph.node}
    assert ops[head[0]] in ("GlobalAveragePool", "ReduceMean") and ops[head[-1]] in ("Gemm", "MatMul", "Add")
    recipe = Int8Recipe(fp32_head=True, fp32_first=1, fp32_last=1)
    chosen = fp32_node_names(prepared, recipe)
    assert set(layers[0]) | set(layers[-1]) | set(head) == set(chosen)
    with pytest.raises(ValueError, match="not in the graph"):
        fp32_node_names(prepared, Int8Recipe(fp32_nodes=("nope",)))
    with pytest.raises(ValueError, match="conv layers"):
        fp32_node_names(prepared, Int8Recipe(fp32_first=4, fp32_last=2))
    q = quantize_recipe(prepared, tmp_path / "mixed.onnx", inputs[:64], recipe)
    graph = onnx.load(str(q.path)).graph
    dq_outputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    by_name = {n.name: n for n in graph.node}
    for name in (layers[0][0], layers[-1][0], layers[2][0]):
        conv = by_name[name]
        weight_is_int8 = conv.input[1] in dq_outputs
        assert weight_is_int8 == (name == layers[2][0]), name           # only the middle conv is quantised
    assert set(q.fp32_nodes) == set(chosen) and q.record()["recipe"]["fp32_first"] == 1


def test_streamed_calibration_equals_one_pass(prepared, inputs, tmp_path):
    one = calibrate(prepared, inputs[:48], BASELINE, tmp_path / "one.json", chunk=1000)
    streamed = calibrate(prepared, inputs[:48], BASELINE, tmp_path / "chunks.json", chunk=16)
    a, b = json.loads(one.read_text()), json.loads(streamed.read_text())
    assert a == b
    with pytest.raises(ValueError, match="at least one input"):
        calibrate(prepared, inputs[:0], BASELINE, tmp_path / "none.json")
    with pytest.raises(ValueError, match="unknown calibration"):
        calibrate(prepared, inputs[:8], Int8Recipe(calibrate="median"), tmp_path / "x.json")  # type: ignore[arg-type]


def test_recommended_recipe_beats_the_baseline_on_the_tiny_model(prepared, quantized, inputs, tmp_path):
    rec = quantize_recipe(prepared, tmp_path / "rec.onnx", inputs[:64], RECOMMENDED)
    ref = run_model(prepared, inputs[64:])
    base_cos = mean_cosine(ref, run_model(quantized.path, inputs[64:]))
    rec_cos = mean_cosine(ref, run_model(rec.path, inputs[64:]))
    assert rec_cos >= base_cos - 1e-4 and rec_cos > 0.999
    assert "fp32" in RECOMMENDED.label() and BASELINE.label().startswith("minmax/256")


def test_speed_tools_report_the_kernels_onnxruntime_runs(prepared, quantized):
    res = compare_throughput({"fp32": prepared, "int8": quantized.path}, 4, rounds=3, warmup=1, threads=1)
    assert set(res) == {"fp32", "int8"}
    assert all(t.images_per_s > 0 and t.best_ms_per_batch <= t.ms_per_batch for t in res.values())
    p8 = profile_ops(quantized.path, 4, runs=2, threads=1)
    p32 = profile_ops(prepared, 4, runs=2, threads=1)
    ops8, ops32 = {o.op for o in p8.ops}, {o.op for o in p32.ops}
    assert "QLinearConv" in ops8 and "QLinearConv" not in ops32          # QDQ was fused into int8 kernels
    assert abs(sum(o.share for o in p8.ops) - 1.0) < 1e-6 and "total" in p8.table()
    assert p8.nodes and all(ms >= 0 for _, _, ms in p8.nodes)


def test_quantize_int8_with_the_recipe_writes_a_tagged_file(tmp_path, inputs):
    from distill.deploy.export import with_onnx_metadata
    from distill.deploy.quantize import quantize_int8

    meta = {"format": "facedistill-export-v1", "name": "tiny-24", "embedding_dim": 8, "normalized": False,
            "distance": "euclidean", "precision": "fp32", "fingerprint": "tiny-24-0", "input": "float32 (B,3,S,S)",
            "preprocessing": {"input_size": SIZE, "mean": [127.5] * 3, "std": [128.0] * 3, "alignment": "dlib_150"}}
    fp32 = tmp_path / "tiny.onnx"
    fp32.write_bytes(with_onnx_metadata(tiny_onnx(), meta).SerializeToString())
    faces = np.random.default_rng(2).integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    res = quantize_int8(fp32, tmp_path / "tiny.int8.onnx", faces, recipe=RECOMMENDED, method="percentile")
    cal = res["calibration"]
    assert cal["faces"] == 48 and cal["method"] == "percentile" and cal["activations"] == "uint8"
    assert cal["label"].startswith("percentile") and cal["fp32_nodes"] and cal["bias_correction"] is not None
    props = {p.key: p.value for p in onnx.load(str(res["path"])).metadata_props}
    stored = json.loads(props["facedistill.json"])
    assert stored["precision"] == "int8" and stored["calibration"]["recipe"]["fp32_last"] == RECOMMENDED.fp32_last
    with pytest.raises(ValueError, match="already int8"):
        quantize_int8(res["path"], tmp_path / "again.onnx", faces, recipe=RECOMMENDED)


def test_layer_report_drops_ignore_exact_rows():
    from distill.deploy.int8 import LayerError, LayerReport

    def row(i: int, db: float) -> LayerError:
        return LayerError(i, f"t{i}", "Relu", f"n{i}", (4,), True, db, 1.0, None, db)

    rep = LayerReport((row(0, float("inf")), row(1, float("inf")), row(2, 40.0), row(3, 10.0), row(4, 12.0)), 8)
    d = rep.drops()
    assert np.isnan(d[:3]).all() and d[3] == pytest.approx(30.0) and d[4] == pytest.approx(-2.0)
    assert rep.biggest_drop().index == 3 and rep.first_below(20).index == 3 and rep.output().index == 4
    only_first = LayerReport((row(0, float("inf")), row(1, 35.0)), 8)
    assert only_first.biggest_drop().index == 1          # the first row with an error at all


def test_an_l2_normalised_head_stays_fp32_and_is_reported(inputs, tmp_path):
    model = prepare_fp32(tiny_onnx(normalize=True)).model       # head: pool, Gemm, ReduceL2, Shape, Expand, Div
    ops = {n.name: n.op_type for n in model.graph.node}
    head = head_nodes(model)
    assert {"Gemm", "Div"} <= {ops[n] for n in head}
    q = quantize_recipe(model, tmp_path / "n.onnx", inputs[:64], RECOMMENDED)
    assert q.bias_correction is not None                        # corrected before the normalisation
    got = run_model(q.path, inputs[64:])
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert mean_cosine(run_model(model, inputs[64:]), got) > 0.999
    rep = compare_layers(model, q.path, inputs[64:])            # integer tensors (Shape) are left out
    assert rep.output().op == "Div" and rep.output().cosine > 0.999


def test_shared_biases_are_unshared_before_rescaling(inputs):
    m = tiny_onnx()
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    inits = {t.name: t for t in m.graph.initializer}
    # what the exporter does with equal constants: two convs of the same width read one bias tensor
    a, b = convs[2], convs[4]   # pointwise 8->16 and pointwise 16->16
    inits[b.input[2]].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[a.input[2]]), b.input[2]))
    b.input[2] = a.input[2]
    ref = run_model(m, inputs[:32])
    p = prepare_fp32(m, Int8Recipe(equalize_activations=True), inputs[:32])
    used = [i for n in p.model.graph.node for i in n.input[1:]]
    assert len(used) == len(set(used))                          # no initializer feeds two nodes
    np.testing.assert_allclose(run_model(p.model, inputs[:32]), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


# --------------------------------------------------------------------------- other instruction sets
def test_portable_int8_computes_the_same_on_avx2_without_vnni(inputs, tmp_path):
    """The recommended recipe's 7-bit weights give this CPU's outputs on an AVX2-only EPYC (emulated by QEMU:
    onnxruntime's ``vpmaddubsw`` kernels); full-range weights saturate there on the badly scaled graph
    (measured: 17.5 dB there against 44.4 dB with VNNI). ``make test`` installs qemu-user."""
    from distill.deploy.int8.emulate import AVX2_CPU, run_onnx

    bad = prepare_fp32(tiny_onnx(badly_scaled=True)).model
    ref = run_model(bad, inputs[64:])
    portable = quantize_recipe(bad, tmp_path / "p.onnx", inputs[:64], replace(PORTABLE, equalize_activations=True))
    full = quantize_recipe(bad, tmp_path / "f.onnx", inputs[:64], replace(BASELINE, equalize_activations=True))
    assert RECOMMENDED.reduce_range                                      # the shipped recipe is the portable one
    here, avx2 = run_onnx(portable.path, inputs[64:]), run_onnx(portable.path, inputs[64:], cpu=AVX2_CPU)
    assert np.abs(here - avx2).max() <= 1e-5 * np.abs(here).max(), np.abs(here - avx2).max()
    sq_portable, sq_full_avx2 = sqnr_db(ref, avx2), sqnr_db(ref, run_onnx(full.path, inputs[64:], cpu=AVX2_CPU))
    assert sq_portable > 35 and sq_portable > sq_full_avx2 + 10, (sq_portable, sq_full_avx2)
