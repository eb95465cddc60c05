"""Tests for matpac_jax/models: numerics against float64 numpy, alignment, init, teacher, grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numerics import assert_close, assert_trees_close, encoder_depth
from scipy.special import erf

from matpac_jax.models import (
    Block,
    ClsHead,
    MclHeads,
    Teacher,
    WeightNormLinear,
    build,
    decode_variant,
    forward,
    model_config,
    patchify,
    posemb_sincos_2d,
)

# Tiny model: F = 32 mel bins, T = 64 frames -> grid (2, 4), N = 8 tokens.
TINY = {"variant": "mu", "n_mels": 32, "max_frames": 64}
GRID = (2, 4)
TINY_DEPTH, TINY_PRED_DEPTH = 2, 1  # blocks of the "mu" encoder and predictor
N = GRID[0] * GRID[1]


def f64(a):
    return np.asarray(a, np.float64)


# Modules are pytrees: one compiled forward serves every test with the same shapes and config.
jit_forward = jax.jit(forward)
jit_encode = jax.jit(lambda student, tokens, idx: student.encode(tokens, idx)[0])


def _perturb(module, seed, scale=0.1):
    """Adds noise to every parameter so LN scale/bias and biases are not at their 1/0 init."""
    rng = np.random.default_rng(seed)
    state = nnx.state(module, nnx.Param)
    nnx.update(
        module,
        jax.tree.map(lambda a: a + jnp.asarray(scale * rng.normal(size=a.shape), a.dtype), state),
    )


def _identity_blocks(stack):
    """Zeroes every residual branch's output projection: the blocks become the identity."""
    for block in stack.blocks:
        for lin in (block.attn.proj, block.mlp.fc2):
            lin.kernel[...] = jnp.zeros_like(lin.kernel[...])
            lin.bias[...] = jnp.zeros_like(lin.bias[...])


def _masks(seed, batch=2, n=N, n_visible=3):
    rng = np.random.default_rng(seed)
    perm = jnp.asarray(np.stack([rng.permutation(n) for _ in range(batch)]), jnp.int32)
    return perm[:, :n_visible], perm[:, n_visible:]


def _x(seed, batch=2, frames=64):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, 32, frames)), jnp.float32)


# ---------------------------------------------------------------- numpy references


def np_layer_norm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def np_gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_linear(x, lin):
    return x @ f64(lin.kernel[...]) + f64(lin.bias[...])


def np_block(x, block, num_heads):
    b, n, d = x.shape
    dh = d // num_heads
    h = np_layer_norm(x, f64(block.norm1.scale[...]), f64(block.norm1.bias[...]))
    qkv = np_linear(h, block.attn.qkv).reshape(b, n, 3, num_heads, dh).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv  # each (B, H, N, dh)
    att = np_softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)) @ v
    x = x + np_linear(att.transpose(0, 2, 1, 3).reshape(b, n, d), block.attn.proj)
    h = np_layer_norm(x, f64(block.norm2.scale[...]), f64(block.norm2.bias[...]))
    return x + np_linear(np_gelu(np_linear(h, block.mlp.fc1)), block.mlp.fc2)


