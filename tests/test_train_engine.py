"""The training loop with a throwaway Linen model and synthetic data: learning, exact
accumulation, device independence, real sharding, bitwise resume, NaN stop, OOM advice."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from augreg_nb import input_pipeline as ip
from augreg_nb import train_state
from augreg_nb import train_step as ts
from augreg_nb.callbacks import Callback, LivePlot
from augreg_nb.config import get_config
from augreg_nb.train import (
    TrainData,
    TrainingDiverged,
    evaluate,
    fit,
    oom_advice,
    optimizer_for,
    train_chunk,
)
from augreg_nb.train_state import TrainState
from tests.conftest import REPO, run_python

NUM_CLASSES = 4
SHAPE = (8, 8, 3)
_W = np.random.default_rng(123).normal(size=(int(np.prod(SHAPE)), NUM_CLASSES))


class TinyNet(nn.Module):
    """Flatten -> Dense(16) -> tanh -> zero-initialised head, like a fine-tuning head."""

    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x, *, train=False):
        x = x.reshape((x.shape[0], -1))
        x = nn.tanh(nn.Dense(16)(x))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(x)


def examples(n, rng):
    """A learnable problem: the label is the argmax of a fixed linear map of the image."""
    x = rng.normal(size=(n, *SHAPE)).astype(np.float32)
    return x, np.argmax(x.reshape(n, -1) @ _W, -1).astype(np.int32)


def synthetic_data(seed=0, global_batch=32, nan_at=None, n_eval=50, eval_batch=16):
    def train_batches(first):
        step = first
        while True:
            x, y = examples(global_batch, np.random.default_rng([seed, step]))
            if step == nan_at:
                x[0, 0, 0, 0] = np.nan
            yield {"image": x, "label": y}
            step += 1

    def eval_batches():
        x, y = examples(n_eval, np.random.default_rng([seed, 10**6]))
        for i in range(0, n_eval, eval_batch):
            k = min(eval_batch, n_eval - i)
            pad = eval_batch - k
            yield {"image": np.pad(x[i:i + k], ((0, pad), (0, 0), (0, 0), (0, 0))),
                   "label": np.pad(y[i:i + k], (0, pad)),
                   "mask": np.arange(eval_batch) < k}

    return TrainData(NUM_CLASSES, train_batches, {"val": eval_batches})


def small_config(**kw):
    c = get_config("smoke")
    c.global_batch, c.micro_batches, c.eval_batch = 32, 1, 16
    c.total_steps, c.warmup_steps, c.base_lr = 40, 4, 0.1
    c.eval_every = c.checkpoint_every = 20
    c.log_every = 5
    for k, v in kw.items():
        c[k] = v
    return c


def init_params(seed=0):
    return TinyNet().init(jax.random.key(seed), jnp.zeros((1, *SHAPE)))["params"]


def run(config, workdir, *, data=None, mesh=None, callbacks=()):
    return fit(config, apply_fn=TinyNet().apply, params=init_params(), workdir=workdir,
               data=data or synthetic_data(global_batch=config.global_batch),
               callbacks=callbacks, mesh=mesh)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_loss_decreases_and_accuracy_beats_chance(tmp_path):
    out = run(small_config(total_steps=60, base_lr=0.3), tmp_path)
    h = out.history.dropna(subset=["loss"])
    assert h.loss.iloc[-1] < 0.8 * h.loss.iloc[0]
    assert out.final["val_accuracy"] > 0.6  # chance is 0.25
    assert out.final["val_count"] == 50
    assert list(h.step) == list(range(5, 61, 5))
    print("synthetic val accuracy", out.final["val_accuracy"])
    # the last (60th) update applies lr(59): cosine at progress (59 - 4) / (60 - 4), not 0
    np.testing.assert_allclose(
        h.lr.iloc[-1], 0.3 * 0.5 * (1 + np.cos(np.pi * 55 / 56)), rtol=1e-4)


def test_history_records_the_rate_each_update_applies_and_the_first_is_zero(tmp_path):
    config = small_config(total_steps=12, warmup_steps=4, base_lr=0.2, log_every=1,
                          eval_every=0, checkpoint_every=0)
    out = run(config, tmp_path / "run")
    h = out.history.dropna(subset=["lr"])
    assert list(h.step) == list(range(1, 13))
    # update k applies lr(k - 1) of the protocol's formula (optax counts from 0)
    want = [0.2 * min(1.0, (k - 1) / 4)
            * 0.5 * (1 + np.cos(np.pi * min(max((k - 1 - 4) / 8, 0.0), 1.0)))
            for k in range(1, 13)]
    np.testing.assert_allclose(h.lr.to_numpy(), want, rtol=1e-5, atol=1e-9)  # float32
    assert h.lr.iloc[0] == 0.0 and h.lr.iloc[4] == pytest.approx(0.2)
    # rate 0 really is applied: one update leaves the parameters bit for bit unchanged
    one = run(small_config(total_steps=1, warmup_steps=1, eval_every=0), tmp_path / "one")
    assert all(np.array_equal(a, b) for a, b in zip(leaves(init_params()), leaves(one.params),
                                                    strict=True))
    two = run(small_config(total_steps=2, warmup_steps=1, eval_every=0), tmp_path / "two")
    assert not all(np.array_equal(a, b) for a, b in zip(leaves(init_params()),
                                                        leaves(two.params), strict=True))


def test_evaluation_counts_every_example_once():
    from augreg_nb import train_step as ts

    mesh = ip.data_mesh()
    params = init_params(3)
    params["head"]["kernel"] = jnp.asarray(
        np.random.default_rng(0).normal(size=params["head"]["kernel"].shape), jnp.float32)
    data = synthetic_data(n_eval=37, eval_batch=16)  # 16 + 16 + 5 real, 11 padded
    step = ts.make_eval_step(TinyNet().apply, mesh=mesh, num_classes=NUM_CLASSES)
    got = evaluate(step, params, data.eval_batches["val"](), mesh)
    x, y = examples(37, np.random.default_rng([0, 10**6]))
    logits = np.asarray(TinyNet().apply({"params": params}, x))
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)
                           ) - logits.max(1, keepdims=True)
    assert got["count"] == 37
    assert got["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y))
    assert got["loss"] == pytest.approx(-np.mean(logp[np.arange(37), y]), rel=1e-5)


def test_micro_batches_do_not_change_the_result(tmp_path):
    one = run(small_config(total_steps=12, micro_batches=1), tmp_path / "m1")
    four = run(small_config(total_steps=12, micro_batches=4), tmp_path / "m4")
    for a, b in zip(leaves(one.params), leaves(four.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one.history.loss, four.history.loss, rtol=1e-5)


def test_eight_devices_equal_one_and_the_sharding_is_real():
    out = run_python(
        """
        import json, tempfile, jax, numpy as np
        from augreg_nb import input_pipeline as ip
        from augreg_nb import train_step as ts
        from tests.test_train_engine import run, small_config, leaves, init_params
        assert jax.device_count() == 8
        mesh8, mesh1 = ip.data_mesh(), ip.data_mesh(jax.devices()[:1])
        a = run(small_config(total_steps=12, micro_batches=1), tempfile.mkdtemp(), mesh=mesh8)
        b = run(small_config(total_steps=12, micro_batches=4), tempfile.mkdtemp(), mesh=mesh1)
        diff = max(float(np.max(np.abs(x - y))) for x, y in zip(leaves(a.params),
                                                                 leaves(b.params)))
        batch = ip.put_batch({"image": np.zeros((32, 8, 8, 3), np.float32)}, mesh8)["image"]
        params = jax.device_put(init_params(), ts.param_shardings(init_params(), mesh8))
        big = {"w": np.zeros((64, 4096), np.float32), "b": np.zeros(7, np.float32)}
        sharded = ts.param_shardings(big, mesh8, "sharded")
        import optax
        state, _ = ts.create_state(big, optax.sgd(0.1, momentum=0.9), mesh8, "sharded")
        (trace,) = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) == 2]
        print(json.dumps({
            "diff": diff,
            "loss_diff": float(np.max(np.abs(a.history.loss.values - b.history.loss.values))),
            "batch_spec": list(batch.sharding.spec),
            "batch_shards": sorted({s.data.shape[0] for s in batch.addressable_shards}),
            "batch_devices": len({s.device for s in batch.addressable_shards}),
            "params_replicated": all(x.sharding.is_fully_replicated
                                     for x in jax.tree.leaves(params)),
            "params_devices": len(jax.tree.leaves(params)[0].sharding.device_set),
            "big_spec": list(sharded["w"].spec), "small_spec": list(sharded["b"].spec),
            "momentum_spec": list(trace.sharding.spec),
            "momentum_shard": list(trace.addressable_shards[0].data.shape),
        }))
        """,
        devices=8,
    )
    res = json.loads(out.strip().splitlines()[-1])
    assert res["diff"] < 1e-5 and res["loss_diff"] < 1e-5
    # The spec's entries, not its text: PartitionSpec's repr differs across jax versions.
    assert res["batch_spec"] == ["data"]
    assert res["batch_shards"] == [4] and res["batch_devices"] == 8  # 32 images / 8
    assert res["params_replicated"] and res["params_devices"] == 8
    assert res["big_spec"] == [None, "data"]
    assert res["small_spec"] == []
    # The optimiser's momentum is split like its parameter: 1/8 of it on each device.
    assert res["momentum_spec"] == [None, "data"] and res["momentum_shard"] == [64, 512]


class _StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_log(self, step, metrics):
        if step == self.step:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_bitwise_identical_params(tmp_path):
    config = small_config(total_steps=30, checkpoint_every=10, eval_every=15)
    full = run(config, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "cut", callbacks=[_StopAt(25)])  # last saved: step 20
    resumed = run(config, tmp_path / "cut")
    for a, b in zip(leaves(full.params), leaves(resumed.params), strict=True):
        assert np.array_equal(a, b)
    assert list(resumed.history.step) == list(full.history.step)
    assert resumed.final == full.final
    # A finished workdir answers from its saved state and history without training.
    again = run(config, tmp_path / "cut")
    for a, b in zip(leaves(full.params), leaves(again.params), strict=True):
        assert np.array_equal(a, b)
    assert again.final == full.final


def test_run_killed_with_sigkill_resumes_bitwise(tmp_path):
    code = textwrap.dedent(f"""
        import os, signal
        from augreg_nb.callbacks import Callback
        from tests.test_train_engine import run, small_config

        class Kill(Callback):
            def on_log(self, step, metrics):
                if step == 15:
                    os.kill(os.getpid(), signal.SIGKILL)

        run(small_config(total_steps=30, checkpoint_every=10, eval_every=15),
            {str(tmp_path / 'cut')!r}, callbacks=[Kill()])
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert train_state.saved(tmp_path / "cut" / "state")
    config = small_config(total_steps=30, checkpoint_every=10, eval_every=15)
    resumed = run(config, tmp_path / "cut")
    full = run(config, tmp_path / "full")
    assert all(np.array_equal(a, b) for a, b in zip(leaves(full.params),
                                                    leaves(resumed.params), strict=True))


