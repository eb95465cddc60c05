r"""Pretrains MATPAC / MATPAC++: the one trainer.

  python -m matpac_jax.train --config=configs/matpac_pp.py:runlocal --workdir=runs/local
  python -m matpac_jax.train --config=configs/matpac_pp.py:variant=B \
      --config.data.dir=/data/mels --workdir=/ckpt/b --config.total_steps=300

Builds, in order: data, mesh, model and state, the jitted step, the checkpoint manager; then
runs the loop. Restarting with the same workdir resumes from the newest finished checkpoint
(state and input position), and the continuation is identical to an uninterrupted run. SIGTERM
(preemption) saves a checkpoint after the current step and exits 0.

Multi-process (docs/launching.md): every process runs this same command and reads its own
slice of the data; `--coordinator_address/--num_processes/--process_id` name the layout
(launch/local_multiprocess.sh sets them), srun and Cloud TPU VMs are detected. Process 0 alone
holds the workdir lock and writes logs and metrics; the processes write one checkpoint together.
"""

from __future__ import annotations

import dataclasses
import json
import logging as pylogging
import math
import os
import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from matpac_jax import cli, config_lib, models, storage
from matpac_jax.audio import frontend as audio
from matpac_jax.audio import shards
from matpac_jax.data import demo
from matpac_jax.data import pipeline as input_pipeline
from matpac_jax.inference import export
from matpac_jax.objective import optimizer, schedules
from matpac_jax.train import distributed, sharding
from matpac_jax.train import evals as train_evals
from matpac_jax.train import loop as loop_lib
from matpac_jax.train import step as ts

PROG = "python -m matpac_jax.train"

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, logs and the export go")
flags.mark_flags_as_required(["config", "workdir"])
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    distributed.MODES,
    "join a multi-process run: auto = when --coordinator_address is given, under a multi-task "
    "srun or Open MPI, on a Cloud TPU VM; on = always (JAX detects the layout); off = never",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (an explicit multi-process layout)"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the explicit layout")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process in the explicit layout")
_DEBUG = flags.DEFINE_bool(
    "debug", False, f"show the traceback of a usage error (or set {cli.DEBUG_ENV}=1)"
)
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s",
    distributed.HEARTBEAT_TIMEOUT_S,
    "multi-process: a process silent this long is dead, and the others exit non-zero",
)


def resolve_data_dir(config) -> str:
    """The configured shard directory, or the demo corpus's (made and preprocessed once)."""
    if config.data.dir:
        return cli.abspath(config.data.dir)

    return demo.pretraining_shards(cli.abspath(config.data.demo_cache))


def compute_dtype(name: str) -> str:
    if name != "auto":
        return name
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"  # bf16 is slow on CPUs


def check_config(config) -> None:
    """Refuses values that would fail late or train silently wrong; cli.UserError names the fix.

    Runs before any work (no data is made or read, no model is built).
    """
    if config.model.variant not in models.VARIANTS:
        raise cli.UserError(
            f"--config.model.variant={config.model.variant!r}: unknown; known: "
            f"{', '.join(models.VARIANTS)}"
        )
    loop_lib.check_run_config(config)
    if not 0.0 <= config.loss.alpha <= 1.0:
        raise cli.UserError(f"--config.loss.alpha={config.loss.alpha}: must be in [0, 1]")
    choices = {
        "model.teacher_init": ("independent", "copy"),
        "model.teacher_cls_init": ("reference", "copy"),
        "loss.alpha_weighting": ("reference", "weights"),
        "loss.center_on": ("probs", "logits"),
        "data.normalization": ("fixed", "corpus"),
    }
    for key, allowed in choices.items():
        section, name = key.split(".")
        if config[section][name] not in allowed:
            raise cli.UserError(
                f"--config.{key}={config[section][name]!r}: allowed: {', '.join(allowed)}"
            )
    try:  # the variant's sizes with the config's own over them
        models.model_config({"variant": config.model.variant, **_model_sizes(config)})
    except ValueError as e:
        raise cli.UserError(f"--config.{e}") from None
    if config.data.dir:
        data_dir = cli.input_dir(config.data.dir, "--config.data.dir", url=True)
        if not storage.exists(storage.join(data_dir, shards.INDEX_NAME)):
            raise cli.UserError(
                f"--config.data.dir {config.data.dir}: no {shards.INDEX_NAME}, not a folder of "
                "log-mel shards; make one with python -m matpac_jax.audio.preprocess"
            )
    train_evals.check_config(config)


