"""The persistent compilation cache: where it lives, the opt-out, and that a second
interpreter loads the compiled forward pass instead of compiling it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from augreg_nb import compile_cache, resources
from bench.common import REPO


@pytest.fixture
def restore_jax_cache_config():
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    saved = {k: getattr(jax.config, k) for k in keys}
    yield
    for k, v in saved.items():
        jax.config.update(k, v)
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()


def test_enable_uses_the_package_cache_folder(monkeypatch, tmp_path, restore_jax_cache_config):
    monkeypatch.setenv(resources.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(compile_cache.ENV_NO_COMPILE_CACHE, raising=False)
    jax.config.update("jax_compilation_cache_dir", None)
    folder = compile_cache.enable()
    assert folder == tmp_path / "jax-compile" and folder.is_dir()
    assert jax.config.jax_compilation_cache_dir == str(folder)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == (
        compile_cache.MIN_COMPILE_TIME_S)
    # A folder already chosen (by the user or an earlier call) is kept.
    assert compile_cache.enable() == folder


def test_opt_out_by_environment_variable(monkeypatch, tmp_path, restore_jax_cache_config):
    monkeypatch.setenv(resources.ENV_CACHE, str(tmp_path))
    monkeypatch.setenv(compile_cache.ENV_NO_COMPILE_CACHE, "1")
    jax.config.update("jax_compilation_cache_dir", None)
    assert compile_cache.enable() is None
    assert not jax.config.jax_compilation_cache_dir
    assert not (tmp_path / "jax-compile").exists()


def test_enable_after_a_compilation_still_writes_entries(tmp_path, restore_jax_cache_config):
    jax.jit(lambda x: x + 1)(jnp.ones(3)).block_until_ready()  # JAX has compiled before
    folder = compile_cache.enable(tmp_path / "cc")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.jit(lambda x: jnp.sin(x) * 3.5 + jnp.cos(x))(jnp.ones(7)).block_until_ready()
    assert any(p.is_file() for p in folder.rglob("*"))
    compile_cache.disable()
    assert not jax.config.jax_compilation_cache_dir


_CHILD = textwrap.dedent("""
    import json, logging, sys, time
    import jax
    import numpy as np
    from augreg_nb import inference
    from augreg_nb.checkpoint import unflatten
    from augreg_nb.testing.checkpoints import fake_params
    from augreg_nb import compile_cache
    compile_cache.MIN_COMPILE_TIME_S = 0.0  # the tiny model compiles in well under 0.5 s
    hits = []
    class Hit(logging.Handler):
        def emit(self, record):
            if "cache hit" in record.getMessage().lower():
                hits.append(record.getMessage())
    logging.getLogger("jax._src.compiler").addHandler(Hit())
    logging.getLogger("jax._src.compiler").setLevel(logging.DEBUG)
    params = unflatten(fake_params("testing", num_classes=5, resolution=32))
    image = np.zeros((32, 32, 3), np.uint8)
    pred = inference.predict("testing", params, [image], resolution=32, top_k=2,
                             label_names=list("abcde"))
    print(json.dumps({"hits": len(hits), "top": [p.index for p in pred[0]],
                      "dir": jax.config.jax_compilation_cache_dir}))
""")


def test_second_interpreter_loads_the_forward_pass_from_the_cache(tmp_path):
    env = dict(os.environ)
    env[resources.ENV_CACHE] = str(tmp_path)
    env[resources.ENV_OFFLINE] = "1"
    env.pop(compile_cache.ENV_NO_COMPILE_CACHE, None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["dir"] == second["dir"] == str(tmp_path / "jax-compile")
    assert first["hits"] == 0 and second["hits"] >= 1
    assert first["top"] == second["top"]