class _CopyState(Callback):
    def __init__(self, workdir, step, dest):
        self.workdir, self.step, self.dest = workdir, step, dest

    def on_log(self, step, metrics):
        if step == self.step:  # the state folder then holds the state of step - 1
            shutil.copytree(self.workdir / "state", self.dest)


def _saved_leaves(folder, config):
    """{tree path: numpy array} of the state saved in ``folder`` by a run of ``config``."""
    like = TrainState.create(init_params(), optimizer_for(config))
    state, _ = train_state.restore_state(folder, like=like)
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}


def test_nan_loss_stops_and_keeps_the_last_good_state(tmp_path):
    config = small_config(total_steps=20, checkpoint_every=0, eval_every=0, log_every=1)
    with pytest.raises(TrainingDiverged, match=r"step 9: the loss became nan.*last good "
                       r"state \(step 8\)") as info:
        run(config, tmp_path / "bad", data=synthetic_data(nan_at=9))
    assert info.value.step == 9
    # The kept state is exactly the state after step 8 of a clean run with the same recipe.
    ref = tmp_path / "ref"
    config.checkpoint_every = 8
    run(config, ref, callbacks=[_CopyState(ref, 9, tmp_path / "step8")])
    kept = _saved_leaves(info.value.state_path, config)
    want = _saved_leaves(tmp_path / "step8", config)
    assert list(kept) == list(want)
    for path in kept:
        if "nonfinite_step" in path:
            assert kept[path] == 9 and want[path] == 0
        else:
            assert np.array_equal(kept[path], want[path]), path
    assert sum("params" in p for p in kept) == 4