def run_schedules(config, num_records: int) -> tuple[schedules.Schedules, dict]:
    """Converts the config's epochs into steps for this corpus (docs/method.md, section 5)."""
    steps_per_epoch = num_records / config.batch_size
    if config.total_steps is not None:
        total = config.total_steps
    else:
        total = int(config.total_epochs * steps_per_epoch)
    if total < 1:
        raise cli.UserError(
            f"{num_records} records at batch {config.batch_size} for {config.total_epochs} "
            "epochs give no step: set --config.total_steps or --config.total_epochs"
        )
    warmup = min(int(config.optim.warmup_epochs * steps_per_epoch), total)
    tau_warmup = min(int(config.loss.teacher_temp_warmup_epochs * steps_per_epoch), total)
    decay = config.loss.mcl_decay
    if config.loss.mcl_decay_from_run_length:
        decay = schedules.mcl_decay_for_run(
            total, config.loss.mcl_switch_fraction, config.loss.mcl_t0, config.loss.mcl_threshold
        )
    sched = schedules.Schedules(
        total_steps=total,
        lr_warmup_steps=warmup,
        tau_warmup_steps=tau_warmup,
        peak_lr=config.optim.peak_lr,
        encoder_ema=tuple(config.ema.encoder),
        cls_head_ema=tuple(config.ema.cls_head),
        teacher_tau=tuple(config.loss.teacher_temp),
        mcl_t0=config.loss.mcl_t0,
        mcl_decay=decay,
        mcl_threshold=config.loss.mcl_threshold,
    )
    info = {
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "lr_warmup_steps": warmup,
        "tau_warmup_steps": tau_warmup,
        "mcl_decay": decay,
        "hard_wta_step": schedules.hard_wta_step(
            config.loss.mcl_t0, decay, config.loss.mcl_threshold
        ),
    }
    return sched, info


def resolve_normalization(config, index: dict, data_dir: str) -> None:
    """`data.normalization = "corpus"`: data.mean/std become the shards' own statistics.

    Everything downstream (the input pipeline, run.json, the export, the evaluators) then reads
    the resolved numbers, so an exported encoder normalises as its training did.
    """
    if config.data.normalization == "fixed":
        return
    if index.get("mean") is None or index.get("std") is None:
        raise cli.UserError(
            f"--config.data.normalization=corpus: {data_dir}/{shards.INDEX_NAME} records no "
            "mean and std (made by an older preprocess?): re-run python -m matpac_jax.audio.preprocess "
            "or set --config.data.normalization=fixed with --config.data.mean/std"
        )
    mean, std = float(index["mean"]), float(index["std"])
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise cli.UserError(
            f"--config.data.normalization=corpus: the shards of {data_dir} have mean {mean} and "
            f"std {std}; they hold non-finite or constant log-mels (see its {shards.REPORT_NAME})"
        )
    config.data.mean, config.data.std = mean, std


def _model_sizes(config) -> dict:
    """The sizes the config sets over its variant's (config_lib.MODEL_SIZE_KEYS; None: unset)."""
    m = config.model
    return {k: m[k] for k in config_lib.MODEL_SIZE_KEYS if m.get(k) is not None}


def model_config(config, data_index: dict) -> models.ModelConfig:
    m = config.model
    return models.model_config(
        {
            **_model_sizes(config),
            "variant": m.variant,
            "num_mcl_heads": m.num_mcl_heads,
            "cls_hidden": m.cls_hidden,
            "cls_bottleneck": m.cls_bottleneck,
            "cls_out": m.cls_classes,
            "teacher_init": m.teacher_init,
            "teacher_cls_init": m.teacher_cls_init,
            "freeze_wn_gain": m.freeze_wn_gain,
            "n_mels": data_index["front_end"]["n_mels"],
            "max_frames": config.data.crop_frames,
            "dtype": compute_dtype(m.compute_dtype),
            "remat": m.remat,
        }
    )


def encoder_params(params: dict) -> dict:
    """The student encoder's part of the parameters: what inference needs."""
    return {k: params[k] for k in ("patch_embed", "cls_token", "student")}


