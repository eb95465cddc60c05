"""The reference's PyTorch parameter names and layouts, mapped to this project's and back.

Pure numpy on flat state dicts `{name: array}`; `matpac_jax/interop/convert.py` reads and writes the
files. Reference names (aurianworld/matpac, `training_matpac/models/model.py` and the inference
package's `matpac_wrapper`, which keeps the `student_encoder.` prefix):

| reference | here | layout |
|---|---|---|
| `patch_embed.proj.weight` (D, 1, p, p), `.bias` | `patch_embed/proj/kernel` (p*p, D), `bias` | pixels (freq, time) row-major |
| `cls_token` (1, 1, D); `pos_embed` (1, 1+N, D) | `cls_token`; positions are a fixed table | pos_embed only checked |
| `student_encoder.blocks.{i}.{norm1,norm2}.{weight,bias}` | `student/blocks/{i}/{norm1,norm2}/{scale,bias}` | |
| `...attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2` `.weight` (out, in) | `.../kernel` (in, out) | qkv: q, k, v stacked, heads contiguous in each (timm = ours) |
| `student_encoder.norm.*` | `student/norm/*` | |
| `decoder.decoder_embed`, `decoder.mask_token`, `decoder.decoder_blocks.{i}`, `decoder.decoder_norm` | `predictor/{embed, mask_token, body/blocks/{i}, body/norm}` | `decoder.decoder_pred` is unused with MCL heads |
| `mcl_heads.mcl_heads.{k}.weight` (D, Dp) | `mcl_heads/kernel[k]` (Dp, D) | without MCL heads (MATPAC), `decoder.decoder_pred` is the single head |
| `cls_student_head.mlp.{0,2,4}`, `.last_layer.weight_g` (C, 1), `.weight_v` (C, b) | `cls_head/mlp/{0,1,2}`, `cls_head/last_layer/g` (C,), `v` (b, C) | |
| `_ema.{blocks,norm}.*`, `_cls_head_ema.*` | `teacher/encoder/*`, `teacher/cls_head/*` | fairseq EMA copies |
| `cls_head_loss.center` (1, 1, C) | `center` (1, C) | |
| `head_norm.running_{mean,var}`, `head.weight` (527, D) | head `norm_mean`, `norm_var`, `kernel` (D, 527) | AudioSet head |
| `probe.weight` (C, F/p * D), `.bias` | head `kernel`, `bias` | linear probe |
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
from flax import nnx

from matpac_jax import cli, models
from matpac_jax.audio import frontend as audio
from matpac_jax.inference import encoder as inference

ENCODER_PREFIX = "student_encoder."
# Fixed or bookkeeping entries of a reference state dict: never parameters here.
FIXED_KEYS = ("pos_embed", "decoder.decoder_pos_embed")
NO_STATE_DICT_KEYS = ("num_batches_tracked",)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One parameter: its path here, its reference name, and how the layouts differ."""

    ours: tuple
    ref: str
    kind: str = "same"  # same | linear (transpose) | patch (conv weight) | gain ((C, 1) -> (C,))


def to_ours(kind: str, a: np.ndarray) -> np.ndarray:
    """A reference array in this project's layout."""
    if kind == "linear":
        return a.T
    if kind == "patch":
        return a.reshape(a.shape[0], -1).T
    if kind == "gain":
        return a.reshape(-1)
    return a


def to_ref(kind: str, a: np.ndarray) -> np.ndarray:
    """An array of this project in the reference's layout (inverse of `to_ours`)."""
    if kind == "linear":
        return a.T
    if kind == "patch":
        side = round(a.shape[0] ** 0.5)
        return a.T.reshape(a.shape[1], 1, side, side)
    if kind == "gain":
        return a.reshape(-1, 1)
    return a


def _ref_shape(kind: str, shape: tuple) -> tuple:
    return to_ref(kind, np.empty(shape, np.uint8)).shape


def block_rules(ours: tuple, ref: str) -> list[Rule]:
    """A pre-norm ViT block (timm's `Block`)."""
    rules = []
    for norm in ("norm1", "norm2"):
        rules += [Rule((*ours, norm, "scale"), f"{ref}{norm}.weight")]
        rules += [Rule((*ours, norm, "bias"), f"{ref}{norm}.bias")]
    for part, layer in (("attn", "qkv"), ("attn", "proj"), ("mlp", "fc1"), ("mlp", "fc2")):
        rules += [Rule((*ours, part, layer, "kernel"), f"{ref}{part}.{layer}.weight", "linear")]
        rules += [Rule((*ours, part, layer, "bias"), f"{ref}{part}.{layer}.bias")]
    return rules


