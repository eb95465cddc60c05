r"""The published PyTorch MATPAC / MATPAC++ weights in, this project's encoders out.

  python -m matpac_jax.interop.convert from-torch matpac_plus_6s_2048_enconly.pt --out exports/matpac_pp
  python -m matpac_jax.interop.convert from-torch matpac_plus_as_48_1_map_enc_and_head.pt --out exports/as
  python -m matpac_jax.interop.convert from-torch matpac_plus_6s_2048_enconly.pt --probe esc50.pth \
      --labels esc50_mapping.json --out exports/esc50
  python -m matpac_jax.interop.convert from-torch checkpoint_last.pt --train_state --allow_pickle \
      --out runs/continued
  python -m matpac_jax.interop.convert to-torch runs/b/export --out matpac_b.pt

from-torch reads a reference state dict (`.pt`/`.pth` need torch: `pip install .[torch]`;
`.safetensors` and `.npz` do not), at the top level or under `model` (fairseq), and writes an
encoder export (matpac_jax/inference/export.py) that `--encoder DIR` of every command takes. An AudioSet
head (`head_norm.*`, `head.*`) or a probe (`probe.*`, in the file or from `--probe`) comes along
for `inference.Encoder.classify`. Keys that are not used are listed; a `pos_embed` that is not
this project's fixed table is reported (positions are not parameters here). `--train_state`
turns a reference training checkpoint (student, `_ema` teacher encoder, predictor, MCL heads, cls
heads, `_cls_head_ema`, centre) into a workdir from which `python -m matpac_jax.train` continues.

to-torch writes an export in the reference layout: `.pt` (needs torch), `.safetensors` or `.npz`;
without a suffix, `.pt` when torch is installed and `.safetensors` otherwise. The reference's
inference package loads it with `load_state_dict(..., strict=False)`.

Mapping: matpac_jax/interop/torch_layout.py. Errors in the command or the file: one line, exit 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from matpac_jax import cli, models
from matpac_jax.inference import classifier, export
from matpac_jax.interop import convert_state
from matpac_jax.interop import torch_layout as tl
from matpac_jax.models import posemb

PROG = "python -m matpac_jax.interop.convert"
SUFFIXES = (".pt", ".pth", ".safetensors", ".npz")
TORCH_HINT = "reading or writing .pt files needs PyTorch: pip install .[torch]"


# ---------------------------------------------------------------- files


def _torch():
    try:
        import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
        raise cli.UserError(f"{TORCH_HINT} (or use .safetensors / .npz)") from None
    return torch


def _to_numpy(value: Any) -> Any:
    """torch tensors -> numpy (bfloat16 / float16 as float32); containers recursively."""
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_numpy(v) for v in value)
    if hasattr(value, "detach"):  # a torch.Tensor
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return value


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts (fairseq's `_ema`) as dotted keys, order kept."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_weights(path: str, allow_pickle: bool = False) -> tuple[dict[str, Any], dict]:
    """A reference checkpoint as (flat state dict of numpy arrays, the rest of the file).

    The state dict is the file itself or its `model` entry (fairseq); keys keep their order.
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".pt", ".pth"):
        torch = _torch()
        try:
            obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
        except Exception as e:  # pylint: disable=broad-except
            if allow_pickle:
                raise cli.UserError(f"{path}: torch cannot read it ({cli.one_line(e)})") from None
            raise cli.UserError(
                f"{path}: not a plain state dict ({cli.one_line(e)}); a fairseq training "
                "checkpoint holds config objects: add --allow_pickle for a file you trust"
            ) from None
    elif suffix == ".safetensors":
        from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

        obj = load_file(path)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            obj = {k: f[k] for k in f.files}
    else:
        raise cli.UserError(f"{path}: unknown weights format; use one of {', '.join(SUFFIXES)}")
    obj = _to_numpy(obj)
    if not isinstance(obj, dict):
        raise cli.UserError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    meta = {}
    if isinstance(obj.get("model"), dict):
        meta = {k: v for k, v in obj.items() if k != "model"}
        obj = obj["model"]
    sd = tl.normalize_keys(_flat(obj))
    return {k: np.asarray(v) for k, v in sd.items() if _is_numeric(v)}, meta


