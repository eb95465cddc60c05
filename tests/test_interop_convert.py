"""The published PyTorch weights in and out (matpac_jax/interop/convert.py, interop/torch_layout.py, interop/convert_state.py).

State dicts are built here in the reference's layout with random numpy values and checked against
an independent numpy float64 forward written from the reference's code (timm pre-norm blocks with
a qkv bias, exact GELU, LayerNorm eps 1e-6, conv patch embedding, MAE sin-cos table, the decoder's
unshuffle and re-shuffle, weight-normed cls heads). torch is never needed: `.pt` goes through a
stand-in module with torch's few calls used here.
"""

import functools
import json
import pickle
import sys
import types

import numpy as np
import pytest
from numerics import assert_close, encoder_depth
from scipy.special import erf

from matpac_jax import cli
from matpac_jax.audio import frontend as audio
from matpac_jax.interop import convert, convert_state
from matpac_jax.interop import torch_layout as tl
from matpac_jax.objective import masking

W, DEPTH, HEADS, GRID = 32, 2, 2, (5, 4)  # n_mels 80, 64-frame positional table
MEAN, STD = -7.056, 4.193


# ---------------------------------------------------------------- reference-layout state dicts


def mae_posemb(dim, gh, gw):
    """The reference's get_2d_sincos_pos_embed (MAE), cls row first: (1, 1 + gh * gw, dim)."""
    grid = np.stack(np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32)))
    grid = grid.reshape(2, 1, gh, gw)

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one(dim // 2, grid[0]), one(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb]).astype(np.float32)[None]


def _linear(rng, sd, name, d_out, d_in):
    sd[f"{name}.weight"] = rng.normal(size=(d_out, d_in)) / np.sqrt(d_in)
    sd[f"{name}.bias"] = 0.1 * rng.normal(size=d_out)


def _norm(rng, sd, name, width):
    sd[f"{name}.weight"] = 1 + 0.1 * rng.normal(size=width)
    sd[f"{name}.bias"] = 0.1 * rng.normal(size=width)


def _stack(rng, sd, pre, depth, w, blocks="blocks", norm="norm"):
    for i in range(depth):
        b = f"{pre}{blocks}.{i}."
        _norm(rng, sd, f"{b}norm1", w)
        _norm(rng, sd, f"{b}norm2", w)
        for name, d_out, d_in in (("qkv", 3 * w, w), ("proj", w, w)):
            _linear(rng, sd, f"{b}attn.{name}", d_out, d_in)
        _linear(rng, sd, f"{b}mlp.fc1", 4 * w, w)
        _linear(rng, sd, f"{b}mlp.fc2", w, 4 * w)
    _norm(rng, sd, f"{pre}{norm}", w)


def _cls_head(rng, sd, pre, w, hidden, bottleneck, out):
    for i, (d_out, d_in) in zip((0, 2, 4), ((hidden, w), (hidden, hidden), (bottleneck, hidden))):
        _linear(rng, sd, f"{pre}mlp.{i}", d_out, d_in)
    sd[f"{pre}last_layer.weight_g"] = 1 + 0.1 * rng.normal(size=(out, 1))
    sd[f"{pre}last_layer.weight_v"] = rng.normal(size=(out, bottleneck)) / np.sqrt(bottleneck)


def encoder_sd(seed=0, prefix="student_encoder."):
    rng = np.random.default_rng(seed)
    sd = {
        "patch_embed.proj.weight": rng.normal(size=(W, 1, 16, 16)) / 16,
        "patch_embed.proj.bias": 0.1 * rng.normal(size=W),
        "cls_token": 0.02 * rng.normal(size=(1, 1, W)),
        "pos_embed": mae_posemb(W, *GRID),
    }
    _stack(rng, sd, prefix, DEPTH, W)
    return {k: np.asarray(v, np.float32) for k, v in sd.items()}


CLS = (64, 32, 64)  # hidden, bottleneck, classes (the runlocal config's)
PRED_W, PRED_DEPTH, PRED_HEADS = 32, 1, 2  # variant mu's predictor


def training_sd(seed=1, heads=3, step=7):
    """A reference training checkpoint's "model" dict, EMA copies flattened as fairseq's."""
    rng = np.random.default_rng(seed)
    sd = encoder_sd(seed)
    _linear(rng, sd, "decoder.decoder_embed", PRED_W, W)
    sd["decoder.mask_token"] = 0.02 * rng.normal(size=(1, 1, PRED_W))
    sd["decoder.decoder_pos_embed"] = mae_posemb(PRED_W, *GRID)
    _stack(rng, sd, "decoder.", PRED_DEPTH, PRED_W, "decoder_blocks", "decoder_norm")
    _linear(rng, sd, "decoder.decoder_pred", W, PRED_W)  # unused with MCL heads
    for k in range(heads):
        _linear(rng, sd, f"mcl_heads.mcl_heads.{k}", W, PRED_W)
    sd["cls_head_loss.center"] = 0.01 * rng.random(size=(1, 1, CLS[2]))
    _cls_head(rng, sd, "cls_student_head.", W, *CLS)
    _stack(rng, sd, "_ema.", DEPTH, W)
    _cls_head(rng, sd, "_cls_head_ema.", W, *CLS)
    sd["num_updates"] = np.int64(step)
    return {k: np.asarray(v, np.float32 if np.ndim(v) else np.int64) for k, v in sd.items()}


# ---------------------------------------------------------------- the numpy float64 forward


def np_ln(x, sd, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def np_lin(x, sd, name):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def np_gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def np_block(x, sd, pre, heads):
    b, n, d = x.shape
    qkv = np_lin(np_ln(x, sd, f"{pre}norm1"), sd, f"{pre}attn.qkv")
    q, k, v = qkv.reshape(b, n, 3, heads, d // heads).transpose(2, 0, 3, 1, 4)
    att = np_softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads))
    x = x + np_lin((att @ v).transpose(0, 2, 1, 3).reshape(b, n, d), sd, f"{pre}attn.proj")
    h = np_gelu(np_lin(np_ln(x, sd, f"{pre}norm2"), sd, f"{pre}mlp.fc1"))
    return x + np_lin(h, sd, f"{pre}mlp.fc2")


def np_stack(x, sd, pre, depth, heads, blocks="blocks", norm="norm"):
    layers = []
    for i in range(depth):
        x = np_block(x, sd, f"{pre}{blocks}.{i}.", heads)
        layers.append(x)
    layers[-1] = x = np_ln(x, sd, f"{pre}{norm}")
    return x, layers


def np_tokens(mel, sd):
    """Conv patch embedding, flattened (B, D, Fg, Tg) -> (B, Fg * Tg, D), + the cut table."""
    w = sd["patch_embed.proj.weight"][:, 0]
    b, f, t = mel.shape
    patches = mel.reshape(b, f // 16, 16, t // 16, 16)
    out = np.einsum("bfitj,dij->bdft", patches, w) + sd["patch_embed.proj.bias"][:, None, None]
    pos = sd["pos_embed"][:, 1:].reshape(1, f // 16, -1, W)[:, :, : t // 16].reshape(1, -1, W)
    return out.reshape(b, W, -1).transpose(0, 2, 1) + pos


def np_with_cls(x, sd):
    cls = np.broadcast_to(sd["cls_token"] + sd["pos_embed"][:, :1], (x.shape[0], 1, W))
    return np.concatenate([cls, x], axis=1)


def sd64(sd):
    return {k: np.asarray(v, np.float64) for k, v in sd.items()}


# ---------------------------------------------------------------- helpers


def _run(argv, capsys):
    code = cli.run(convert.main, argv, prog=convert.PROG)
    out = capsys.readouterr()
    return code, out.out, out.err


def _npz(path, sd):
    np.savez(path, **sd)
    return str(path)


def _wave(frames, seed=0):
    rng = np.random.default_rng(seed)
    return (0.1 * rng.normal(size=400 + (frames - 1) * 160)).astype(np.float32)


# ---------------------------------------------------------------- encoder


@pytest.mark.parametrize("prefix", ["student_encoder.", ""])
def test_every_layer_and_the_clip_embedding_match_numpy_float64(tmp_path, capsys, prefix):
    from matpac_jax.inference.encoder import Encoder

    sd = encoder_sd(prefix=prefix)
    code, out, err = _run(
        ["from-torch", _npz(tmp_path / "w.npz", sd), "--out", str(tmp_path / "e")], capsys
    )
    assert code == 0, err
    assert "ViT 32 x 2 (2 heads), 64-frame positions" in out and err == ""
    wave = _wave(150)  # 150 frames -> 160: chunks of 64, 64 and a short 32
    got = Encoder.load(str(tmp_path / "e")).embed(wave, 16_000, layers=True, timestamps=True)
    mel = (audio.log_mel(wave).astype(np.float64) - MEAN) / STD
    mel = np.pad(mel, ((0, 0), (0, 10)))
    ref = sd64(encoder_sd())
    parts = []
    for start in range(0, 160, 64):
        _, layers = np_stack(
            np_with_cls(np_tokens(mel[None, :, start : start + 64], ref), ref),
            ref,
            "student_encoder.",
            DEPTH,
            HEADS,
        )
        z = np.stack([x[0, 1:] for x in layers])  # (L, N, D): 'b n (f t) d -> b n t (f d)'
        parts.append(z.reshape(DEPTH, 5, -1, W).transpose(0, 2, 1, 3).reshape(DEPTH, -1, 5 * W))
    want = np.concatenate(parts, axis=1)
    assert got.steps.shape == want.shape == (DEPTH, 10, 160)
    for layer in range(DEPTH):
        err_rel = np.abs(got.steps[layer] - want[layer]).max() / np.abs(want[layer]).max()
        assert err_rel < 1e-4, (layer, err_rel)
    clip = want.mean(axis=1)
    assert np.abs(got.clip - clip).max() / np.abs(clip).max() < 1e-4


def test_import_export_import_is_exact(tmp_path, capsys):
    sd = encoder_sd()
    src = _npz(tmp_path / "w.npz", sd)
    assert _run(["from-torch", src, "--out", str(tmp_path / "e1")], capsys)[0] == 0
    for suffix in (".safetensors", ".npz"):
        out = str(tmp_path / f"back{suffix}")
        code, _, err = _run(["to-torch", str(tmp_path / "e1"), "--out", out], capsys)
        assert code == 0, err
        back, _ = convert.read_weights(out)
        assert sorted(back) == sorted(sd)
        for key in sd:
            np.testing.assert_array_equal(back[key], sd[key], err_msg=key)  # pos_embed too
    assert _run(["from-torch", out, "--out", str(tmp_path / "e2")], capsys)[0] == 0
    from matpac_jax.inference import export

    (p1, c1), (p2, c2) = (export.load_export(str(tmp_path / e)) for e in ("e1", "e2"))
    assert c1["model"] == c2["model"] and c1["format_version"] == export.FORMAT_VERSION
    flat1, flat2 = tl.flatten(convert.jax_free(p1)), tl.flatten(convert.jax_free(p2))
    assert flat1.keys() == flat2.keys()
    for key in flat1:
        np.testing.assert_array_equal(flat1[key], flat2[key])


class _FakeTensor:
    """torch.Tensor's calls that interop/convert.py makes, over a numpy array."""

    def __init__(self, a):
        self.a = np.asarray(a)

    def detach(self):
        return self

    def cpu(self):
        return self

    def is_floating_point(self):
        return self.a.dtype.kind == "f"

    def float(self):
        return _FakeTensor(self.a.astype(np.float32))

    def numpy(self):
        return self.a


def _fake_torch():
    def save(obj, path):
        with open(path, "wb") as f:
            pickle.dump(obj, f)

    def load(path, map_location=None, weights_only=True):
        with open(path, "rb") as f:
            return pickle.load(f)

    return types.SimpleNamespace(save=save, load=load, from_numpy=_FakeTensor)


def test_pt_files_need_torch_and_go_through_it(tmp_path, capsys, monkeypatch):
    sd = encoder_sd()
    monkeypatch.setitem(sys.modules, "torch", None)  # torch absent
    pt = tmp_path / "w.pt"
    pt.write_bytes(b"")
    code, _, err = _run(["from-torch", str(pt), "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and "pip install .[torch]" in err and len(err.strip().splitlines()) == 1
    src = _npz(tmp_path / "w.npz", sd)
    assert _run(["from-torch", src, "--out", str(tmp_path / "e")], capsys)[0] == 0
    code, out, _ = _run(["to-torch", str(tmp_path / "e"), "--out", str(tmp_path / "x")], capsys)
    assert code == 0 and (tmp_path / "x.safetensors").exists()  # no suffix, no torch
    assert "x.safetensors (reference layout" in out

    monkeypatch.setitem(sys.modules, "torch", _fake_torch())
    fairseq = {"model": {k: _FakeTensor(v) for k, v in sd.items()}, "args": None}
    _fake_torch().save(fairseq, str(pt))  # the state dict under "model"
    assert _run(["from-torch", str(pt), "--out", str(tmp_path / "e2")], capsys)[0] == 0
    assert _run(["to-torch", str(tmp_path / "e2"), "--out", str(tmp_path / "y")], capsys)[0] == 0
    back, _ = convert.read_weights(str(tmp_path / "y.pt"))
    for key in sd:
        np.testing.assert_array_equal(back[key], sd[key])


def test_shape_mismatch_unused_keys_and_pos_embed_are_reported(tmp_path, capsys):
    sd = encoder_sd()
    bad = {**sd, "student_encoder.blocks.1.mlp.fc2.weight": np.zeros((W, 3 * W), np.float32)}
    code, _, err = _run(
        ["from-torch", _npz(tmp_path / "b.npz", bad), "--out", str(tmp_path / "b")], capsys
    )
    assert code == 2
    assert (
        "student_encoder.blocks.1.mlp.fc2.weight has shape (32, 96), the model needs (32, 128)"
        in err
    )
    extra = {
        **sd,
        "decoder.a": sd["cls_token"],
        "decoder.b": sd["cls_token"],
        "foo": sd["cls_token"],
    }
    extra["pos_embed"] = sd["pos_embed"] + 0.5
    code, _, err = _run(
        ["from-torch", _npz(tmp_path / "x.npz", extra), "--out", str(tmp_path / "x")], capsys
    )
    assert code == 0
    assert "3 keys not used: decoder.* (2), foo" in err
    assert "pos_embed differs from this project's fixed sin-cos table by up to 0.5" in err
    del sd["cls_token"]
    code, _, err = _run(
        ["from-torch", _npz(tmp_path / "m.npz", sd), "--out", str(tmp_path / "m")], capsys
    )
    assert code == 2 and "missing key cls_token" in err


# ---------------------------------------------------------------- heads


def test_audioset_head_and_probe_give_the_reference_probabilities(tmp_path, capsys):
    from matpac_jax.inference import classifier
    from matpac_jax.inference.encoder import Encoder

    rng = np.random.default_rng(5)
    sd = encoder_sd()
    as_sd = {
        **sd,
        "head_norm.running_mean": 0.1 * rng.normal(size=W),
        "head_norm.running_var": 0.5 + rng.random(size=W),
        "head_norm.num_batches_tracked": np.int64(10),
        "head.weight": rng.normal(size=(527, W)),
        "head.bias": 0.1 * rng.normal(size=527),
    }
    as_sd = {k: np.asarray(v, np.float32) if np.ndim(v) else v for k, v in as_sd.items()}
    code, out, err = _run(
        ["from-torch", _npz(tmp_path / "as.npz", as_sd), "--out", str(tmp_path / "as")], capsys
    )
    assert code == 0 and err == "" and "audioset head, 527 classes" in out
    wave = _wave(100, seed=3)
    enc = Encoder.load(str(tmp_path / "as"))
    clip = enc.embed(wave, 16_000).astype(np.float64)
    x = clip.reshape(5, W).mean(0)  # the reference's concat_freq=False: mean over the bands
    x = (x - as_sd["head_norm.running_mean"]) / np.sqrt(as_sd["head_norm.running_var"] + 1e-5)
    want = np_softmax(x @ as_sd["head.weight"].T.astype(np.float64) + as_sd["head.bias"])
    pred = enc.classify(wave, 16_000, top_k=3)
    assert_close(pred.probs, want, depth=4)  # normalisation, product, softmax: float32
    names = classifier.audioset_labels()
    assert len(names) == 527 and pred.labels == names
    assert names[0] == "Firecracker"  # /g/122z_qxw: the reference orders classes by mid
    assert [label for label, _ in pred.top] == [names[i] for i in np.argsort(-want)[:3]]

    probe = {"probe.weight": rng.normal(size=(3, 5 * W)), "probe.bias": rng.normal(size=3)}
    (tmp_path / "labels.json").write_text(json.dumps({"dog": 1, "rain": 0, "siren": 2}))
    argv = ["from-torch", _npz(tmp_path / "w.npz", sd), "--probe", _npz(tmp_path / "p.npz", probe)]
    argv += ["--labels", str(tmp_path / "labels.json"), "--out", str(tmp_path / "probe")]
    assert _run(argv, capsys)[0] == 0
    pred = Encoder.load(str(tmp_path / "probe")).classify([wave, wave[:20_000]], 16_000, top_k=1)
    want = np_softmax(clip @ probe["probe.weight"].T + probe["probe.bias"])
    # Embedded in a batch of two against alone: two programs, then the head in float32.
    assert_close(pred.probs[0], want, depth=encoder_depth(2) + 3)
    assert pred.labels == ["rain", "dog", "siren"] and pred.probs.shape == (2, 3)
    with pytest.raises(ValueError, match="no classification head"):
        Encoder.load("random:mu").classify(wave, 16_000)


# ---------------------------------------------------------------- full training state


def np_reference_loss(sd, x, ids_shuffle, len_keep, step):
    """The reference's forward_cls_pred loss (0.5 pred + 0.5 cls), float64."""
    sd = sd64(sd)
    b = x.shape[0]
    tokens = np_tokens(x, sd)
    take = lambda a, idx: np.take_along_axis(a, idx[..., None], axis=1)
    ids_restore = np.argsort(ids_shuffle, axis=1)
    z_v, _ = np_stack(
        np_with_cls(take(tokens, ids_shuffle[:, :len_keep]), sd),
        sd,
        "student_encoder.",
        DEPTH,
        HEADS,
    )
    h = np_lin(z_v, sd, "decoder.decoder_embed")
    mask = np.repeat(sd["decoder.mask_token"], b, 0).repeat(tokens.shape[1] - len_keep, 1)
    h = np.concatenate([h[:, :1], take(np.concatenate([h[:, 1:], mask], 1), ids_restore)], 1)
    h, _ = np_stack(
        h + sd["decoder.decoder_pos_embed"],
        sd,
        "decoder.",
        PRED_DEPTH,
        PRED_HEADS,
        "decoder_blocks",
        "decoder_norm",
    )
    y = take(h[:, 1:], np.argsort(ids_restore, axis=1))[:, len_keep:]
    z_hat = np.stack([np_lin(y, sd, f"mcl_heads.mcl_heads.{k}") for k in range(3)], axis=2)
    z_m, _ = np_stack(
        np_with_cls(take(tokens, ids_shuffle[:, len_keep:]), sd), sd, "_ema.", DEPTH, HEADS
    )
    z_m = z_m[:, 1:]
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    d = 2 - 2 * (unit(z_m)[:, :, None] * unit(z_hat)).sum(-1)
    temp = 0.5 * 0.9**step  # conftest.tiny_step_parts: t0 0.5, decay 0.9
    pred = (np_softmax(-d / temp) * d).sum(-1) if temp > 1e-4 else d.min(-1)
    winner = np.take_along_axis(z_hat, d.argmin(-1)[..., None, None], axis=2)[:, :, 0]

    def head(z, pre):
        for i in (0, 2, 4):
            z = np_lin(z, sd, f"{pre}mlp.{i}")
            z = np_gelu(z) if i < 4 else z
        v, g = sd[f"{pre}last_layer.weight_v"], sd[f"{pre}last_layer.weight_g"]
        return unit(z) @ (g * v / np.linalg.norm(v, axis=1, keepdims=True)).T

    tau = 0.04 + 0.03 * min(step / 20, 1.0)
    q = np_softmax((head(z_m, "_cls_head_ema.") - sd["cls_head_loss.center"]) / tau)
    cls = -(q * np.log(np_softmax(head(winner, "cls_student_head.") / 0.1))).sum(-1)
    return 0.5 * pred.mean() + 0.5 * cls.mean()


def test_converted_train_state_gives_the_reference_loss():
    import jax
    import jax.numpy as jnp
    from conftest import tiny_step_parts

    from matpac_jax.train import step as train_step

    sd = training_sd(step=7)
    state, cfg, report = convert_state.import_train_state(sd, {})
    assert int(state["step"]) == 7 and cfg.num_mcl_heads == 3 and not report["moments"]
    assert report["unused"] == [] and report["pos_embed"] == report["decoder_pos_embed"] == 0.0
    step_cfg, sched = tiny_step_parts()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 80, 64)).astype(np.float32)
    ids = np.stack([rng.permutation(20) for _ in range(4)]).astype(np.int32)
    keep = masking.num_visible(20, 0.7)
    mask = masking.Mask(jnp.asarray(ids[:, :keep]), jnp.asarray(ids[:, keep:]))
    loss_of = jax.jit(
        functools.partial(train_step.step_loss, model_cfg=cfg, step_cfg=step_cfg, sched=sched)
    )
    for step in (7, 200):  # soft, then hard winner-takes-all
        loss, _ = loss_of(
            state["params"], state["teacher"], state["center"], step, jnp.asarray(x), mask
        )
        want = np_reference_loss(sd, x.astype(np.float64), ids, keep, step)
        assert_close(loss, want, depth=encoder_depth(2 + 2 + 1))  # float32 forward vs float64


def test_moments_in_both_torch_forms_land_on_their_parameters():
    sd = {
        "cls_token": np.zeros((1, 1, 2)),
        "pos_embed": np.zeros((1, 3, 2)),
        "a.weight": np.zeros((3, 2)),
    }
    names = convert_state.trainable_names(list(sd))
    assert names == ["cls_token", "a.weight"]
    flat = np.arange(8, dtype=np.float32)
    got = convert_state.moments_from_torch(
        sd, {"state": {0: {"exp_avg": flat, "exp_avg_sq": 2 * flat, "step": 5}}}
    )
    np.testing.assert_array_equal(got["exp_avg"]["a.weight"], flat[2:].reshape(3, 2))
    assert got["step"] == 5
    per = {
        "state": {
            i: {"exp_avg": np.ones(np.shape(sd[n])), "exp_avg_sq": np.ones(np.shape(sd[n]))}
            for i, n in enumerate(names)
        }
    }
    assert convert_state.moments_from_torch(sd, per)["exp_avg"]["cls_token"].shape == (1, 1, 2)
    with pytest.raises(ValueError, match="3 optimiser states for 2"):
        convert_state.moments_from_torch(sd, {"state": {i: per["state"][0] for i in range(3)}})


@pytest.mark.slow
def test_the_trainer_continues_a_converted_checkpoint(tmp_path, capsys):
    from conftest import write_mel_dataset

    from matpac_jax import config_lib
    from matpac_jax.train import trainer as train

    sd = training_sd(heads=5, step=3)
    for name in convert_state.trainable_names(
        list(sd)
    ):  # Adam's moments, as a flat file holds them
        sd[f"optimizer.exp_avg.{name}"] = np.full_like(sd[name], 1e-3)
        sd[f"optimizer.exp_avg_sq.{name}"] = np.full_like(sd[name], 1e-6)
    workdir = tmp_path / "run"
    argv = ["from-torch", _npz(tmp_path / "ckpt.npz", sd), "--train_state", "--out", str(workdir)]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "step 3, K = 5 heads" in out and "--config=configs/matpac_pp.py:variant=mu" in out
    assert "fresh" not in out  # the moments came along
    flags = json.loads((workdir / "converted.json").read_text())["trainer_flags"]
    rng = np.random.default_rng(0)
    mels = [rng.normal(size=(80, 80)).astype(np.float16) for _ in range(16)]
    write_mel_dataset(str(tmp_path / "mels"), mels)
    config = config_lib.pretraining_config(variant="mu", runlocal=True, num_mcl_heads=5, mcl=True)
    for flag in flags[1:]:
        key, value = flag.removeprefix("--config.").split("=")
        section, name = key.split(".")
        config[section][name] = int(value)
    config.data.dir, config.total_steps, config.batch_size = str(tmp_path / "mels"), 5, 8
    config.log_every = 1
    result = train.train(config, str(workdir))
    assert result.exported and np.isfinite(result.metrics["loss"])
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 5]  # continued from step 3
