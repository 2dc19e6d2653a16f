"""The benchmark suite's machinery on tiny settings, and the fidelity of the model's speed-ups.

The speed changes in ``augreg_nb.models`` (attention with a hand-written backward pass, head
by head or batched) are checked against independent computations: automatic
differentiation of the textbook formula, and a ViT written with Flax's own
``nn.MultiHeadDotProductAttention`` (``bench.reference_vit``) on the same parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import __main__ as bench_main
from bench import roofline as bench_roofline
from bench.common import Row, format_table, time_interleaved


def test_time_interleaved_runs_round_robin_after_warmup():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = time_interleaved(fns, repeats=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    # A callable may report its own measured seconds (the torch worker does).
    assert time_interleaved({"x": lambda: 0.25}, repeats=2, warmup=0) == {"x": [0.25, 0.25]}
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved(fns, repeats=0)


def test_format_table_aligns_values_and_keeps_notes():
    text = format_table([Row("model", "Ti/16 forward", 52.345, "img/s", "1.5x reference"),
                         Row("index", "load", 0.1234, "s"), Row("x", "skipped", None, "s")])
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["section", "measurement", "value", "unit"]
    assert "52.34" in lines[2] or "52.35" in lines[2]
    assert lines[2].endswith("1.5x reference") and "0.1234" in lines[3] and " - " in lines[4]


def _plain_attention(q, k, v):
    return jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2), axis=-1) @ v


@pytest.mark.parametrize("shape", [(2, 7, 5), (2, 3, 6, 4)])
def test_attend_value_and_gradients_match_automatic_differentiation(shape):
    from augreg_nb.models import attend

    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(3))
    cot = jnp.asarray(rng.normal(size=shape), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * cot)

    np.testing.assert_allclose(attend(q, k, v), _plain_attention(q, k, v), rtol=1e-5,
                               atol=1e-6)
    got = jax.grad(loss(attend), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(_plain_attention), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_layer_norm_value_and_gradients_match_flax():
    import flax.linen as nn

    from augreg_nb.models import layer_norm

    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(3.0, 2.0, (4, 5, 16)), jnp.float32)
    scale = jnp.asarray(rng.normal(1.0, 0.1, 16), jnp.float32)
    bias = jnp.asarray(rng.normal(0.0, 0.1, 16), jnp.float32)
    cot = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    flax_ln = nn.LayerNorm(epsilon=1e-6)

    def theirs(x, scale, bias):
        return flax_ln.apply({"params": {"scale": scale, "bias": bias}}, x)

    np.testing.assert_allclose(layer_norm(x, scale, bias, 1e-6), theirs(x, scale, bias),
                               rtol=1e-5, atol=1e-5)
    got = jax.grad(lambda *a: jnp.sum(layer_norm(*a, 1e-6) * cot), argnums=(0, 1, 2))(
        x, scale, bias)
    want = jax.grad(lambda *a: jnp.sum(theirs(*a) * cot), argnums=(0, 1, 2))(x, scale, bias)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    half = layer_norm(x.astype(jnp.bfloat16), scale, bias, 1e-6)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(half.astype(jnp.float32), theirs(x, scale, bias), atol=0.05)


@pytest.mark.parametrize("per_head_max", [4, 0], ids=["head-by-head", "batched"])
def test_model_matches_flax_attention_reference_in_value_and_gradient(monkeypatch,
                                                                       per_head_max):
    from augreg_nb import models
    from augreg_nb.checkpoint import unflatten
    from augreg_nb.testing.checkpoints import fake_params
    from bench.reference_vit import reference_for

    monkeypatch.setattr(models, "PER_HEAD_MAX_HEADS", per_head_max)
    params = unflatten(fake_params("testing", num_classes=7, resolution=32))
    ours = models.create_model("testing", 7)
    ref = reference_for(models.get_model_config("testing"), 7)
    images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (3, 32, 32, 3)), jnp.float32)
    labels = jax.nn.one_hot(jnp.array([0, 3, 6]), 7)

    def loss(apply):
        return lambda p: -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(apply(p)), -1))

    ours_apply = lambda p: ours.apply({"params": p}, images, train=True)  # noqa: E731
    ref_apply = lambda p: ref.apply({"params": p}, images)  # noqa: E731
    np.testing.assert_allclose(ours_apply(params), ref_apply(params), rtol=1e-4, atol=1e-4)
    got, want = jax.grad(loss(ours_apply))(params), jax.grad(loss(ref_apply))(params)
    scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got),
                            jax.tree.leaves(want), strict=True):
        err = float(jnp.max(jnp.abs(g - w)))
        assert err <= 1e-4 * scale, (jax.tree_util.keystr(path), err, scale)


def test_suite_runs_end_to_end_on_a_tiny_config(tmp_path, monkeypatch):
    out = tmp_path / "results.json"
    monkeypatch.setenv("AUGREG_NB_CPU_CHUNK", "2")  # batches of 4 run as two chunks of 2
    code = bench_main.main([
        "--only", "model,train,index", "--forward-models", "testing",
        "--train-models", "testing", "--peer-model", "testing", "--resolution", "32",
        "--batch", "4", "--repeats", "2",
        "--peers", "reference,timm,gradient,batched-attention,xla-attention,whole-batch",
        "--torch-python", str(tmp_path / "no-such-python"), "--out", str(out),
        "--peak-kernels", "in-process",
    ])
    assert code == 0
    doc = json.loads(out.read_text())
    machine = doc["machine"]
    for key in ("cpu", "cpu_count", "jax", "flax", "xla_flags", "jax_device"):
        assert key in machine
    rows = {r["name"]: r for r in doc["rows"]}
    forward = rows["testing forward"]
    assert forward["value"] > 0 and forward["unit"] == "img/s"
    assert len(forward["extra"]["seconds"]) == 2
    assert forward["extra"]["max_abs_logit_diff_vs_reference"] < 1e-3
    assert forward["extra"]["ratio_vs_reference"] == pytest.approx(
        forward["value"] / rows["testing forward [reference]"]["value"])
    assert rows["testing train"]["value"] > 0 and rows["testing train [reference]"]["value"] > 0
    assert rows["testing train [gradient only]"]["value"] > 0
    for variant in ("batched-attention", "xla-attention"):
        assert rows[f"testing forward [{variant}]"]["value"] > 0
        assert rows["testing train"]["extra"][f"ratio_vs_{variant}"] == pytest.approx(
            rows["testing train"]["value"] / rows[f"testing train [{variant}]"]["value"])
    assert "step/gradient" in rows["testing train"]["note"]
    # The forward rows run as the package's inference does, next to the whole batch.
    for mode in ("forward", "train"):
        row = rows[f"testing {mode}"]
        assert row["extra"]["chunk"] == 2 and "in chunks of 2" in row["note"]
        assert row["extra"]["ratio_vs_whole-batch"] == pytest.approx(
            row["value"] / rows[f"testing {mode} [whole-batch]"]["value"])
    load = next(r for r in doc["rows"] if r["name"].startswith("load_index from cache"))
    assert load["extra"]["rows"] == 51509 and load["unit"] == "s"
    queries = [r for r in doc["rows"] if r["section"] == "index" and r["unit"] == "ms"]
    assert len(queries) >= 6 and all(r["value"] > 0 for r in queries)
    assert "testing forward" in doc["table"]
    # The matmul peak of the same run, and each model row's share of it.
    peak = next(r for r in doc["rows"] if r["section"] == "roofline")
    assert peak["unit"] == "GFLOP/s" and peak["value"] > 0
    for name in ("testing forward", "testing train", "testing train [reference]"):
        row = rows[name]
        flops = (bench_roofline.forward_flops("testing", 32, 1000) if "forward" in name
                 else bench_roofline.train_flops("testing", 32, 100))
        assert row["extra"]["roofline_fraction"] == pytest.approx(
            row["value"] * flops / (peak["value"] * 1e9))
    assert "of roofline" in forward["note"]


def test_missing_torch_interpreter_is_a_note_not_an_error(tmp_path):
    from bench import torch_worker

    worker, why = torch_worker.start(str(tmp_path / "no-such-python"))
    assert worker is None
    assert "timm skipped" in why and "no-such-python" in why and "pip install" in why


def test_pytorch_kernel_of_the_peak_is_reported_missing_without_its_interpreter(tmp_path):
    from bench import roofline

    res = roofline.hardware_peak(size=64, repeats=2, options={},
                                 torch_python=str(tmp_path / "no-such-python"))
    assert "no PyTorch interpreter" in res["kernels"]["PyTorch"]["error"]
    assert res["kernel"] in ("XLA default", "NumPy BLAS")


@pytest.mark.skipif(not Path("/tmp/torchvenv/bin/python").exists(),
                    reason="needs the PyTorch interpreter of the timm comparison")
def test_pytorch_kernel_of_the_peak_is_checked_like_the_others():
    from bench import roofline

    res = roofline.torch_peak("/tmp/torchvenv/bin/python", size=128, repeats=3)
    assert res["peak_flops"] > 0 and res["rel_error"] < 1e-5 and "PyTorch" in res["library"]


def test_bf16_section_on_a_tiny_model(tmp_path):
    out = tmp_path / "results.json"
    code = bench_main.main([
        "--only", "bf16", "--bf16-models", "Ti/16", "--resolution", "32", "--batch", "4",
        "--repeats", "2", "--torch-python", str(tmp_path / "no-such-python"),
        "--out", str(out), "--peak-kernels", "in-process"])
    assert code == 0
    doc = json.loads(out.read_text())
    rows = {r["name"]: r for r in doc["rows"]}
    low = rows["Ti/16 forward, bfloat16 matmuls"]
    full = rows["Ti/16 forward [float32]"]
    assert low["value"] > 0 and full["value"] > 0
    # Ti/16 has a timm twin; without its interpreter the row says so and goes on.
    assert "x float32" in low["note"] and "timm skipped" in low["note"]
    agree = low["extra"]["agreement"]
    assert agree["images"] == 4 + 3  # the batch and the three shipped photos
    assert 0 < agree["max_abs_logit_diff"] < 0.05 * agree["max_abs_logit"]
    assert 0.0 <= agree["top1_agreement"] <= 1.0
    peak = next(r for r in doc["rows"] if r["section"] == "roofline")
    flops = bench_roofline.forward_flops("Ti/16", 32, 1000)
    assert low["extra"]["bf16_roofline_fraction"] == pytest.approx(
        low["value"] * flops / peak["extra"]["bf16"]["peak_flops"])
    assert "of the float32 roofline" in full["note"]


def test_unknown_section_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench_main.parse_args(["--only", "model,speed"])
    assert "unknown section" in capsys.readouterr().err


# --- model FLOPs, roofline and the device section --------------------------------------------


def _xla_flops_per_image(name, resolution, classes, train):
    from augreg_nb.models import create_model
    from bench.roofline import xla_flops

    batch = 2
    model = create_model(name, classes)
    x = jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.float32)
    p = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x)["params"], x)
    if train:
        fn = jax.jit(jax.grad(lambda p, x: jnp.sum(model.apply({"params": p}, x, train=True))))
    else:
        fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
    return xla_flops(fn, p, x) / batch


@pytest.mark.parametrize(("name", "resolution"), [
    ("testing", 32), ("Ti/16", 224), ("testing-hybrid", 32), ("R+Ti/16", 224)])
def test_forward_flops_formula_agrees_with_xla_cost_analysis(name, resolution):
    from bench.roofline import forward_flops

    # XLA also counts element-wise work (softmax, GELU, norms), which the model-FLOPs
    # convention leaves out: its count is a little above the formula's, never below.
    ratio = _xla_flops_per_image(name, resolution, 1000, False) / forward_flops(
        name, resolution, 1000)
    assert 1.0 <= ratio <= 1.12, ratio


def test_train_flops_are_three_forward_passes_as_xla_counts_them():
    from bench.roofline import forward_flops, train_flops

    assert train_flops("Ti/16", 224, 100) == 3 * forward_flops("Ti/16", 224, 100)
    ratio = _xla_flops_per_image("Ti/16", 224, 100, True) / train_flops("Ti/16", 224, 100)
    assert 0.97 <= ratio <= 1.05, ratio


def test_forward_flops_of_ti16_by_hand():
    from bench.roofline import forward_flops

    # 196 patches of 16*16*3 -> 192, 197 tokens, 12 blocks of width 192 and MLP 768.
    t, d, m = 197, 192, 768
    block = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * m
    want = 2 * 196 * 768 * d + 12 * block + 2 * d * 1000
    assert forward_flops("Ti/16", 224, 1000) == want
    # B/16 at 384 px: 577 tokens; about 3x its 224 px cost plus the longer attention.
    assert 3.0 < forward_flops("B/16", 384) / forward_flops("B/16", 224) < 3.3


def test_matmul_peak_and_roofline_fraction():
    from bench.roofline import matmul_peak, roofline_fraction

    res = matmul_peak(size=128, repeats=3)
    assert res["peak_flops"] >= res["median_flops"] > 0 and len(res["seconds"]) == 3
    assert roofline_fraction(50.0, 2e9, 200e9) == pytest.approx(0.5)
    assert res["rel_error"] < 1e-5


def test_hardware_peak_takes_the_fastest_correct_kernel(monkeypatch):
    from bench import roofline

    options = {"real option": roofline.XLA_DOT_OPTIONS["XLA + XNNPACK dots"],
               "unknown option": "--xla_cpu_no_such_option_anywhere=1"}
    res = roofline.hardware_peak(size=96, repeats=2, options=options)
    kernels = res["kernels"]
    assert set(kernels) == {"XLA default", "NumPy BLAS", "real option", "unknown option"}
    # A flag the jaxlib does not know ends the child: reported, never raised, never counted.
    assert "not available" in kernels["unknown option"]["error"]
    valid = {k: v["peak_flops"] for k, v in kernels.items() if "error" not in v}
    assert {"XLA default", "NumPy BLAS"} <= set(valid)
    assert res["peak_flops"] == max(valid.values()) and valid[res["kernel"]] == res["peak_flops"]
    assert res["xla_default_flops"] == kernels["XLA default"]["peak_flops"]
    assert all(v["rel_error"] < 1e-5 for k, v in kernels.items() if "error" not in v)

    # The bfloat16 roofline: operands rounded, float32 sums, checked against float64.
    assert res["bf16"]["peak_flops"] > 0 and res["bf16"]["rel_error"] < 1e-5

    # A kernel that is fast but wrong does not set the peak.
    wrong = dict(roofline.numpy_peak(96, 2), peak_flops=1e18, rel_error=0.5)
    monkeypatch.setattr(roofline, "numpy_peak", lambda size, repeats: wrong)
    res = roofline.hardware_peak(size=96, repeats=2, options={})
    assert res["kernel"] == "XLA default"
    assert "wrong results" in res["kernels"]["NumPy BLAS"]["error"]


@pytest.mark.parametrize(("kind", "dtype", "tflops"), [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989), ("NVIDIA H100 PCIe", "bfloat16", 756),
    ("NVIDIA H200", "float32", 495), ("NVIDIA A100-SXM4-40GB", "bfloat16", 312),
    ("Tesla V100-SXM2-16GB", "float16", 125), ("Tesla T4", "float32", 8.1),
    ("NVIDIA L4", "bfloat16", 121), ("TPU v4", "bfloat16", 275),
    ("TPU v5 lite", "bfloat16", 197), ("TPU v5p", "float32", 459),
    ("TPU v6 lite", "bfloat16", 918)])
def test_device_peaks_by_device_kind(kind, dtype, tflops):
    from bench.device_speed import device_peak_flops

    assert device_peak_flops(kind, dtype) == pytest.approx(tflops * 1e12)


def test_unknown_device_has_no_peak():
    from bench.device_speed import device_peak_flops

    assert device_peak_flops("cpu", "float32") is None
    assert device_peak_flops("Some Future Accelerator", "bfloat16") is None


def test_device_section_without_accelerator_says_so_and_exits_zero(tmp_path, capsys):
    if jax.default_backend() != "cpu":
        pytest.skip("an accelerator is present")
    out = tmp_path / "results.json"
    assert bench_main.main(["--only", "device", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["section"] == "device" and row["value"] is None
    assert "no accelerator" in row["note"]
    assert "no accelerator" in capsys.readouterr().out


def test_device_machinery_on_cpu_with_a_tiny_model():
    from bench.device_speed import run_device
    from bench.roofline import train_flops

    rows = run_device(["testing"], ["float32", "bfloat16"], resolution=32, batch=4,
                      repeats=2, allow_cpu=True)
    assert [r.name for r in rows] == ["testing 32px float32 train step",
                                      "testing 32px bfloat16 train step"]
    for row in rows:
        assert row.value > 0, row.note
        assert row.extra["batch"] == 4 and len(row.extra["seconds"]) == 2
        assert row.extra["train_flops_per_image"] == train_flops("testing", 32, 100)
        assert row.extra["attention"] == "cpu"
        assert row.extra["mfu"] is None and "MFU unknown" in row.note


@pytest.mark.slow
def test_latency_section_runs_three_fresh_interpreters_on_one_cache():
    from bench.latency import run_latency

    rows = run_latency(["testing"], resolution=32)
    assert [r.name.rsplit(" ", 1)[-1] for r in rows] == ["off", "cold", "warm", "panel"]
    off, cold, warm, panel = (r.extra for r in rows)
    for row, res in zip(rows, (off, cold, warm, panel), strict=True):
        assert row.value == pytest.approx(res["import_s"] + res["preprocess_s"]
                                          + res["forward_s"])
        assert res["forward_s"] > 0 and res["second_predict_s"] > 0
    # The same prediction each time; with the cache off nothing is written.
    assert off["top1"] == cold["top1"] == warm["top1"] == panel["top1"]
    assert off["cache_files"] == 0
    assert "shorter than cold" in rows[2].note
    assert "warmed up in the background" in rows[3].note


def test_device_measurement_in_process_as_on_a_tpu_host():
    from bench.device_speed import _run_ours

    res = _run_ours("testing", "float32", 32, 4, 2, in_process=True)
    assert res["img_per_s"] > 0 and res["batch"] == 4 and len(res["seconds"]) == 2
    assert "cumulative" in res["peak_memory_note"]


def test_bench_keeps_its_own_gpu_reservation_small_but_not_the_childrens():
    import os
    from unittest import mock

    from bench import device_speed

    with mock.patch.dict(os.environ):  # restores every variable afterwards
        os.environ.pop(device_speed.PREALLOCATE_ENV, None)
        os.environ.pop(device_speed.PREALLOCATE_SET_BY_BENCH, None)
        device_speed.keep_parent_memory_small()
        assert os.environ[device_speed.PREALLOCATE_ENV] == "false"
        assert os.environ[device_speed.PREALLOCATE_SET_BY_BENCH] == "1"
        # A user's own choice is left alone.
        os.environ[device_speed.PREALLOCATE_ENV] = "true"
        os.environ.pop(device_speed.PREALLOCATE_SET_BY_BENCH)
        device_speed.keep_parent_memory_small()
        assert os.environ[device_speed.PREALLOCATE_ENV] == "true"
        assert device_speed.PREALLOCATE_SET_BY_BENCH not in os.environ


# --- the memory section -------------------------------------------------------------------


def test_memory_section_on_a_tiny_model(tmp_path):
    from augreg_nb.memory import HEADROOM, GiB

    assert "memory" not in bench_main.parse_args([]).only  # opt-in: about 10 min in full
    out = tmp_path / "results.json"
    assert bench_main.main([
        "--only", "memory", "--memory-models", "testing", "--memory-resolution", "32",
        "--memory-batch", "8", "--memory-devices", "2", "--memory-sizes", "1",
        "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    fits = [r for r in doc["rows"] if r["unit"] == "micro_batches"]
    steps = {(r["extra"]["param_sharding"], r["extra"]["micro_batches"]): r
             for r in doc["rows"] if r["unit"] == "GiB/device"}
    assert [(f["extra"]["param_sharding"], f["extra"]["memory_gib"]) for f in fits] == [
        ("replicated", 1.0), ("sharded", 1.0)]
    for fit in fits:
        sharding, m = fit["extra"]["param_sharding"], fit["value"]
        step = steps[sharding, m]["extra"]
        assert (step["num_devices"], step["global_batch"], step["resolution"]) == (2, 8, 32)
        assert step["images_per_device"] == 8 // (2 * m)
        assert step["peak_bytes"] == (step["argument_bytes"] + step["output_bytes"]
                                      - step["alias_bytes"] + step["temp_bytes"])
        assert steps[sharding, m]["value"] == pytest.approx(step["peak_bytes"] / GiB)
        assert step["peak_bytes"] <= (1 - HEADROOM) * GiB  # the fewest that fit ...
        for (other, k), row in steps.items():  # ... and every smaller count measured does not
            if other == sharding and k < m:
                assert row["extra"]["peak_bytes"] > (1 - HEADROOM) * GiB
    assert "fewest micro_batches for 1 GiB" in doc["table"]