def train(config, workdir: str) -> loop_lib.RunResult:
    """Runs (or resumes) pretraining in `workdir` (made absolute here).

    A start that fails (a bad config or data, a locked workdir) leaves no workdir behind that
    did not exist before.
    """
    check_config(config)
    return loop_lib.in_workdir(
        workdir, "trainer", lambda workdir, started: _train_locked(config, workdir, started)
    )


def _train_locked(config, workdir, started) -> loop_lib.RunResult:
    process, num_processes = jax.process_index(), jax.process_count()
    # ---------------------------------------------------------------- data
    data_dir = resolve_data_dir(config)
    index = shards.load_index(data_dir)
    input_pipeline.check_crop(index, config.data.crop_frames, crop_flag="--config.data.crop_frames")
    resolve_normalization(config, index, data_dir)
    # ---------------------------------------------------------------- resume
    # Before any work: a config the checkpoints cannot continue under is a one-line error.
    changed = loop_lib.resume_changes(workdir, config)
    # ---------------------------------------------------------------- mesh
    loop_lib.log_runtime(config, compute_dtype(config.model.compute_dtype))
    mesh = loop_lib.make_mesh(config)
    rows = sharding.process_rows(mesh, config.batch_size)
    logging.info(
        "mesh %s over %d processes (%d devices each); this process loads rows %s",
        dict(mesh.shape),
        num_processes,
        jax.local_device_count(),
        sharding.describe_rows(rows),
    )
    # The global batches are a function of (seed, step) alone; this process loads its rows.
    dataset = input_pipeline.pretraining_dataset(
        data_dir,
        batch_size=config.batch_size,
        crop_frames=config.data.crop_frames,
        seed=config.seed,
        mean=config.data.mean,
        std=config.data.std,
        rows=rows,
        read_threads=config.data.read_threads,
    )
    data_iter = input_pipeline.InputIterator(dataset, config.data.num_workers)
    sched, sched_info = run_schedules(config, index["num_records"])
    total_steps = sched_info["total_steps"]
    logging.info("data: %s (%d records); schedule: %s", data_dir, index["num_records"], sched_info)

    # ---------------------------------------------------------------- model and state
    model_cfg = model_config(config, index)
    tx = optimizer.make_optimizer(config.optim, sched.lr)
    init = lambda key: ts.init_state(key, model_cfg, tx)  # noqa: E731
    abstract = jax.eval_shape(init, jax.random.key(0))
    state_sharding = sharding.state_shardings(abstract, mesh, config.fsdp_min_size)
    total_bytes, device_bytes = sharding.state_bytes(abstract, state_sharding)
    logging.info(
        "train state %.1f MiB, %.1f MiB per device", total_bytes / 2**20, device_bytes / 2**20
    )
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding
    )

    # ---------------------------------------------------------------- step
    step_fn = jax.jit(
        ts.make_train_step(model_cfg, ts.StepConfig.from_config(config), sched, tx, config.seed),
        in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
        # Metrics on every device: each process reads them (identical everywhere), so all
        # take the same decisions (non-finite stop) without talking to each other.
        out_shardings=(state_sharding, sharding.replicated(mesh)),
        donate_argnums=0,
    )

    # ---------------------------------------------------------------- evaluators
    # Tasks and their log-mels are read here, on process 0 (which alone scores); the other
    # processes wait for it at a barrier (matpac_jax/train/evals.py).
    evals = train_evals.TrainingEvals(
        config,
        model_cfg,
        audio.FrontEnd(**index["front_end"]),
        mesh,
        total_steps,
        write=process == 0,
    )

    # ---------------------------------------------------------------- checkpoints
    def initial_state():
        return jax.jit(init, out_shardings=state_sharding)(
            jax.random.fold_in(jax.random.key(config.seed), 1)
        )

    ckpt, state, start, writer = loop_lib.start_state(
        workdir,
        config,
        mesh,
        abstract,
        data_iter,
        initial_state,
        {
            "model": dataclasses.asdict(model_cfg),
            "schedule": sched_info,
            "data_records": index["num_records"],
        },
        changed,
    )

    # ---------------------------------------------------------------- loop
    # Step 0 once: a fresh start after an attempt that never checkpointed finds its row there.
    # It scores the run's initial weights: the baseline every later evaluation is set against
    # (eval_baselines.json's "init", with the log-mel statistics' scores).
    row = None
    if start == 0 and evals.due(0):
        row = evals(state)
        logging.info("step 0: %s", train_evals.summary(row))
        if process == 0 and not train_evals.step_logged(workdir, 0):
            writer.write(0, row)
    evals.write_baselines(workdir, config.seed, initial_state, step0=row)

    def evaluate(state, step):
        scores = evals(state)
        logging.info("step %d: %s", step, train_evals.summary(scores))
        return scores

    def finish(state):
        export.export_encoder(
            workdir, encoder_params(state["params"]), _export_config(model_cfg, index, config)
        )

    loop = loop_lib.Loop(
        config, step_fn, data_iter, mesh, ckpt, writer, total_steps, evals.due, evaluate
    )
    return loop_lib.run_loop(loop, state, start, started, finish)