def test_resume_refuses_a_different_recipe(tmp_path):
    run(small_config(total_steps=5), tmp_path)
    with pytest.raises(ValueError, match=r"different recipe \(fields \['base_lr'\]"):
        run(small_config(total_steps=5, base_lr=0.5), tmp_path)


def test_out_of_memory_names_a_micro_batch_setting(tmp_path):
    def apply_fn(*args, **kwargs):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123 bytes.")

    config = small_config(total_steps=3, warmup_steps=1, micro_batches=2)
    with pytest.raises(RuntimeError, match=r"set micro_batches=4 \(8 per device"):
        fit(config, apply_fn=apply_fn, params=init_params(), data=synthetic_data(),
            workdir=tmp_path)
    c = get_config("cifar100-2500-0.01-384")
    assert "micro_batches=16" in oom_advice(c, 8)   # 8 per device -> 4 per device
    c.micro_batches = 64
    assert "already processes 1" in oom_advice(c, 8)


def test_live_plot_draws_loss_and_accuracy(tmp_path):
    shown = []
    plot = LivePlot(display=shown.append)
    run(small_config(total_steps=20, eval_every=10), tmp_path, callbacks=[plot])
    loss_line = plot.ax_loss.get_lines()[0]
    assert list(loss_line.get_xdata()) == [5, 10, 15, 20]
    acc_line = plot.ax_acc.get_lines()[0]
    assert list(acc_line.get_xdata()) == [10, 20]
    assert shown and shown[-1] is plot.figure


