"""Shared pieces of the config files: argument parsing and the pretraining config builder.

Config files stay documentation (their docstring holds the command); the numbers common to
MATPAC and MATPAC++ (docs/method.md, section 5) are written once, here.
"""

from __future__ import annotations

import ast
import importlib.util
import re

import ml_collections
from ml_collections import config_dict

from matpac_jax import cli

# The papers' pretraining data (AudioSet clips >= 6 s); used only to state the paper schedule.
PAPER_NUM_CLIPS = 2_012_615


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses `variant=B,runlocal` into a ConfigDict, typed by `defaults`.

    A bare name sets a boolean to True; unknown keys are an error naming the known ones.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        kind = type(defaults[key])
        if kind is bool:
            out[key] = value.lower() not in ("0", "false", "no") if value else True
        else:
            out[key] = kind(value) if value else value
    return ml_collections.ConfigDict(out)


def load_config(spec: str, flag: str = "--config") -> ml_collections.ConfigDict:
    """`FILE[:ARG]` -> FILE's `get_config(ARG)`, for the tools that take a config outside absl.

    Raises:
      cli.UserError: no such file, or an argument the config file refuses.
    """
    path, _, arg = spec.partition(":")
    path = cli.input_file(path, flag, what="config file")
    module_spec = importlib.util.spec_from_file_location("matpac_user_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise cli.UserError(f"{flag} {spec}: the file defines no get_config(arg)")
    try:
        return module.get_config(arg or None)
    except ValueError as e:  # parse_arg's unknown or malformed argument
        raise cli.UserError(f"{flag} {spec}: {e}") from None


def apply_overrides(config: ml_collections.ConfigDict, args: list[str]) -> list[str]:
    """Applies `--config.a.b=VALUE` arguments (the trainer's override syntax) to `config`.

    VALUE is read as a Python literal (4, 1e-3, True, 4,4 for a tuple, None) or else taken as a
    string; the config's own field types check it. For the tools that do not parse with absl.

    Returns:
      The arguments that are not config overrides, in order.

    Raises:
      cli.UserError: an unknown key, a missing `=`, or a value of the wrong type.
    """
    rest = []
    for arg in args:
        if not arg.startswith("--config."):
            rest.append(arg)
            continue
        dotted, eq, text = arg.removeprefix("--config.").partition("=")
        if not eq:
            raise cli.UserError(f"{arg}: config overrides look like --config.{dotted}=VALUE")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *parents, name = dotted.split(".")
        node = config
        for i, part in enumerate(parents + [name]):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else ""
                where = ".".join((parents + [name])[:i]) or "the config"
                raise cli.UserError(
                    f"--config.{dotted}: no such config key; keys in {where}: {known}"
                )
            if i < len(parents):
                node = node[part]
        try:
            node[name] = value
        except TypeError as e:
            raise cli.UserError(f"--config.{dotted}={text}: {e}") from None
    return rest


def check_config_file(args: list[str]) -> None:
    """`--config=FILE[:ARG]` must name an existing file (absl's own error is a page long)."""
    for i, a in enumerate(args):
        value = a.partition("=")[2] if a.startswith("--config=") else None
        if a == "--config" and i + 1 < len(args):
            value = args[i + 1]
        if value:
            cli.input_file(value.partition(":")[0], "--config", what="config file")


def flag_error(e: Exception, args: list[str]) -> str:
    """One line from what absl and ml_collections raise for a bad flag, config file or override.

    ml_collections puts the useful part last (its traceback of the config file, then the
    exception) or inside a repr ('key'\\nDid you mean ...); both are flattened here.
    """
    text = str(e).replace("\\n", "\n").replace("\\'", "'")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if isinstance(e, AttributeError):  # an override of a key that does not exist
        return _unknown_key_error(lines[0].strip("'\" "), text, args)
    if "Error whilst parsing config file" in lines[0]:
        flag = lines[0].split(": Error whilst")[0]
        return f"{flag}: {lines[-1]}"
    return " ".join(lines)


def _unknown_key_error(key: str, text: str, args: list[str]) -> str:
    """`--config.a.b.KEY: no such config key`, with ml_collections' suggestion or the keys
    that exist beside it."""
    flag = next(
        (a.split("=")[0] for a in args if re.search(rf"^--config\.(\w+\.)*{key}(=|$)", a)), ""
    )
    dotted = flag.removeprefix("--config.")
    suggestion = re.search(r'Did you mean "(\w+)"', text)
    if suggestion:
        near = f"did you mean {dotted.rsplit('.', 1)[0] + '.' if '.' in dotted else ''}"
        return f"--config.{dotted or key}: no such config key; {near}{suggestion.group(1)}?"
    section = _config_section(args, dotted.rsplit(".", 1)[0] if "." in dotted else "")
    known = f"; keys there: {', '.join(sorted(section))}" if section else ""
    return f"--config.{dotted or key}: no such config key{known}"


def _config_section(args: list[str], dotted: str) -> list[str]:
    """The keys of config section `dotted` ("" for the top), loaded without the overrides."""
    spec = next((a.partition("=")[2] for a in args if a.startswith("--config=")), "")
    try:
        config = load_config(spec)
        for part in filter(None, dotted.split(".")):
            config = config[part]
        return list(config.keys())
    except Exception:  # pylint: disable=broad-except
        return []  # only a hint: the error message stands without it


# Defaults of the probe evaluators (matpac_jax/evaluation/evaluators.py), in its CLI and in the configs.
EVAL_KNN_K = 20
EVAL_KNN_TEMPERATURE = 0.07  # DINO's: the nearest neighbours dominate the vote
EVAL_LINEAR_MAX_TRAIN = 512

# Model sizes a config may set over its variant's (names of models.ModelConfig fields, which
# checks them).
MODEL_SIZE_KEYS = ("width", "depth", "num_heads", "pred_width", "pred_depth", "pred_num_heads")


def pretraining_config(
    *, variant: str, runlocal: bool, num_mcl_heads: int, mcl: bool, small: bool = False
) -> ml_collections.ConfigDict:
    """the pretraining config of docs/method.md (batch 2048, 300 epochs), or a CPU recipe.

    Args:
      variant: model size for `matpac_jax.models.decode_variant` ("Ti", "S", "B"; "mu" tiny).
      runlocal: a few-minute CPU run on the demo corpus with a tiny model.
      small: the ~30-minute CPU recipe (the "XS" model; on the demo corpus by default).
      num_mcl_heads: K prediction heads (5 for MATPAC++, 1 for MATPAC).
      mcl: annealed winner-takes-all over the K heads (False: plain loss).
    """
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dir = config_dict.placeholder(str)  # None: the demo corpus, made on first use
    c.data.demo_cache = "~/.cache/matpac_jax/demo"
    c.data.crop_frames = 608
    c.data.num_mels = 80
    # "fixed": normalise by data.mean/std below, AudioSet's log-mel statistics (the papers');
    # "corpus": by the training shards' own (index.json), written back into data.mean/std.
    c.data.normalization = "fixed"
    c.data.mean = -7.056
    c.data.std = 4.193
    c.data.num_workers = 4
    # Records of a batch read at once by each reading process (docs/PERFORMANCE.md, "Pods and
    # clusters"): what keeps a host fed when every read takes tens of ms (GCS, gcsfuse, NFS);
    # at least a process's rows of a batch (batch 2048 on 32 v5p hosts: 64). With workers it
    # costs nothing on a local disk; in-process (num_workers 0) 1 is faster there.
    c.data.read_threads = 64

    c.model = ml_collections.ConfigDict()
    c.model.variant = variant
    # Sizes: unset takes the variant's (models.decode_variant); set, they override it, e.g.
    # --config.model.depth=4 --config.model.pred_depth=2 for a shallower model.
    for name in MODEL_SIZE_KEYS:
        c.model[name] = config_dict.placeholder(int)
    c.model.num_mcl_heads = num_mcl_heads
    c.model.mask_ratio = 0.7
    c.model.cls_hidden = 2048
    c.model.cls_bottleneck = 256
    c.model.cls_classes = 2048
    c.model.teacher_init = "independent"  # quirk of the reference; "copy" is the textbook form
    # quirk: the teacher cls head's MLP keeps normal(0.02) weights, the student's is xavier;
    # "copy" starts the teacher head as an exact copy of the student's.
    c.model.teacher_cls_init = "reference"
    c.model.freeze_wn_gain = False  # quirk: the reference trains the weight-norm gain
    c.model.compute_dtype = "auto"  # bfloat16 on accelerators, float32 on CPU
    c.model.remat = False  # recompute each block in the backward pass: less memory, ~1/3 more FLOPs

    c.loss = ml_collections.ConfigDict()
    # quirk: the reference weights both losses 0.5 and alpha only drops one (1: prediction
    # alone, 0: classification alone); alpha_weighting = "weights" gives alpha / 1 - alpha.
    c.loss.alpha = 0.5
    c.loss.alpha_weighting = "reference"
    c.loss.mcl = mcl
    c.loss.mcl_t0 = 0.1
    c.loss.mcl_decay = 0.99997
    c.loss.mcl_threshold = 1e-4
    # With a run length other than the paper's, rescale the decay so that the switch to hard
    # winner-takes-all lands at the same fraction of training (78.1%).
    c.loss.mcl_decay_from_run_length = False
    c.loss.mcl_switch_fraction = 0.781
    c.loss.student_temp = 0.1
    c.loss.teacher_temp = (0.04, 0.07)
    c.loss.teacher_temp_warmup_epochs = 10.0
    c.loss.center_momentum = 0.9
    c.loss.center_on = "probs"  # quirk: the reference centres probabilities; "logits" = DINO

    c.optim = ml_collections.ConfigDict()
    c.optim.peak_lr = 3e-4  # for the global batch below
    c.optim.warmup_epochs = 20.0
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.95, 1e-6
    c.optim.weight_decay = 0.05
    c.optim.decay_all = True  # quirk: decay every parameter; False exempts biases, norms, tokens
    c.optim.grad_clip = 3.0

    c.ema = ml_collections.ConfigDict()
    c.ema.encoder = (0.99995, 0.99999)
    c.ema.cls_head = (0.998, 1.0)

    c.batch_size = 2048  # global: split over every device of every process

    # Devices as a (data, fsdp) mesh (matpac_jax/train/sharding.py); -1 takes the devices left over.
    # The batch is split over both axes; params, teacher and optimiser state over fsdp only.
    # (-1, 1) is plain data parallelism (the paper: 8 GPUs); raise fsdp when the state does not
    # fit on one device (docs/launching.md has the numbers). The learning rate goes with
    # batch_size, not with the mesh: any mesh computes the same step. Override: --config.mesh=4,4
    c.mesh = (-1, 1)
    c.fsdp_min_size = 2**14  # smaller leaves stay replicated (sharding.MIN_FSDP_SIZE; 0: none)
    c.total_epochs = 300.0
    c.total_steps = config_dict.placeholder(int)  # set: overrides total_epochs

    c.log_every = 50
    c.checkpoint_every = 2000
    c.keep_checkpoints = 3
    c.max_consecutive_skips = 20  # non-finite steps in a row before the run stops

    # Probe evaluators during training (matpac_jax/evaluation/evaluators.py): eval/<task>/<metric> rows.
    c.evals = ""  # comma-separated task CSVs or demo:timbre, demo:pitch, demo:event; "" none
    c.eval_every = 0  # steps between evaluations (0: only before the first and after the last)
    c.eval_teacher = False  # also score the teacher encoder (eval/<task>/teacher_<metric>)
    c.eval_protocols = "knn"  # comma-separated: knn (cheap), linear (probe_lib, a subsample)
    c.eval_knn_k = EVAL_KNN_K  # neighbours voting, weighted by exp(cosine / temperature)
    c.eval_knn_temperature = EVAL_KNN_TEMPERATURE
    c.eval_linear_max_train = EVAL_LINEAR_MAX_TRAIN  # training clips of the linear probe
    c.eval_cache = "~/.cache/matpac_jax/eval"  # the eval clips' log-mels, keyed by their files

    if runlocal or small:
        # The CPU recipes of docs/small_scale.md, measured on the demo corpus: slower teachers,
        # a larger classification head, the corpus's own normalisation and a lower mask ratio
        # each kept more of the probe scores and of the teacher classes in use at this scale.
        c.model.variant = "mu" if variant == "B" else variant
        c.model.cls_hidden, c.model.cls_bottleneck, c.model.cls_classes = 64, 32, 1024
        c.model.mask_ratio = 0.5
        c.data.normalization = "corpus"
        c.data.num_workers = 0
        c.data.read_threads = 1  # in-process, from a local disk
        c.batch_size = 32
        c.total_steps = 1500  # a few minutes on 2 CPU cores
        c.optim.peak_lr = 1e-3
        c.optim.warmup_epochs = 1.0
        c.loss.teacher_temp_warmup_epochs = 1.0
        c.loss.mcl_decay_from_run_length = True
        c.ema.encoder = (0.996, 1.0)  # horizon ~250 steps at the start: 1/6 of the run
        c.ema.cls_head = (0.996, 1.0)
        c.log_every = 25
        c.checkpoint_every = 500
        # "auto": the demo tasks when training on the demo corpus (no --config.data.dir).
        c.evals = "auto"
        c.eval_every = 250  # 7 evaluations of 1,500 steps: about 8% of the run
        # The linear probe, not the kNN vote: at the last step it ranks the pretrained encoder,
        # its initial weights and log-mel as the final probe table does (9 of 9 tasks over 3
        # pretraining seeds; kNN 5 of 9), for about the same cost (docs/small_scale.md, section 7).
        c.eval_protocols = "linear"
    if small:
        c.model.variant = "XS" if variant == "B" else variant
        c.model.cls_hidden, c.model.cls_bottleneck = 256, 64
        c.total_steps = 4000  # ~30 minutes on 2 CPU cores
        c.checkpoint_every = 1000
        c.eval_every = 500
        c.eval_protocols = "knn,linear"
    return c