def _export_config(model_cfg, index, config) -> dict:
    return {
        "model": dataclasses.asdict(model_cfg),
        "front_end": index["front_end"],
        "normalization": {"mean": config.data.mean, "std": config.data.std},
        "crop_frames": config.data.crop_frames,
    }


class _QuietLibraries:
    """absl log filter: orbax and tensorstore narrate every save at INFO; keep warnings."""

    def filter(self, record) -> bool:
        noisy = any(name in record.pathname for name in ("/orbax/", "/tensorstore/"))
        return record.levelno >= pylogging.WARNING or not noisy


_HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def parse_flags(argv: list[str], prog: str = PROG) -> list[str]:
    """absl's flag parsing with the CLI boundary's manners: a usage or config mistake is one
    line and exit 2; asking for help is exit 0 (absl exits 1)."""
    debug = cli.debug_requested(argv[1:])
    try:
        config_lib.check_config_file(argv[1:])
        rest = flags.FLAGS(argv)
        _CONFIG.value  # config files load lazily: make their errors surface here
    except SystemExit:
        if any(a in _HELP_FLAGS for a in argv[1:]):
            sys.exit(0)
        raise
    except Exception as e:  # pylint: disable=broad-except
        # Anything raised while parsing flags comes from the command line or the config file
        # it names (a typo, a bad value, a get_config argument): the user's to fix.
        if debug:
            raise
        sys.exit(cli.fail(prog, config_lib.flag_error(e, argv[1:])))
    if len(rest) > 1:
        sys.exit(cli.fail(prog, f"unexpected arguments {rest[1:]}; flags look like --name=value"))
    return rest


def main(argv, run=train, prog: str = PROG):
    """The command: `run(config, workdir)` (pretraining's `train`, or fine-tuning's) under the
    multi-process start-up, the CLI boundary's error manners and the final summary."""
    del argv
    for handler in (*pylogging.getLogger().handlers, logging.get_absl_handler().python_handler):
        handler.addFilter(_QuietLibraries())
    cli.start_process()
    jax.config.update(
        "jax_compilation_cache_dir",
        os.environ.get("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/matpac_jax/jax")),
    )
    workdir = cli.abspath(_WORKDIR.value)
    try:
        distributed.initialize(
            _DISTRIBUTED.value,
            _COORDINATOR.value,
            _NUM_PROCESSES.value,
            _PROCESS_ID.value,
            heartbeat_timeout_s=_HEARTBEAT.value,
        )
        distributed.check_backend()
        if jax.process_index() != 0:  # process 0 speaks for the run; the others only warn
            logging.set_verbosity(logging.WARNING)
        with distributed.fail_fast():
            result = run(_CONFIG.value, workdir)
    except cli.UserError as e:
        if cli.debug_requested() or _DEBUG.value:
            raise
        sys.exit(cli.fail(prog, e))
    if jax.process_index() != 0:
        return
    if result.metrics:
        print(json.dumps({k: round(v, 6) for k, v in result.metrics.items()}))
    if result.exported:
        print(f"workdir: {workdir} (metrics.jsonl, tensorboard/, checkpoints/, export/)")
    else:
        print(
            f"workdir: {workdir} (metrics.jsonl, tensorboard/, checkpoints/); stopped before the "
            "last step: run the same command again to resume"
        )