def stack_rules(ours: tuple, ref: str, depth: int, blocks: str = "blocks", norm: str = "norm"):
    """`depth` blocks and the final LayerNorm."""
    rules = []
    for i in range(depth):
        rules += block_rules((*ours, "blocks", i), f"{ref}{blocks}.{i}.")
    rules += [Rule((*ours, "norm", "scale"), f"{ref}{norm}.weight")]
    rules += [Rule((*ours, "norm", "bias"), f"{ref}{norm}.bias")]
    return rules


def encoder_rules(depth: int, prefix: str = ENCODER_PREFIX) -> list[Rule]:
    """The student encoder: what inference needs (`inference.ENCODER_KEYS`)."""
    return [
        Rule(("patch_embed", "proj", "kernel"), "patch_embed.proj.weight", "patch"),
        Rule(("patch_embed", "proj", "bias"), "patch_embed.proj.bias"),
        Rule(("cls_token",), "cls_token"),
        *stack_rules(("student",), prefix, depth),
    ]


def cls_head_rules(ours: tuple, ref: str) -> list[Rule]:
    """The DINO-style classification head (MLP 0, 2, 4 around GELUs; weight-normed last layer)."""
    rules = []
    for i, j in enumerate((0, 2, 4)):
        rules += [Rule((*ours, "mlp", i, "kernel"), f"{ref}mlp.{j}.weight", "linear")]
        rules += [Rule((*ours, "mlp", i, "bias"), f"{ref}mlp.{j}.bias")]
    rules += [Rule((*ours, "last_layer", "g"), f"{ref}last_layer.weight_g", "gain")]
    rules += [Rule((*ours, "last_layer", "v"), f"{ref}last_layer.weight_v", "linear")]
    return rules


def student_rules(cfg: models.ModelConfig, sd_keys, prefix: str = ENCODER_PREFIX) -> list[Rule]:
    """Every trained parameter of the student side; mcl heads as one rule per head k."""
    rules = encoder_rules(cfg.depth, prefix)
    rules += [Rule(("predictor", "embed", "kernel"), "decoder.decoder_embed.weight", "linear")]
    rules += [Rule(("predictor", "embed", "bias"), "decoder.decoder_embed.bias")]
    rules += [Rule(("predictor", "mask_token"), "decoder.mask_token")]
    rules += stack_rules(
        ("predictor", "body"), "decoder.", cfg.pred_depth, "decoder_blocks", "decoder_norm"
    )
    mcl = any(k.startswith("mcl_heads.") for k in sd_keys)
    for k in range(cfg.num_mcl_heads):
        ref = f"mcl_heads.mcl_heads.{k}." if mcl else "decoder.decoder_pred."
        rules += [Rule(("mcl_heads", "kernel", k), f"{ref}weight", "linear")]
        rules += [Rule(("mcl_heads", "bias", k), f"{ref}bias")]
    return rules + cls_head_rules(("cls_head",), "cls_student_head.")


def teacher_rules(cfg: models.ModelConfig) -> list[Rule]:
    """The EMA teachers as fairseq's EMAModule saves them (`_ema`, `_cls_head_ema`)."""
    return stack_rules(("encoder",), "_ema.", cfg.depth) + cls_head_rules(
        ("cls_head",), "_cls_head_ema."
    )


# ---------------------------------------------------------------- keys and sizes


