"""The MATPAC++ model: student side (trained), teacher side (EMA only), sizes, build and forward.

student, teacher = build({"variant": "B"}, nnx.Rngs(0))
graphdef_s, params = nnx.split(student)      # every leaf is an nnx.Param: all trainable
graphdef_t, teacher_state = nnx.split(teacher)
# inside the jitted step:
student = nnx.merge(graphdef_s, params); teacher = nnx.merge(graphdef_t, teacher_state)
z_hat, z_m, aux = forward(student, teacher, x, visible_idx, masked_idx)
"""

import dataclasses
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
from flax import nnx

from matpac_jax import config_lib  # imports no jax; the config keys of the sizes
from matpac_jax.models.heads import ClsHead, MclHeads
from matpac_jax.models.posemb import posemb_sincos_2d
from matpac_jax.models.predictor import Predictor
from matpac_jax.models.vit import Encoder, PatchEmbed

# Encoder sizes are the standard ViT ones. The predictor of B is the reference's (512 wide, 8
# deep, 16 heads); for S and Ti we keep its depth and head width (32) and shrink the width to
# 2/3 of the encoder's, rounded to a multiple of 32 - our choice, the papers train only B.
_VARIANTS = {
    "Ti": dict(width=192, depth=12, num_heads=3, pred_width=128, pred_depth=8, pred_num_heads=4),
    "S": dict(width=384, depth=12, num_heads=6, pred_width=256, pred_depth=8, pred_num_heads=8),
    "B": dict(width=768, depth=12, num_heads=12, pred_width=512, pred_depth=8, pred_num_heads=16),
    # Tiny, for tests and CPU runs (runlocal).
    "mu": dict(
        width=32,
        depth=2,
        num_heads=2,
        pred_width=32,
        pred_depth=1,
        pred_num_heads=2,
        cls_hidden=64,
        cls_bottleneck=16,
        cls_out=32,
    ),
    # Small, for the 30-minute CPU recipe (configs/matpac_pp.py:small, docs/small_scale.md).
    "XS": dict(width=64, depth=4, num_heads=2, pred_width=64, pred_depth=2, pred_num_heads=2),
}
_COMMON = dict(mlp_ratio=4.0, cls_hidden=2048, cls_bottleneck=256, cls_out=2048)
VARIANTS = tuple(_VARIANTS)  # the names decode_variant knows