def _is_numeric(value: Any) -> bool:
    return (
        isinstance(value, (np.ndarray, np.number, int, float))
        and np.asarray(value).dtype.kind in "biuf"
    )


def write_weights(path: str, sd: dict[str, np.ndarray]) -> str:
    """Writes a state dict as .pt, .safetensors or .npz (by suffix), atomically."""
    suffix = os.path.splitext(path)[1].lower()
    tmp = f"{path}.tmp{suffix}"
    if suffix in (".pt", ".pth"):
        torch = _torch()
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, tmp)
    elif suffix == ".safetensors":
        from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

        save_file(sd, tmp, metadata={"format": "pt", "written_by": "matpac_jax"})
    elif suffix == ".npz":
        with open(tmp, "wb") as f:
            np.savez(f, **sd)
    else:
        raise cli.UserError(f"--out {path}: unknown suffix; use one of {', '.join(SUFFIXES)}")
    os.replace(tmp, path)
    return path


def torch_available() -> bool:
    try:
        import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- encoder and heads


def import_encoder(
    sd: dict[str, Any],
    *,
    n_mels: int = 80,
    num_heads: int | None = None,
    labels: list[str] | None = None,
    source: str = "",
) -> tuple[dict, dict, dict]:
    """A reference state dict -> (export params, export config, report).

    The report: "unused" (keys not read), "pos_embed" (largest difference from the fixed table,
    None without one), "head" (its kind or None).
    """

    cfg = tl.infer_model_config(sd, n_mels=n_mels, num_heads=num_heads)
    prefix = tl.encoder_prefix(sd)
    rules = tl.encoder_rules(cfg.depth, prefix)
    params = tl.gather(sd, rules, tl.expected_shapes(cfg)["student"])
    used = {r.ref for r in rules}
    kind = tl.head_kind(sd)
    config = tl.export_config(cfg, source)
    if kind:
        params["head"] = tl.head_params(sd, kind, cfg)
        used |= {r.ref for r in tl.HEAD_RULES[kind]}
        classes = params["head"]["bias"].shape[0]
        if labels is None and kind == "audioset" and classes == 527:
            labels = classifier.audioset_labels()
        config["head"] = classifier.head_config(kind, classes, labels)
    elif labels is not None:
        raise cli.UserError("--labels names the classes of a head, and the weights hold none")
    report = {
        "unused": tl.unused_keys(sd, used),
        "pos_embed": tl.pos_embed_difference(sd, "pos_embed", cfg, cfg.width),
        "head": kind,
    }
    return params, config, report