def np_patchify(x, p=16):
    """Explicit loop: token f * Tg + t holds x[f*p:(f+1)*p, t*p:(t+1)*p] row-major."""
    b, f, t = x.shape
    out = np.zeros((b, (f // p) * (t // p), p * p))
    for i in range(b):
        for fi in range(f // p):
            for ti in range(t // p):
                out[i, fi * (t // p) + ti] = x[
                    i, fi * p : (fi + 1) * p, ti * p : (ti + 1) * p
                ].reshape(-1)
    return out


def np_tokens(student, x):
    """Patch embedding as the reference's conv (explicit sum over the 16x16 window) + positions."""
    kernel, bias = (
        f64(student.patch_embed.proj.kernel[...]),
        f64(student.patch_embed.proj.bias[...]),
    )
    conv_w = kernel.T.reshape(-1, 16, 16)  # (D, 16, 16) as a (D, 1, 16, 16) conv weight
    x = f64(x)
    b, f, t = x.shape
    out = np.zeros((b, (f // 16) * (t // 16), kernel.shape[1]))
    for fi in range(f // 16):
        for ti in range(t // 16):
            window = x[:, fi * 16 : (fi + 1) * 16, ti * 16 : (ti + 1) * 16]
            out[:, fi * (t // 16) + ti] = np.einsum("bij,dij->bd", window, conv_w) + bias
    return out + f64(posemb_sincos_2d(f // 16, t // 16, kernel.shape[1])[1:])


# ---------------------------------------------------------------- patches and blocks


def test_patchify_matches_explicit_loop():
    x = np.random.default_rng(0).normal(size=(2, 48, 80)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(patchify(jnp.asarray(x), 16)), np_patchify(x))
    with pytest.raises(ValueError, match="multiple"):
        patchify(jnp.zeros((1, 40, 64)), 16)


def test_embed_matches_conv_loop_and_cut_table():
    student, _ = build(TINY, nnx.Rngs(0))
    _perturb(student.patch_embed, 1)
    x = _x(2)
    tokens = student.embed(x)
    assert_close(tokens, np_tokens(student, x), depth=2)
    # A shorter input uses the table cut along time: its tokens are the first time columns.
    short = student.embed(x[:, :, :32]).reshape(2, 2, 2, -1)
    assert_close(short, tokens.reshape(2, 2, 4, -1)[:, :, :2], depth=2)


@pytest.mark.parametrize("attention_impl", [None, "xla"])
def test_block_matches_float64_numpy(attention_impl):
    # None: the einsum attention of models/vit.py; "xla": jax.nn.dot_product_attention.
    block = Block(32, 4, 4.0, attention_impl=attention_impl, rngs=nnx.Rngs(0))
    _perturb(block, 1)
    x = np.random.default_rng(2).normal(size=(2, 7, 32)).astype(np.float32)
    got = block(jnp.asarray(x))
    assert_close(got, np_block(f64(x), block, 4), depth=encoder_depth(1))  # float32 vs float64


def test_attention_gradients_match_dot_product_attention():
    # The einsum attention's backward against jax.nn.dot_product_attention's, on the same
    # parameters and a distinct cotangent per output: two programs, so a float32 tolerance.
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 7, 32)), jnp.float32)
    r = jnp.asarray(np.random.default_rng(3).normal(size=(3, 7, 32)), jnp.float32)
    grads = {}
    for impl in (None, "xla"):
        block = Block(32, 4, 4.0, attention_impl=impl, rngs=nnx.Rngs(0))
        _perturb(block, 1)
        graph, params = nnx.split(block)
        loss = lambda p, x, graph=graph: jnp.sum(nnx.merge(graph, p)(x) * r)
        grads[impl] = jax.grad(loss, argnums=(0, 1))(params, x)
    assert_trees_close(grads[None], grads["xla"], depth=2 * encoder_depth(1))  # forward, backward


def test_encoder_is_permutation_equivariant_over_visible_idx():
    student, _ = build(TINY, nnx.Rngs(0))
    tokens = student.embed(_x(1))
    visible, _ = _masks(3, n_visible=5)
    z = jit_encode(student, tokens, visible)
    perm = np.array([3, 0, 4, 1, 2])
    z_perm = jit_encode(student, tokens, visible[:, perm])
    # Another order of the same tokens is another order of every sum: equal up to rounding.
    depth = encoder_depth(TINY_DEPTH)
    assert_close(z_perm[:, 0], z[:, 0], depth=depth)  # cls row
    assert_close(z_perm[:, 1:], z[:, 1:][:, perm], depth=depth)
    # All tokens in grid order == no index (inference path): two programs.
    all_idx = jnp.broadcast_to(jnp.arange(N), (2, N))
    assert_close(
        jit_encode(student, tokens, all_idx), jit_encode(student, tokens, None), depth=depth
    )


def test_features_return_layers():
    student, _ = build(TINY, nnx.Rngs(0))
    z, aux = jax.jit(lambda s, x: s.features(x, return_layers=True))(student, _x(1))
    assert z.shape == (2, 1 + N, 32) and len(aux["layers"]) == 2
    np.testing.assert_array_equal(aux["layers"][-1], z)  # last layer is after the final LN


# ---------------------------------------------------------------- alignment


def test_forward_rows_refer_to_masked_patches():
    """With identity blocks, every output row is a known function of ITS patch, checked in numpy."""
    student, teacher = build(TINY, nnx.Rngs(0))
    for stack in (student.student, student.predictor.body, teacher.encoder):
        _identity_blocks(stack)
    _perturb(student.mcl_heads, 4)
    x = _x(5)
    visible, masked = _masks(6)
    z_hat, z_m, aux = jit_forward(student, teacher, x, visible, masked)
    tokens = np_tokens(student, x)
    ln = lambda a: np_layer_norm(a, 1.0, 0.0)
    b_idx = np.arange(2)[:, None]
    # Teacher: z_m[b, j] = LN(token of patch masked[b, j]).
    assert_close(z_m, ln(tokens[b_idx, np.asarray(masked)]), depth=4)
    # Predictor: masked slots hold the mask token + that slot's position; visible ones the embedded
    # student output + position.
    pred = student.predictor
    pos = f64(posemb_sincos_2d(*GRID, 32))
    grid_in = np.broadcast_to(f64(pred.mask_token[...])[0] + pos[1:], (2, N, 32)).copy()
    grid_in[b_idx, np.asarray(visible)] = (
        np_linear(f64(aux["z_v"]), pred.embed)[:, 1:] + pos[1 + np.asarray(visible)]
    )
    y = ln(grid_in)[b_idx, np.asarray(masked)]  # (B, Nm, Dp)
    heads = student.mcl_heads
    want = np.einsum("bnp,kpd->bnkd", y, f64(heads.kernel[...])) + f64(heads.bias[...])
    assert_close(z_hat, want, depth=6)


def test_permuting_masked_idx_permutes_predictions_and_targets_alike():
    student, teacher = build(TINY, nnx.Rngs(0))
    x = _x(7)
    visible, masked = _masks(8)
    z_hat, z_m, _ = jit_forward(student, teacher, x, visible, masked)
    perm = np.array([4, 2, 0, 1, 3])
    z_hat_p, z_m_p, _ = jit_forward(student, teacher, x, visible, masked[:, perm])
    depth = encoder_depth(TINY_DEPTH + TINY_PRED_DEPTH) + 1  # encoder, predictor, heads
    assert_close(z_hat_p, z_hat[:, perm], depth=depth)
    assert_close(z_m_p, z_m[:, perm], depth=depth)
    # The order of the visible tokens does not matter to the predictions either.
    z_hat_v, _, _ = jit_forward(student, teacher, x, visible[:, ::-1], masked)
    assert_close(z_hat_v, z_hat, depth=depth)
    assert z_hat.shape == (2, 5, 5, 32) and z_m.shape == (2, 5, 32)


# ---------------------------------------------------------------- heads


def test_weight_norm_rows_have_norm_g_and_g_trains():
    layer = WeightNormLinear(16, 24, rngs=nnx.Rngs(0))
    g = jax.random.uniform(jax.random.key(1), (24,), minval=0.5, maxval=2.0)
    layer.g[...] = g
    np.testing.assert_allclose(jnp.linalg.norm(layer.weight(), axis=0), g, rtol=1e-6)
    assert "g" in nnx.state(layer, nnx.Param)  # trainable by default (quirk)
    frozen = WeightNormLinear(16, 24, trainable_gain=False, rngs=nnx.Rngs(0))
    assert "g" not in nnx.state(frozen)
    np.testing.assert_allclose(jnp.linalg.norm(frozen.weight(), axis=0), 1.0, rtol=1e-6)


def test_cls_head_matches_float64_numpy():
    head = ClsHead(32, 48, 16, 40, rngs=nnx.Rngs(0))
    _perturb(head, 1)
    z = np.random.default_rng(2).normal(size=(2, 5, 32))
    h = f64(z)
    for i, lin in enumerate(head.mlp):
        h = np_linear(h, lin)
        h = np_gelu(h) if i < 2 else h
    h = h / np.maximum(np.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
    v, g = f64(head.last_layer.v[...]), f64(head.last_layer.g[...])
    want = h @ (v / np.linalg.norm(v, axis=0) * g)
    assert_close(head(jnp.asarray(z, jnp.float32)), want, depth=6)


def test_mcl_heads_are_independent_linears():
    heads = MclHeads(16, 24, 3, rngs=nnx.Rngs(0))
    _perturb(heads, 1)
    y = np.random.default_rng(2).normal(size=(2, 5, 16)).astype(np.float32)
    got = heads(jnp.asarray(y))
    for k in range(3):
        want = f64(y) @ f64(heads.kernel[k]) + f64(heads.bias[k])
        assert_close(got[:, :, k], want, depth=2)


# ---------------------------------------------------------------- init


def test_init_statistics():
    cfg = dict(
        TINY,
        width=384,
        depth=1,
        num_heads=6,
        pred_width=256,
        pred_depth=1,
        pred_num_heads=4,
        num_mcl_heads=2,
    )
    student, _ = build(cfg, nnx.Rngs(0))
    linears = [m for _, m in nnx.iter_modules(student) if isinstance(m, nnx.Linear)]
    assert len(linears) == 1 + 4 + 1 + 4 + 3  # patch, block, predictor embed, block, cls MLP
    for lin in linears:
        w = np.asarray(lin.kernel[...])
        bound = np.sqrt(6.0 / sum(w.shape))
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
        assert abs(w.std() / (bound / np.sqrt(3)) - 1) < 0.1  # uniform(-b, b) has std b / sqrt(3)
        if lin is not student.patch_embed.proj:  # its bias: below
            np.testing.assert_array_equal(lin.bias[...], 0.0)
    for _, m in nnx.iter_modules(student):
        if isinstance(m, nnx.LayerNorm):
            np.testing.assert_array_equal(m.scale[...], 1.0)
            np.testing.assert_array_equal(m.bias[...], 0.0)
    bound = np.sqrt(6.0 / (256 + 384))
    assert np.abs(student.patch_embed.proj.kernel[...]).max() <= np.sqrt(6.0 / (256 + 384))
    heads = np.asarray(student.mcl_heads.kernel[...])
    for k in range(2):  # each head like its own Linear 256 -> 384
        assert np.abs(heads[k]).max() <= bound and np.abs(heads[k]).max() > 0.95 * bound
    np.testing.assert_array_equal(student.mcl_heads.bias[...], 0.0)
    v = np.asarray(student.cls_head.last_layer.v[...])
    assert np.abs(v).max() <= 1 / np.sqrt(v.shape[0])  # torch's default Linear init
    np.testing.assert_array_equal(student.cls_head.last_layer.g[...], 1.0)
    for token in (student.cls_token[...], student.predictor.mask_token[...]):
        assert abs(np.std(token) / 0.02 - 1) < 0.2 and abs(np.mean(token)) < 0.005
    # quirk: the patch bias keeps PyTorch's Conv2d default U(+-1/sqrt(256)) = U(+-1/16).
    bias = np.asarray(student.patch_embed.proj.bias[...])
    assert np.abs(bias).max() <= 1 / 16 and np.abs(bias).max() > 0.9 / 16
    assert abs(bias.std() / (1 / 16 / np.sqrt(3)) - 1) < 0.2


def _leaves(module):
    return jax.tree.leaves(nnx.state(module))


def test_teacher_init_independent_copy_and_cls_head_copy():
    student, teacher = build(dict(TINY, teacher_cls_init="copy"), nnx.Rngs(0))
    assert all(
        not np.array_equal(a, b)
        for a, b in zip(_leaves(student.student), _leaves(teacher.encoder))
        if a.std() > 0
    )
    for a, b in zip(_leaves(student.cls_head), _leaves(teacher.cls_head)):
        np.testing.assert_array_equal(a, b)
        assert a is not b  # fresh buffers: student and teacher states can both be donated
    # The EMA is a tree_map over matching trees (remat is static, not part of the state).
    student, teacher = build(dict(TINY, teacher_init="copy", remat=True), nnx.Rngs(0))
    assert jax.tree.structure(nnx.state(teacher.encoder)) == jax.tree.structure(
        nnx.state(student.student)
    )
    assert jax.tree.structure(nnx.state(teacher.cls_head)) == jax.tree.structure(
        nnx.state(student.cls_head)
    )
    for a, b in zip(_leaves(student.student), _leaves(teacher.encoder)):
        np.testing.assert_array_equal(a, b)
        assert a is not b


def test_cls_heads_start_as_the_reference_leaves_them():
    """Default (quirk): the student head MLP is xavier-uniform, the teacher head MLP keeps
    normal(0.02) weights, biases 0 in both; the weight-normalised last layer starts equal."""
    cfg = dict(TINY, cls_hidden=512, cls_bottleneck=128)
    student, teacher = build(cfg, nnx.Rngs(0))
    for a, b in zip(_leaves(student.cls_head.last_layer), _leaves(teacher.cls_head.last_layer)):
        np.testing.assert_array_equal(a, b)
    for s_layer, t_layer in zip(student.cls_head.mlp, teacher.cls_head.mlp):
        s_w, t_w = np.asarray(s_layer.kernel[...]), np.asarray(t_layer.kernel[...])
        bound = np.sqrt(6.0 / sum(s_w.shape))  # xavier-uniform: |w| <= bound, std bound/sqrt(3)
        assert np.abs(s_w).max() <= bound and abs(s_w.std() / (bound / np.sqrt(3)) - 1) < 0.05
        assert abs(t_w.std() / 0.02 - 1) < 0.05 and abs(t_w.mean()) < 0.002
        assert np.abs(t_w).max() > 3 * 0.02  # a normal's tails, not a uniform's edge
        np.testing.assert_array_equal(s_layer.bias[...], 0.0)
        np.testing.assert_array_equal(t_layer.bias[...], 0.0)


# ---------------------------------------------------------------- gradients and jit


def test_grad_through_split_state_and_teacher_stop_gradient():
    student, teacher = build(TINY, nnx.Rngs(0))
    graph_s, params = nnx.split(student)
    graph_t, teacher_state = nnx.split(teacher)
    assert jax.tree.structure(params) == jax.tree.structure(nnx.state(student, nnx.Param))
    x = _x(9)
    visible, masked = _masks(10)

    def loss(params, teacher_state, which):
        s, t = nnx.merge(graph_s, params), nnx.merge(graph_t, teacher_state)
        z_hat, z_m, _ = forward(s, t, x, visible, masked)
        if which == "teacher":
            return jnp.sum(z_m**2) + jnp.sum(t.cls_logits(z_m))
        if which == "teacher_raw":  # the encoder itself, without Teacher.encode's stop_gradient
            return jnp.sum(t.encoder(s.embed(x), masked, cls=s.cls_token[...])[0] ** 2)
        return jnp.sum((z_hat - z_m[:, :, None]) ** 2) + jnp.sum(s.cls_logits(z_hat[:, :, 0]))

    grad = jax.jit(jax.grad(loss), static_argnums=2)
    g = grad(params, teacher_state, "full")
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(g))
    for name in ("patch_embed", "cls_token", "student", "predictor", "mcl_heads", "cls_head"):
        assert max(np.abs(a).max() for a in jax.tree.leaves(g[name])) > 0, name
    g = grad(params, teacher_state, "teacher")
    assert all(np.all(a == 0) for a in jax.tree.leaves(g))
    g = grad(params, teacher_state, "teacher_raw")  # shows the zero above is not vacuous
    assert np.abs(g["patch_embed"]["proj"]["kernel"][...]).max() > 0


@pytest.mark.slow
def test_remat_gives_same_gradients():
    x = _x(11)
    visible, masked = _masks(12)
    grads = []
    for remat in (False, True):
        student, teacher = build(dict(TINY, remat=remat), nnx.Rngs(0))
        graph_s, params = nnx.split(student)

        def loss(params):
            z_hat, z_m, _ = forward(nnx.merge(graph_s, params), teacher, x, visible, masked)
            return jnp.sum((z_hat - z_m[:, :, None]) ** 2)

        grads.append(jax.jit(jax.grad(loss))(params))
        jaxpr = str(jax.make_jaxpr(lambda s: s.features(x)[0])(student))
        assert ("remat" in jaxpr) == remat
    # Same math, different fusion: two programs, through the whole model and back.
    assert_trees_close(
        grads[1], grads[0], depth=2 * encoder_depth(2 * TINY_DEPTH + TINY_PRED_DEPTH)
    )


def test_bfloat16_compute_float32_params():
    x = _x(13)
    visible, masked = _masks(14)
    out = {}
    for dtype in ("float32", "bfloat16"):
        student, teacher = build(dict(TINY, dtype=dtype), nnx.Rngs(0))
        assert all(a.dtype == jnp.float32 for a in _leaves(student) + _leaves(teacher))
        run = jax.jit(
            lambda s, t: (*forward(s, t, x, visible, masked)[:2], s.cls_logits(x[..., :32]))
        )
        out[dtype] = run(student, teacher)
    for a, b in zip(out["float32"], out["bfloat16"]):
        assert b.dtype == jnp.float32
        # bf16 has 8 significant bits; outputs are O(1).
        np.testing.assert_allclose(a, b, atol=0.1)


def test_state_can_be_created_under_jit():
    """The train step creates sharded state with jax.jit(init, out_shardings=...)."""

    def init(key):
        student, teacher = build(TINY, nnx.Rngs(key))
        return nnx.state(student), nnx.state(teacher)

    jitted, eager = jax.jit(init)(jax.random.key(0)), init(jax.random.key(0))
    assert jax.tree.structure(jitted) == jax.tree.structure(eager)
    assert_trees_close(jitted, eager, depth=1)  # two programs: normal init may differ by 1 ulp


# ---------------------------------------------------------------- sizes and config


def test_param_count_variant_b():
    d, depth, dp, depth_p, k = 768, 12, 512, 8, 5

    def block(w):  # qkv, proj, fc1, fc2 with biases; two layer norms
        return (w * 3 * w + 3 * w) + (w * w + w) + (w * 4 * w + 4 * w) + (4 * w * w + w) + 4 * w

    encoder = depth * block(d) + 2 * d
    patch_and_cls = 256 * d + d + d
    predictor = (d * dp + dp) + dp + depth_p * block(dp) + 2 * dp
    heads = k * (dp * d + d)
    cls_head = (d * 2048 + 2048) + (2048 * 2048 + 2048) + (2048 * 256 + 256) + 256 * 2048 + 2048
    student, teacher = nnx.eval_shape(lambda: build("B", nnx.Rngs(0)))

    def count(m):
        return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nnx.state(m)))

    print(
        f"\nViT-B: encoder {encoder:,} (+ patch/cls {patch_and_cls:,}), predictor "
        f"{predictor:,}, MCL heads {heads:,}, cls head {cls_head:,}; "
        f"student total {count(student):,}, teacher {count(teacher):,}"
    )
    assert encoder == 85_056_000  # 12 x 7,087,872 + final LN
    assert count(student.student) == encoder
    assert count(student.patch_embed) + d == patch_and_cls
    assert count(student.predictor) == predictor
    assert count(student.mcl_heads) == heads
    assert count(student.cls_head) == cls_head
    assert count(student) == encoder + patch_and_cls + predictor + heads + cls_head
    assert count(teacher) == encoder + cls_head


def test_variants_and_config_errors():
    assert decode_variant("B")["width"] == 768 and decode_variant("S")["pred_num_heads"] == 8
    for name in ("Ti", "S", "B", "mu"):
        sizes = decode_variant(name)
        assert sizes["width"] % sizes["num_heads"] == 0 and sizes["width"] % 4 == 0
        assert sizes["pred_width"] % sizes["pred_num_heads"] == 0
    with pytest.raises(ValueError, match="unknown model variant"):
        decode_variant("L")
    with pytest.raises(ValueError, match="unknown model config keys"):
        model_config({"variant": "mu", "widht": 3})
    with pytest.raises(ValueError, match="teacher_init"):
        model_config({"variant": "mu", "teacher_init": "ema"})
    with pytest.raises(ValueError, match="dtype"):
        model_config({"variant": "mu", "dtype": "bfloat61"})
    assert model_config({"variant": "B", "num_mcl_heads": 1}).num_mcl_heads == 1
    assert model_config(decode_variant("S")) == model_config("S")  # a bare sizes dict works too
    student, teacher = build(dict(TINY, freeze_wn_gain=True), nnx.Rngs(0))
    assert student.cls_head.last_layer.g is None and teacher.cls_head.last_layer.g is None
    student, _ = build(TINY, nnx.Rngs(0))
    with pytest.raises(ValueError, match="n_mels"):
        student.embed(jnp.zeros((1, 48, 64)))
    with pytest.raises(ValueError, match="max_frames"):
        student.embed(jnp.zeros((1, 32, 80)))
    assert isinstance(build(TINY, nnx.Rngs(0))[1], Teacher)