def decode_variant(variant: str) -> dict:
    """Sizes of a named variant ("Ti", "S", "B", the small "XS" or the tiny "mu") as a fresh dict."""
    if variant not in _VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; choose one of {sorted(_VARIANTS)}")
    return {**_COMMON, **_VARIANTS[variant]}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything `build` needs. Sizes usually come from `decode_variant`."""

    width: int
    depth: int
    num_heads: int
    pred_width: int
    pred_depth: int
    pred_num_heads: int
    mlp_ratio: float = 4.0
    cls_hidden: int = 2048
    cls_bottleneck: int = 256
    cls_out: int = 2048
    num_mcl_heads: int = 5  # K; MATPAC is K = 1
    patch: int = 16
    n_mels: int = 80
    max_frames: int = 608  # longer inputs must be chunked (docs/method.md, section 7)
    teacher_init: str = "independent"  # quirk: a second random draw; "copy" copies the student
    teacher_cls_init: str = "reference"  # quirk, see build(); "copy": an exact copy
    freeze_wn_gain: bool = False  # quirk: the reference trains g; True is DINO's frozen g = 1
    dtype: str = "float32"  # compute dtype of the matmuls, "bfloat16" on accelerators
    param_dtype: str = "float32"
    # None: the einsum attention of models/vit.py; "xla" / "cudnn": jax.nn.dot_product_attention
    attention_impl: Optional[str] = None
    remat: bool = False  # rematerialise each block in the backward pass

    def __post_init__(self):
        choices = {
            "teacher_init": ("independent", "copy"),
            "teacher_cls_init": ("copy", "reference"),
            "attention_impl": (None, "xla", "cudnn"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name}={getattr(self, name)!r}; allowed: {allowed}")
        for name in config_lib.MODEL_SIZE_KEYS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{name}={value!r}: must be an integer >= 1")
        for width, heads in (("width", "num_heads"), ("pred_width", "pred_num_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(
                    f"model.{width}={getattr(self, width)} is not divisible by "
                    f"model.{heads}={getattr(self, heads)}"
                )
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError:
                raise ValueError(
                    f"model.{name}={getattr(self, name)!r} is not a dtype name, e.g. "
                    "'float32' or 'bfloat16'"
                ) from None


def model_config(config: Union[str, Mapping[str, Any], ModelConfig, Any]) -> ModelConfig:
    """A ModelConfig from a variant name, a mapping/ConfigDict (`variant` + overrides) or itself."""
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, str):
        config = {"variant": config}
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
        config = config.to_dict()
    config = dict(config)
    variant = config.pop("variant", None)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(fields)}")
    sizes = decode_variant(variant) if variant is not None else {}
    try:
        return ModelConfig(**{**sizes, **config})
    except TypeError as e:
        raise ValueError(f"model config needs a `variant` or every size ({e})") from None


def _dtypes(cfg: ModelConfig) -> dict:
    return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def _encoder(cfg: ModelConfig, rngs: nnx.Rngs, *, remat: bool) -> Encoder:
    """The student's or the teacher's encoder: same architecture, own weights."""
    return Encoder(
        cfg.width,
        cfg.depth,
        cfg.num_heads,
        cfg.mlp_ratio,
        attention_impl=cfg.attention_impl,
        remat=remat,
        rngs=rngs,
        **_dtypes(cfg),
    )


def _cls_head(cfg: ModelConfig, rngs: nnx.Rngs, mlp_init_std: Optional[float] = None) -> ClsHead:
    """The student's or the teacher's classification head."""
    return ClsHead(
        cfg.width,
        cfg.cls_hidden,
        cfg.cls_bottleneck,
        cfg.cls_out,
        freeze_wn_gain=cfg.freeze_wn_gain,
        mlp_init_std=mlp_init_std,
        rngs=rngs,
        **_dtypes(cfg),
    )


class MatpacModel(nnx.Module):
    """Student side, every parameter trained: patch embedding, cls token, student encoder,
    predictor, MCL heads and the student cls head."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = _dtypes(cfg)
        self.patch_embed = PatchEmbed(cfg.width, cfg.patch, rngs=rngs, **kw)
        self.cls_token = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (1, 1, cfg.width), kw["param_dtype"])
        )
        self.student = _encoder(cfg, rngs, remat=cfg.remat)
        self.predictor = Predictor(
            cfg.width,
            cfg.pred_width,
            cfg.pred_depth,
            cfg.pred_num_heads,
            cfg.mlp_ratio,
            attention_impl=cfg.attention_impl,
            remat=cfg.remat,
            rngs=rngs,
            **kw,
        )
        self.mcl_heads = MclHeads(cfg.pred_width, cfg.width, cfg.num_mcl_heads, rngs=rngs, **kw)
        self.cls_head = _cls_head(cfg, rngs)

    def grid(self, x_shape: tuple[int, ...]) -> tuple[int, int]:
        """(grid_f, grid_t) of an input shape (B, F, T), checked against the config."""
        cfg = self.cfg
        if len(x_shape) != 3:
            raise ValueError(f"expected log-mels (B, F, T), got shape {tuple(x_shape)}")
        _, f, t = x_shape
        if f != cfg.n_mels:
            raise ValueError(f"input has {f} mel bins, the model expects n_mels={cfg.n_mels}")
        if t % cfg.patch or t > cfg.max_frames:
            raise ValueError(
                f"input has {t} frames; need a multiple of {cfg.patch} and at most "
                f"max_frames={cfg.max_frames} (pad, crop or chunk the input)"
            )
        return f // cfg.patch, t // cfg.patch

    def embed(self, x: jax.Array) -> jax.Array:
        """(B, F, T) log-mels -> (B, N, D) float32 tokens: patch embedding + fixed positions."""
        grid_f, grid_t = self.grid(x.shape)
        pos = posemb_sincos_2d(grid_f, grid_t, self.cfg.width)[1:]  # == the full table cut in time
        return self.patch_embed(x).astype(jnp.float32) + pos

    def encode(
        self,
        tokens: jax.Array,
        visible_idx: Optional[jax.Array] = None,
        *,
        return_layers: bool = False,
    ):
        """Student encoder: (B, N, D) tokens -> ((B, 1 + Nv, D) z_v, aux); None = all tokens."""
        return self.student(
            tokens, visible_idx, cls=self.cls_token[...], return_layers=return_layers
        )

    def predict(
        self, z_v: jax.Array, visible_idx: jax.Array, masked_idx: jax.Array, grid: tuple[int, int]
    ):
        """Predictor + MCL heads: z_v -> ((B, Nm, K, D) z_hat float32, aux), rows follow masked_idx."""
        y, aux = self.predictor(z_v, visible_idx, masked_idx, grid)
        return self.mcl_heads(y), aux

    def cls_logits(self, z: jax.Array) -> jax.Array:
        """Student cls head h_psi: (..., D) -> (..., cls_out) float32 logits."""
        return self.cls_head(z)

    def features(self, x: jax.Array, *, return_layers: bool = False):
        """Inference path, no masking: (B, F, T) -> ((B, 1 + N, D), aux), cls first.

        aux["layers"] (if asked) holds every block's output; the last one is after the final LN.
        """
        return self.encode(self.embed(x), None, return_layers=return_layers)


