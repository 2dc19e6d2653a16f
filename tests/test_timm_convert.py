"""timm safetensors (Hugging Face Hub copies) -> AugReg tree, without PyTorch.

The reference forward below reads the timm state dict directly with PyTorch's conventions
(``nn.Linear``: ``x @ W.T + b``; ``nn.Conv2d`` weights (out, in, kh, kw); the fused qkv
projection split as ``reshape(B, N, 3, heads, head_dim)``), and the AugReg numerics of the
protocol (weight standardisation with std + 1e-5, tanh GELU). It never calls the converter.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from augreg_nb import checkpoint as ck
from augreg_nb import models
from augreg_nb.testing.checkpoints import write_fake_checkpoint, write_fake_timm_safetensors
from augreg_nb.timm_convert import flat_to_timm, timm_to_flat
from tests.test_models import (
    np_gelu_tanh,
    np_group_norm,
    np_layer_norm,
    np_max_pool_same,
    np_softmax,
    random_images,
    same_pads,
)


def torch_conv(x, w, stride, padding):
    """NHWC input, PyTorch (out, in, kh, kw) weight: out[o] = sum_{c,i,j} w[o,c,i,j] x[c,..]."""
    kh, kw = w.shape[2:]
    if padding == "SAME":
        x = np.pad(x, ((0, 0), same_pads(x.shape[1], kh, stride),
                       same_pads(x.shape[2], kw, stride), (0, 0)))
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = 0
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            out = out + np.einsum("nhwc,oc->nhwo", patch, w[:, :, i, j])
    return out


def ws_oihw(w):
    mean = w.mean(axis=(1, 2, 3), keepdims=True)
    return (w - mean) / (w.std(axis=(1, 2, 3), keepdims=True) + 1e-5)


def timm_reference_forward(state, images, num_heads):
    s = {k: np.asarray(v, np.float64) for k, v in state.items()}
    x = np.asarray(images, np.float64)

    def conv_norm(x, conv, norm, stride):
        y = torch_conv(x, ws_oihw(s[f"{conv}.weight"]), stride, "SAME")
        return np_group_norm(y, s[f"{norm}.weight"], s[f"{norm}.bias"])

    if "patch_embed.backbone.conv.weight" in s or "patch_embed.backbone.stem.conv.weight" in s:
        stem = ("patch_embed.backbone.stem" if "patch_embed.backbone.stem.conv.weight" in s
                else "patch_embed.backbone")
        x = np.maximum(conv_norm(x, f"{stem}.conv", f"{stem}.norm", 2), 0)
        x = np_max_pool_same(x)
        i = 0
        while f"patch_embed.backbone.stages.{i}.blocks.0.conv1.weight" in s:
            j = 0
            while (b := f"patch_embed.backbone.stages.{i}.blocks.{j}") and f"{b}.conv1.weight" in s:
                stride = 2 if (i > 0 and j == 0) else 1
                shortcut = x
                if f"{b}.downsample.conv.weight" in s:
                    shortcut = conv_norm(x, f"{b}.downsample.conv", f"{b}.downsample.norm",
                                         stride)
                y = np.maximum(conv_norm(x, f"{b}.conv1", f"{b}.norm1", 1), 0)
                y = np.maximum(conv_norm(y, f"{b}.conv2", f"{b}.norm2", stride), 0)
                y = conv_norm(y, f"{b}.conv3", f"{b}.norm3", 1)
                x = np.maximum(y + shortcut, 0)
                j += 1
            i += 1
    w = s["patch_embed.proj.weight"]
    x = torch_conv(x, w, w.shape[-1], "VALID") + s["patch_embed.proj.bias"]
    n, h, wd, d = x.shape
    x = np.concatenate([np.broadcast_to(s["cls_token"], (n, 1, d)), x.reshape(n, h * wd, d)], 1)
    x = x + s["pos_embed"]
    i = 0
    while f"blocks.{i}.norm1.weight" in s:
        b = f"blocks.{i}"
        y = np_layer_norm(x, s[f"{b}.norm1.weight"], s[f"{b}.norm1.bias"])
        qkv = y @ s[f"{b}.attn.qkv.weight"].T + s[f"{b}.attn.qkv.bias"]
        qkv = qkv.reshape(n, -1, 3, num_heads, d // num_heads).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (n, heads, tokens, head_dim)
        attn = np_softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // num_heads))
        y = (attn @ v).transpose(0, 2, 1, 3).reshape(n, -1, d)
        x = x + y @ s[f"{b}.attn.proj.weight"].T + s[f"{b}.attn.proj.bias"]
        y = np_layer_norm(x, s[f"{b}.norm2.weight"], s[f"{b}.norm2.bias"])
        y = np_gelu_tanh(y @ s[f"{b}.mlp.fc1.weight"].T + s[f"{b}.mlp.fc1.bias"])
        x = x + y @ s[f"{b}.mlp.fc2.weight"].T + s[f"{b}.mlp.fc2.bias"]
        i += 1
    x = np_layer_norm(x, s["norm.weight"], s["norm.bias"])
    return x[:, 0] @ s["head.weight"].T + s["head.bias"]


def test_fake_timm_file_has_timm_names_and_shapes(tmp_path):
    path = write_fake_timm_safetensors(tmp_path / "h.safetensors", "testing-hybrid",
                                       num_classes=7, resolution=32)
    state = load_file(str(path))
    shapes = {k: v.shape for k, v in state.items()}
    expected = {
        "cls_token": (1, 1, 32), "pos_embed": (1, 17, 32),
        "patch_embed.proj.weight": (32, 512, 1, 1), "patch_embed.proj.bias": (32,),
        "patch_embed.backbone.stem.conv.weight": (64, 3, 7, 7),
        "patch_embed.backbone.stem.norm.weight": (64,),
        "patch_embed.backbone.stem.norm.bias": (64,),
        "norm.weight": (32,), "norm.bias": (32,), "head.weight": (7, 32), "head.bias": (7,),
    }
    for stage, (cin, mid) in enumerate([(64, 64), (256, 128)]):
        b = f"patch_embed.backbone.stages.{stage}.blocks.0"
        expected.update({
            f"{b}.conv1.weight": (mid, cin, 1, 1), f"{b}.conv2.weight": (mid, mid, 3, 3),
            f"{b}.conv3.weight": (4 * mid, mid, 1, 1),
            f"{b}.downsample.conv.weight": (4 * mid, cin, 1, 1),
        })
        for norm, c in (("norm1", mid), ("norm2", mid), ("norm3", 4 * mid),
                        ("downsample.norm", 4 * mid)):
            expected.update({f"{b}.{norm}.weight": (c,), f"{b}.{norm}.bias": (c,)})
    for i in range(2):
        b = f"blocks.{i}"
        expected.update({
            f"{b}.norm1.weight": (32,), f"{b}.norm1.bias": (32,),
            f"{b}.attn.qkv.weight": (96, 32), f"{b}.attn.qkv.bias": (96,),
            f"{b}.attn.proj.weight": (32, 32), f"{b}.attn.proj.bias": (32,),
            f"{b}.norm2.weight": (32,), f"{b}.norm2.bias": (32,),
            f"{b}.mlp.fc1.weight": (48, 32), f"{b}.mlp.fc1.bias": (48,),
            f"{b}.mlp.fc2.weight": (32, 48), f"{b}.mlp.fc2.bias": (32,),
        })
    assert shapes == expected


def test_stem_only_hybrid_uses_timm_stem_names(tmp_path):
    flat = ck.read_npz(write_fake_checkpoint(tmp_path / "r.npz", "R+Ti/16", num_classes=3))
    state = flat_to_timm(flat)
    assert state["patch_embed.backbone.conv.weight"].shape == (64, 3, 7, 7)
    assert state["patch_embed.backbone.norm.weight"].shape == (64,)
    assert state["patch_embed.proj.weight"].shape == (192, 64, 8, 8)
    assert not any(".stem." in k or ".stages." in k for k in state)
    back = timm_to_flat(state)
    assert set(back) == set(flat)
    for k in flat:
        np.testing.assert_array_equal(back[k], flat[k])


@pytest.mark.parametrize("name", ["testing", "testing-hybrid"])
def test_timm_file_forward_equals_timm_semantics_and_the_npz_path(tmp_path, name):
    timm_path = write_fake_timm_safetensors(tmp_path / "m.safetensors", name, num_classes=6,
                                            resolution=32, seed=7)
    npz_path = write_fake_checkpoint(tmp_path / "m.npz", name, num_classes=6, resolution=32,
                                     seed=7)
    images = random_images(2, 32, seed=3)
    model = models.create_model(name, 6)
    from_timm = ck.load(timm_path)  # model inferred from the shapes
    from_npz = ck.load(npz_path)
    out_timm = np.asarray(model.apply({"params": from_timm}, images))
    out_npz = np.asarray(model.apply({"params": from_npz}, images))
    np.testing.assert_array_equal(out_timm, out_npz)
    ref = timm_reference_forward(load_file(str(timm_path)), images,
                                 models.get_model_config(name).num_heads)
    np.testing.assert_allclose(out_timm, ref, rtol=1e-5, atol=1e-5)
    assert "torch" not in sys.modules


def test_timm_file_without_head_and_with_adaptation(tmp_path):
    path = write_fake_timm_safetensors(tmp_path / "t.safetensors", "Ti/16", num_classes=10,
                                       resolution=64)
    state = load_file(str(path))
    del state["head.weight"], state["head.bias"]
    headless = tmp_path / "headless.safetensors"
    save_file(state, str(headless))
    with pytest.raises(ck.CheckpointError, match="pass num_classes"):
        ck.load(headless)
    params = ck.load(headless, model_name="Ti/16", num_classes=3, resolution=96)
    assert params["head"]["kernel"].shape == (192, 3)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 37, 192)


def test_bad_timm_files_are_explained(tmp_path):
    path = write_fake_timm_safetensors(tmp_path / "t.safetensors", "testing", num_classes=4,
                                       resolution=32)
    state = load_file(str(path))
    state["blocks.0.ls1.gamma"] = np.ones(32, np.float32)
    odd = tmp_path / "odd.safetensors"
    save_file(state, str(odd))
    unknown = r"no AugReg counterpart: \['blocks.0.ls1.gamma'\]"
    with pytest.raises(ck.CheckpointError, match=unknown):
        ck.load(odd)
    save_file({"weight": np.zeros(3, np.float32)}, str(odd))
    with pytest.raises(ck.CheckpointError, match="not a timm Vision Transformer"):
        ck.load(odd)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="not a readable safetensors file"):
        ck.load(path)