def test_progress_bar_shows_loss_lr_speed_and_evaluations(tmp_path):
    import io

    from augreg_nb.callbacks import ProgressBar

    stream = io.StringIO()
    # A fixed width: tqdm cuts the postfix to the terminal's ($COLUMNS), which varies.
    bar = ProgressBar(file=stream, mininterval=0, dynamic_ncols=False, ncols=300)
    run(small_config(total_steps=20, eval_every=10), tmp_path, callbacks=[bar])
    text = stream.getvalue()
    assert "20/20" in text and "loss=" in text and "lr=" in text and "img/s=" in text
    assert "step 10: val" in text and "step 20: val" in text


def test_bfloat16_compute_trains(tmp_path):
    config = small_config(total_steps=10, eval_every=0)
    config.dtype = "bfloat16"

    class HalfNet(TinyNet):
        @nn.compact
        def __call__(self, x, *, train=False):
            x = nn.tanh(nn.Dense(16, dtype=jnp.bfloat16)(x.reshape((x.shape[0], -1))))
            return nn.Dense(self.num_classes, dtype=jnp.bfloat16, name="head",
                            kernel_init=nn.initializers.zeros)(x)

    out = fit(config, apply_fn=HalfNet().apply, params=init_params(), workdir=tmp_path,
              data=synthetic_data())
    assert all(x.dtype == np.float32 for x in leaves(out.params))  # params stay float32
    assert np.isfinite(out.history.loss).all()


class _RequestStopAt:
    """Asks the run to stop (as the notebook's Stop button does) once ``step`` is logged."""

    def __init__(self, step):
        self.step, self.stop_requested = step, False

    def on_log(self, step, metrics):
        self.stop_requested = step >= self.step


def test_stop_request_saves_the_state_and_resumes_bitwise(tmp_path):
    from augreg_nb.train import TrainingStopped

    config = small_config(total_steps=30, checkpoint_every=20, eval_every=15)
    full = run(config, tmp_path / "full")
    with pytest.raises(TrainingStopped) as info:
        run(config, tmp_path / "cut", callbacks=[_RequestStopAt(10)])
    assert info.value.step == 10  # the step that was running, not the last checkpoint (0)
    assert "stopped at step 10 of 30" in str(info.value) and "resumes" in str(info.value)
    assert train_state.saved(info.value.state_path)
    resumed = run(config, tmp_path / "cut")
    for a, b in zip(leaves(full.params), leaves(resumed.params), strict=True):
        assert np.array_equal(a, b)
    assert resumed.final == full.final


def test_keyboard_interrupt_in_a_step_becomes_a_saved_stop(tmp_path):
    from augreg_nb.train import TrainingStopped

    config = small_config(total_steps=30, checkpoint_every=20, eval_every=15)
    full = run(config, tmp_path / "full")
    data = synthetic_data(global_batch=config.global_batch)
    make = data.train_batches

    def interrupted(first):
        for step, batch in enumerate(make(first), start=first):
            if step == 13:
                raise KeyboardInterrupt
            yield batch

    data = TrainData(data.num_classes, interrupted, data.eval_batches)
    with pytest.raises(TrainingStopped) as info:
        run(config, tmp_path / "cut", data=data)
    assert info.value.step == 12 and train_state.saved(info.value.state_path)
    resumed = run(config, tmp_path / "cut")
    for a, b in zip(leaves(full.params), leaves(resumed.params), strict=True):
        assert np.array_equal(a, b)