def normalize_keys(sd: dict[str, Any]) -> dict[str, Any]:
    """torch's new weight-norm names (`parametrizations.weight.original0/1`) as the old ones
    (`weight_g`, `weight_v`); a DistributedDataParallel `module.` prefix dropped."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    out = {}
    for key, value in sd.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        out[key.replace("parametrizations.weight.original1", "weight_v")] = value
    return out


def encoder_prefix(sd: dict[str, Any]) -> str:
    """`student_encoder.` (the reference's own names) or "" (a bare encoder's blocks)."""
    for prefix in (ENCODER_PREFIX, ""):
        if f"{prefix}blocks.0.norm1.weight" in sd:
            return prefix
    raise cli.UserError(
        "no encoder blocks found: expected student_encoder.blocks.0.norm1.weight (the "
        "reference's names) or blocks.0.norm1.weight"
    )


def _count(sd, pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return len(found)


def _need(sd: dict, key: str) -> np.ndarray:
    if key not in sd:
        raise cli.UserError(f"missing key {key}")
    return np.asarray(sd[key])


def infer_model_config(
    sd: dict[str, Any],
    *,
    n_mels: int = 80,
    num_heads: int | None = None,
    pred_num_heads: int | None = None,
    train_state: bool = False,
) -> models.ModelConfig:
    """The model sizes of a reference state dict (heads cannot be read off shapes: the named
    variant with the same widths, else 64-wide heads in the encoder and 32-wide in the predictor).
    """
    prefix = encoder_prefix(sd)
    width = _need(sd, "cls_token").shape[-1]
    patch = _need(sd, "patch_embed.proj.weight").shape[-1]
    sizes = {
        "width": width,
        "depth": _count(sd, rf"{re.escape(prefix)}blocks\.(\d+)\."),
        "mlp_ratio": _need(sd, f"{prefix}blocks.0.mlp.fc1.weight").shape[0] / width,
        "patch": patch,
        "n_mels": n_mels,
        "max_frames": _max_frames(sd, n_mels, patch),
    }
    if train_state:
        sizes.update(
            pred_width=_need(sd, "decoder.decoder_embed.weight").shape[0],
            pred_depth=_count(sd, r"decoder\.decoder_blocks\.(\d+)\."),
            num_mcl_heads=_count(sd, r"mcl_heads\.mcl_heads\.(\d+)\.") or 1,
            cls_hidden=_need(sd, "cls_student_head.mlp.0.weight").shape[0],
            cls_bottleneck=_need(sd, "cls_student_head.mlp.4.weight").shape[0],
            cls_out=_need(sd, "cls_student_head.last_layer.weight_v").shape[0],
        )
    variant = matching_variant(sizes)
    base = models.decode_variant(variant) if variant else {}
    sizes["num_heads"] = num_heads or base.get("num_heads") or max(1, width // 64)
    sizes.setdefault("pred_width", base.get("pred_width", width))
    sizes.setdefault("pred_depth", base.get("pred_depth", 1))
    same_pred = base.get("pred_width") == sizes["pred_width"]
    default_pred_heads = base["pred_num_heads"] if same_pred else max(1, sizes["pred_width"] // 32)
    sizes["pred_num_heads"] = pred_num_heads or default_pred_heads
    for key in ("cls_hidden", "cls_bottleneck", "cls_out"):
        sizes.setdefault(key, base.get(key, models.ModelConfig.__dataclass_fields__[key].default))
    try:
        return models.model_config(sizes)
    except ValueError as e:
        raise cli.UserError(f"these sizes make no model: {e}") from None


def _max_frames(sd: dict, n_mels: int, patch: int) -> int:
    """The frames of the positional table (608 for the general models, 992 for AudioSet's)."""
    if n_mels % patch:
        raise cli.UserError(f"--n_mels {n_mels} is not a multiple of the {patch}-bin patch")
    if "pos_embed" not in sd:
        return models.ModelConfig.max_frames
    tokens, grid_f = np.shape(sd["pos_embed"])[1] - 1, n_mels // patch
    if tokens % grid_f:
        raise cli.UserError(
            f"pos_embed has {tokens} patch rows, not a multiple of the {grid_f} frequency bands "
            f"of {n_mels} mel bins: give the model's --n_mels"
        )
    return tokens // grid_f * patch


def matching_variant(sizes: dict) -> str | None:
    """The named variant whose widths and depths these are, or None."""
    keys = ("width", "depth", "pred_width", "pred_depth")
    for name in models.VARIANTS:
        known = models.decode_variant(name)
        if all(sizes.get(k, known[k]) == known[k] for k in keys):
            return name
    return None


# ---------------------------------------------------------------- conversion


def expected_shapes(cfg: models.ModelConfig) -> dict[str, dict[tuple, tuple]]:
    """{"student": {path: shape}, "teacher": {...}} of the model `cfg` builds (no allocation)."""
    student, teacher = nnx.eval_shape(lambda: models.build(cfg, nnx.Rngs(0)))
    return {
        "student": _flat_shapes(nnx.to_pure_dict(nnx.state(student))),
        "teacher": _flat_shapes(nnx.to_pure_dict(nnx.state(teacher))),
    }


def _flat_shapes(tree, path=()) -> dict[tuple, tuple]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat_shapes(v, (*path, k)))
        return out
    return {path: tuple(tree.shape)}


def _expected(shapes: dict[tuple, tuple], path: tuple) -> tuple:
    if path in shapes:
        return shapes[path]
    return shapes[path[:-1]][1:]  # one head k of a stacked (K, ...) leaf


def gather(sd: dict[str, Any], rules: list[Rule], shapes: dict[tuple, tuple]) -> dict:
    """The nested pure dict the rules describe, from `sd`, float32, shapes checked.

    Raises:
      cli.UserError: a missing key, or a key whose shape differs (named, with the shape expected).
    """
    flat = {}
    for rule in rules:
        ref = _need(sd, rule.ref)
        want = _expected(shapes, rule.ours)
        if to_ours(rule.kind, np.empty(ref.shape, np.uint8)).shape != want:
            raise cli.UserError(
                f"{rule.ref} has shape {tuple(ref.shape)}, the model needs "
                f"{_ref_shape(rule.kind, want)}"
            )
        flat[rule.ours] = np.ascontiguousarray(to_ours(rule.kind, ref), np.float32)
    return _nest(_stack_heads(flat))