class Teacher(nnx.Module):
    """Teacher side, updated only by EMA: the teacher encoder f_gamma and cls head h_omega."""

    def __init__(
        self, cfg: ModelConfig, *, cls_mlp_init_std: Optional[float] = None, rngs: nnx.Rngs
    ):
        self.encoder = _encoder(cfg, rngs, remat=False)  # no backward pass through the teacher
        self.cls_head = _cls_head(cfg, rngs, mlp_init_std=cls_mlp_init_std)

    def encode(self, tokens: jax.Array, masked_idx: jax.Array, *, cls: jax.Array):
        """Teacher encoder on [cls] + masked tokens; no gradient flows in or out.

        Args:
          tokens: (B, N, D) the STUDENT's embedded tokens.
          masked_idx: (B, Nm) masked token indices; output rows follow this order.
          cls: (1, 1, D) the STUDENT's cls token.

        Returns:
          ((B, Nm, D) z_m float32 with cls dropped, aux).
        """
        z, aux = self.encoder(
            jax.lax.stop_gradient(tokens), masked_idx, cls=jax.lax.stop_gradient(cls)
        )
        return jax.lax.stop_gradient(z[:, 1:]), aux

    def cls_logits(self, z: jax.Array) -> jax.Array:
        """Teacher cls head h_omega: (..., D) -> (..., cls_out) float32 logits, no gradient."""
        return jax.lax.stop_gradient(self.cls_head(z))


def _copy_into(dst: nnx.Module, src: nnx.Module) -> None:
    """dst <- fresh copies of src's variables (no shared buffers, so both can be donated)."""
    nnx.update(dst, jax.tree.map(jnp.copy, nnx.state(src)))


def build(
    config: Union[str, Mapping[str, Any], ModelConfig, Any], rngs: nnx.Rngs
) -> tuple[MatpacModel, Teacher]:
    """Builds (student, teacher) with the reference's initialisation.

    The teacher encoder is a second random draw (quirk) or, with teacher_init="copy", a copy of the
    student encoder. quirk (teacher_cls_init="reference", the default): the teacher cls head is
    not a copy of the student's. The reference copies the head into its EMA wrapper and then
    re-initialises the model, which does not reach inside the wrapper: the student head's MLP
    becomes xavier-uniform while the teacher's keeps the head's own normal(0.02) weights; the
    weight-normalised last layer (v, g) starts equal in both. teacher_cls_init="copy" makes the
    teacher head an exact copy (the textbook form).
    """
    cfg = model_config(config)
    student = MatpacModel(cfg, rngs=rngs)
    reference_cls = cfg.teacher_cls_init == "reference"
    teacher = Teacher(cfg, cls_mlp_init_std=0.02 if reference_cls else None, rngs=rngs)
    if cfg.teacher_init == "copy":
        _copy_into(teacher.encoder, student.student)
    if reference_cls:
        _copy_into(teacher.cls_head.last_layer, student.cls_head.last_layer)
    else:
        _copy_into(teacher.cls_head, student.cls_head)
    return student, teacher


def forward(
    student: MatpacModel,
    teacher: Teacher,
    x: jax.Array,
    visible_idx: jax.Array,
    masked_idx: jax.Array,
):
    """One MATPAC++ pass: predictions and targets for the masked patches, row j <-> masked_idx[:, j].

    Args:
      student, teacher: from `build` (or nnx.merge of their split states).
      x: (B, F, T) log-mels.
      visible_idx: (B, Nv) int visible token indices (student input order).
      masked_idx: (B, Nm) int masked token indices (teacher input and prediction order).

    Returns:
      z_hat (B, Nm, K, D) float32, z_m (B, Nm, D) float32 (no gradient), aux {"z_v": (B, 1+Nv, D)}.
    """
    grid = student.grid(x.shape)
    tokens = student.embed(x)
    z_v, _ = student.encode(tokens, visible_idx)
    z_hat, _ = student.predict(z_v, visible_idx, masked_idx, grid)
    z_m, _ = teacher.encode(tokens, masked_idx, cls=student.cls_token[...])
    return z_hat, z_m, {"z_v": z_v}