def test_a_state_file_of_the_earlier_format_is_resumed_once(tmp_path):
    from tests.test_failure_paths_files import _write_npz_state

    config = small_config(total_steps=30, checkpoint_every=10, eval_every=15)
    full = run(config, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "cut", callbacks=[_StopAt(25)])  # last saved: step 20
    # The same state as an earlier version wrote it: one state.npz in the workdir.
    like = TrainState.create(init_params(), optimizer_for(config))
    state, _ = train_state.restore_state(tmp_path / "cut" / "state", like=like)
    meta = train_state.read_meta(tmp_path / "cut" / "state")
    shutil.rmtree(tmp_path / "cut" / "state")
    _write_npz_state(tmp_path / "cut" / "state.npz", state, meta)
    resumed = run(config, tmp_path / "cut")
    assert all(np.array_equal(a, b) for a, b in zip(leaves(full.params),
                                                    leaves(resumed.params), strict=True))
    assert not (tmp_path / "cut" / "state.npz").exists()
    assert train_state.read_meta(tmp_path / "cut" / "state")["step"] == 30


def test_a_run_killed_in_its_first_save_starts_over(tmp_path):
    config = small_config(total_steps=5)
    unfinished = tmp_path / "state" / "1.orbax-checkpoint-tmp-1700000000"
    (unfinished / "arrays").mkdir(parents=True)
    out = run(config, tmp_path)
    assert list(out.history.step)[-1] == 5 and not unfinished.exists()
    (tmp_path / "state").rename(tmp_path / "elsewhere")
    (tmp_path / "state").write_bytes(b"not a state folder")
    with pytest.raises(train_state.StateFileError, match="it is a file, not a folder"):
        run(config, tmp_path)


def test_cpu_chunks_of_a_step_give_the_same_training(tmp_path, monkeypatch):
    """A step that runs its micro-batches in sequential chunks (train_chunk on one CPU
    device) trains the same parameters as whole micro-batches, up to float rounding."""
    results = {}
    for chunk, micro in (("0", 1), ("8", 1), ("8", 2)):
        monkeypatch.setenv("AUGREG_NB_CPU_CHUNK", chunk)
        config = small_config(total_steps=12, micro_batches=micro)
        assert train_chunk(config, 1) == int(chunk)
        results[chunk, micro] = run(config, tmp_path / f"c{chunk}-m{micro}")
    base = results["0", 1]
    for key in (("8", 1), ("8", 2)):  # 4 chunks of 8 images; 2 micro-batches of 2 chunks
        for a, b in zip(leaves(base.params), leaves(results[key].params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(base.history.loss, results[key].history.loss, rtol=1e-5)


def test_train_chunk_only_for_deterministic_steps_on_one_device(monkeypatch):
    monkeypatch.delenv("AUGREG_NB_CPU_CHUNK", raising=False)
    assert train_chunk(small_config(), 1) == 16  # the transfer recipe on this CPU
    assert train_chunk(small_config(), 8) == 0
    assert train_chunk(small_config(do=0.1), 1) == 0
    assert train_chunk(small_config(sd=0.1), 1) == 0
    with pytest.raises(ValueError, match="chunk must be >= 0"):
        ts.make_train_step(TinyNet().apply, optax.sgd(0.1), mesh=ip.data_mesh(),
                           num_classes=NUM_CLASSES, chunk=-1)


class TinyConvNet(nn.Module):
    """A convolution before the head, as the ResNet stem of the hybrids."""

    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        return nn.Dense(NUM_CLASSES, name="head")(x.reshape((x.shape[0], -1)))


@pytest.mark.parametrize("net,rolled", [(TinyNet, True), (TinyConvNet, False)])
def test_micro_batch_loop_is_unrolled_for_convolutions_on_cpu(net, rolled):
    """XLA's CPU backend runs a convolution's weight gradient 50-70x slower inside a loop,
    so a step with convolutions unrolls its micro-batches there; others keep the loop."""
    mesh = ip.data_mesh()
    params = net().init(jax.random.key(0), jnp.zeros((1, *SHAPE)))["params"]
    tx = optax.sgd(0.1)
    state, sharding = ts.create_state(params, tx, mesh)
    step = ts.make_train_step(net().apply, tx, mesh=mesh, num_classes=NUM_CLASSES,
                              micro_batches=4, state_sharding=sharding, donate=False)
    x, y = examples(8, np.random.default_rng(0))
    batch = ip.put_batch({"image": x, "label": y}, mesh)
    hlo = step.lower(state, batch).as_text()
    assert ("stablehlo.while" in hlo) == rolled
    kept = ts.make_train_step(net().apply, tx, mesh=mesh, num_classes=NUM_CLASSES,
                              micro_batches=4, state_sharding=sharding, donate=False,
                              unroll_convolutions=False)  # as augreg_nb.memory models it
    assert "stablehlo.while" in kept.lower(state, batch).as_text()
    new_state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 1