def export_to_reference(params: dict, config: dict) -> dict[str, np.ndarray]:
    """An export's params -> the reference's state dict (encoder, pos_embed, head if any)."""
    cfg = models.model_config(config["model"])
    params = {k: jax_free(v) for k, v in params.items()}
    sd = tl.state_dict(params, tl.encoder_rules(cfg.depth))
    grid = (cfg.n_mels // cfg.patch, cfg.max_frames // cfg.patch)
    sd["pos_embed"] = posemb.posemb_sincos_2d(*grid, cfg.width)[None].copy()
    if "head" in params and config.get("head"):
        sd.update(tl.state_dict(params["head"], tl.HEAD_RULES[config["head"]["kind"]]))
    return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


def jax_free(tree: Any) -> Any:
    """Arrays of a (nested) dict as numpy."""
    if isinstance(tree, dict):
        return {k: jax_free(v) for k, v in tree.items()}
    return np.asarray(tree)


# ---------------------------------------------------------------- command line


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _report(report: dict) -> None:
    if report["unused"]:
        _warn(f"{len(report['unused'])} keys not used: {tl.summarize_keys(report['unused'])}")
    for key in ("pos_embed", "decoder_pos_embed"):
        diff = report.get(key)
        if diff is not None and diff > 1e-6:
            _warn(
                f"{key} differs from this project's fixed sin-cos table by up to {diff:.3g}; "
                "the fixed table is used (positions are not parameters here)"
            )


def _from_torch(args) -> int:
    path = cli.input_file(args.ckpt, what="checkpoint")
    out = cli.output_dir(args.out, "--out")
    sd, meta = read_weights(path, args.allow_pickle)
    if args.train_state:
        return convert_state.main(args, path, out, sd, meta, _report)
    if os.path.exists(out) and os.listdir(out) and not export.is_export(out):
        raise cli.UserError(f"--out {args.out}: exists and is not an export; choose a new folder")
    if args.probe:
        probe, _ = read_weights(cli.input_file(args.probe, "--probe"), args.allow_pickle)
        if tl.head_kind(probe) != "probe":
            raise cli.UserError(f"--probe {args.probe}: holds no probe.weight / probe.bias")
        sd = {**sd, **probe}  # as the reference merges them
    labels = None
    if args.labels:
        labels = classifier.read_labels(args.labels)
    params, config, report = import_encoder(
        sd, n_mels=args.n_mels, num_heads=args.num_heads, labels=labels, source=path
    )
    _report(report)
    export.write_export(out, params, config)
    m = config["model"]
    head = f"; {report['head']} head, {config['head']['classes']} classes" if report["head"] else ""
    print(
        f"wrote {out}: ViT {m['width']} x {m['depth']} ({m['num_heads']} heads), "
        f"{m['max_frames']}-frame positions{head}"
    )
    return 0


def _to_torch(args) -> int:
    src = cli.input_dir(args.export, what="export folder")
    out = args.out
    if not os.path.splitext(out)[1]:
        out += ".pt" if torch_available() else ".safetensors"
    out = cli.output_file(out, "--out")
    if os.path.splitext(out)[1].lower() in (".pt", ".pth"):
        _torch()  # refuse before reading anything
    try:
        params, config = export.load_export(src)
    except (FileNotFoundError, ValueError) as e:
        raise cli.UserError(str(e)) from None
    write_weights(out, export_to_reference(params, config))
    print(f"wrote {out} (reference layout; load with load_state_dict(..., strict=False))")
    return 0


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(PROG, __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("from-torch", help="reference weights -> an export (or a workdir)")
    imp.add_argument("ckpt", help="reference weights: .pt/.pth (torch), .safetensors or .npz")
    imp.add_argument(
        "--out", required=True, help="the export folder (the workdir with --train_state)"
    )
    imp.add_argument("--probe", help="a probe's weights (probe.weight, probe.bias) to add")
    imp.add_argument("--labels", help="class names of the probe: .json, .csv or one per line")
    imp.add_argument("--n_mels", type=cli.int_at_least(16), default=80, help="mel bins (80)")
    imp.add_argument("--num_heads", type=cli.int_at_least(1), help="encoder attention heads")
    imp.add_argument("--pred_num_heads", type=cli.int_at_least(1), help="predictor heads")
    imp.add_argument("--train_state", action="store_true", help="a full training checkpoint")
    imp.add_argument("--step", type=cli.int_at_least(0), help="the step (default: the file's)")
    imp.add_argument(
        "--allow_pickle",
        action="store_true",
        help="let torch unpickle objects (fairseq checkpoints); only for files you trust",
    )
    exp = sub.add_parser("to-torch", help="an export -> reference weights")
    exp.add_argument("export", help="an export folder (config.json + params/)")
    exp.add_argument("--out", required=True, help=".pt, .safetensors or .npz (no suffix: best)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _from_torch(args) if args.command == "from-torch" else _to_torch(args)


if __name__ == "__main__":
    sys.exit(cli.run(main, prog=PROG))