def _stack_heads(flat: dict) -> dict:
    """mcl_heads/{kernel,bias}/k entries -> one (K, ...) leaf each."""
    out = {k: v for k, v in flat.items() if not (k[0] == "mcl_heads" and len(k) == 3)}
    for leaf in ("kernel", "bias"):
        heads = sorted((k[2], v) for k, v in flat.items() if k[:2] == ("mcl_heads", leaf))
        if heads:
            out[("mcl_heads", leaf)] = np.stack([v for _, v in heads])
    return out


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def flatten(tree: dict, path=()) -> dict[tuple, Any]:
    """A nested dict as {path: leaf}; list-like keys ('0' from Orbax) as ints."""
    out = {}
    for k, v in tree.items():
        k = int(k) if isinstance(k, str) and k.isdigit() else k
        if isinstance(v, dict):
            out.update(flatten(v, (*path, k)))
        else:
            out[(*path, k)] = v
    return out


def state_dict(params: dict, rules: list[Rule]) -> dict[str, np.ndarray]:
    """The reference-layout state dict of `params` (the inverse of `gather`)."""
    flat = flatten(params)
    out = {}
    for rule in rules:
        out[rule.ref] = np.ascontiguousarray(to_ref(rule.kind, np.asarray(flat[rule.ours])))
    return out


def unused_keys(sd: dict[str, Any], used: set[str]) -> list[str]:
    """Keys of `sd` that no rule read (fixed tables and buffer counters left out)."""
    return sorted(
        k
        for k in sd
        if k not in used and k not in FIXED_KEYS and not k.endswith(NO_STATE_DICT_KEYS)
    )


def summarize_keys(keys: list[str], limit: int = 12) -> str:
    """'decoder.* (118), mcl_heads.* (10), foo' : keys grouped by their first name."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.split(".")[0], []).append(key)
    parts = [v[0] if len(v) == 1 else f"{g}.* ({len(v)})" for g, v in groups.items()]
    more = f", ... ({len(parts) - limit} more groups)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


# ---------------------------------------------------------------- heads

HEAD_RULES = {
    # The AudioSet fine-tuned model: BatchNorm1d without affine, then a linear layer, on the
    # clip embedding averaged over the frequency bands (D wide).
    "audioset": [
        Rule(("norm_mean",), "head_norm.running_mean"),
        Rule(("norm_var",), "head_norm.running_var"),
        Rule(("kernel",), "head.weight", "linear"),
        Rule(("bias",), "head.bias"),
    ],
    # A downstream linear probe on the clip embedding (F/p * D wide, 3,840 for ViT-B).
    "probe": [Rule(("kernel",), "probe.weight", "linear"), Rule(("bias",), "probe.bias")],
}


def head_kind(sd: dict[str, Any]) -> str | None:
    """ "audioset", "probe" or None: which classification head a state dict holds."""
    found = [kind for kind, rules in HEAD_RULES.items() if rules[-1].ref in sd]
    if len(found) > 1:
        raise cli.UserError("the weights hold both an AudioSet head and a probe: give one")
    return found[0] if found else None


def head_params(sd: dict[str, Any], kind: str, cfg: models.ModelConfig) -> dict:
    """The head's parameters; its input width checked against the encoder's."""
    width = cfg.width if kind == "audioset" else cfg.n_mels // cfg.patch * cfg.width
    classes = _need(sd, HEAD_RULES[kind][-1].ref).shape[0]
    shapes = {("kernel",): (width, classes), ("bias",): (classes,)}
    shapes.update({("norm_mean",): (width,), ("norm_var",): (width,)})
    return gather(sd, HEAD_RULES[kind], shapes)


def pos_embed_difference(sd: dict, key: str, cfg, width: int) -> float | None:
    """Largest |difference| of a reference positional table from this project's, or None."""
    if key not in sd:
        return None
    grid = (cfg.n_mels // cfg.patch, cfg.max_frames // cfg.patch)
    ours = models.posemb_sincos_2d(*grid, width)
    theirs = np.asarray(sd[key], np.float64).reshape(-1, width)
    if theirs.shape != ours.shape:
        return float("inf")
    return float(np.abs(theirs - ours).max())


def export_config(cfg, source: str = "") -> dict:
    """The export's config.json for an imported encoder (the papers' front end)."""
    return {
        "model": dataclasses.asdict(cfg),
        "front_end": audio.FrontEnd(n_mels=cfg.n_mels).to_dict(),
        "normalization": dict(inference.DEFAULT_NORMALIZATION),
        "crop_frames": cfg.max_frames,
        "source": {"converted_from": source, "layout": "reference (PyTorch)"},
    }
