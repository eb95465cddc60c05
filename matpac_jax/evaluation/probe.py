"""Linear-probe evaluation of an encoder on labelled audio tasks (docs/method.md section 8).

Usage::

    python -m matpac_jax.evaluation.probe --encoder SPEC --task_csv T.csv [--task_csv U.csv ...] --out OUT
        [--protocol grid|evar | --lr LR] [--clip_seconds S] [--seeds 3] [--audio_root DIR]
        [--cache DIR] [--multilabel]
    python -m matpac_jax.evaluation.probe table OUT1 OUT2 ... [--names A B ...] [--out FILE]
    python -m matpac_jax.evaluation.probe compare OUT_A OUT_B [--names A B] [--resamples N]

SPEC is what `matpac_jax.inference.encoder.load_encoder` takes: an export folder, a training workdir,
`random[:VARIANT]` or `logmel`. Task CSVs, clips and the embedding cache: `probe_data`.

The classifier protocol is `probe_lib.evaluate` (see `docs/probe.md`): `--protocol grid` (the
default) trains the learning rates of `probe_lib.LR_GRID` together and keeps, per seed and fold,
the one with the best validation score; `--protocol evar` trains at the papers' fixed 3e-5 (to
reproduce published tables); `--lr LR` trains at LR alone. Writes `OUT/report.json`,
`OUT/report.md` (`probe_report`), every run's test logits (`OUT/predictions_TASK.npz`) and, for
single-label tasks, `OUT/confusion_TASK.png`. `compare` sets two encoders' reports side by side,
task by task: the difference, its 95% interval over the test clips (a paired bootstrap) and the
classifier seeds (`paired`), and which is better where the interval excludes 0. Data that
make a score misleading (a class with fewer than two training clips, a tested class never
trained on, a classifier still improving at the epoch cap) are warned about on stderr and listed
under `warnings` in the report.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np

from matpac_jax import cli
from matpac_jax.evaluation import paired
from matpac_jax.evaluation import report as probe_report
from matpac_jax.evaluation import tasks as probe_data
from matpac_jax.evaluation.tasks import shown

# probe_lib (jax, sklearn) and inference are imported inside the functions that need them, so
# that a mistake in the inputs is answered before those slow imports.

PROG = probe_report.COMMAND


# ---------------------------------------------------------------------------------------------
# Warnings about data that make a score misleading.


def data_warnings(task: probe_data.Task) -> list[str]:
    """Classes with fewer than two training clips, or tested but never trained on, per fold."""
    y = task.targets()
    onehot = y > 0 if task.multilabel else np.eye(len(task.classes), dtype=bool)[y]
    return probe_report.class_warnings(
        onehot, task.partitions(), task.classes, task.partition_names()
    )


def warn(task: str, message: str) -> None:
    """One warning line on stderr."""
    print(f"{PROG}: warning: {task}: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Running.


def run(
    spec: str,
    task_csvs: list[str],
    out: str,
    *,
    clip_seconds: float | None = None,
    seeds: int = 3,
    audio_root: str | None = None,
    cache_dir: str | None = None,
    multilabel: bool | None = None,
    featurizer=None,
    cfg=None,
) -> dict:
    """Probes `spec` on every task and writes OUT/report.json, report.md and confusion PNGs.

    The task CSVs, audio files and encoder are checked before anything is written. If probing
    fails, OUT is removed when this run created it and it holds no embedding cache.

    Args:
      featurizer: an object with `.embed(audio, sample_rate)`; None ->
        `inference.load_encoder(spec)`, loaded only if some embeddings are not cached.
      cfg: see `config`; None -> the grid protocol.

    Raises:
      cli.UserError: a bad input (task CSV, audio file, encoder spec, unwritable output).
    """
    out = cli.output_dir(out)
    cache_dir = cli.output_dir(cache_dir or os.path.join(out, "cache"))
    tasks = [probe_data.read_task(t, audio_root, multilabel) for t in task_csvs]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise cli.UserError(
            f"task CSVs share a file name ({', '.join(names)}): the name is the task"
        )
    secs = [clip_seconds or probe_data.median_seconds(t.paths) for t in tasks]
    files = [probe_data.cache_file(t, spec, s, cache_dir) for t, s in zip(tasks, secs)]
    if featurizer is None and not all(map(os.path.exists, files)):
        from matpac_jax.inference import encoder as inference  # pylint: disable=g-import-not-at-top (jax: see the note above PROG)

        featurizer = inference.load_encoder(spec)
    # Warned once every input is known good, so a mistake is still answered by one line.
    warnings = {t.name: data_warnings(t) for t in tasks}
    for t in tasks:
        for w in warnings[t.name]:
            warn(t.name, w)
    cfg = config(cfg)  # before the embedding work: a wrong field fails fast
    embeddings = [probe_data.cached_embeddings(*a, featurizer)[0] for a in zip(tasks, files, secs)]
    with cli.removed_on_failure(out):
        cli.make_dir(out)
        entries = []
        for task, emb, s in zip(tasks, embeddings, secs):
            entry = probe_task(task, emb, spec, s, seeds, cfg, out, warnings[task.name])
            score = f"{entry['metric']} {probe_report.score_text(entry)}"
            lr, secs = probe_report.chosen_text(entry), entry["probe_seconds"]
            print(f"{task.name}: {score} (lr {lr}, {secs} s)")
            entries.append(entry)
        report = {"encoder": spec, "protocol": protocol_record(cfg), "tasks": entries}
        probe_report.write_report(out, report)
    return report


def protocol_record(cfg) -> dict:
    """report.json's `protocol`: the name (`grid`, `evar`, `fixed`) and every field of `cfg`."""
    record = {"name": cfg.protocol, **dataclasses.asdict(cfg)}
    record["learning_rates"] = list(cfg.learning_rates)  # as report.json will read back
    return record


def config(cfg=None):
    """The `probe_lib.ProbeConfig` that `run`'s `cfg` names.

    Args:
      cfg: None or "grid" -> the grid protocol (`probe_lib.GRID`); "evar" -> the papers' fixed
        lr 3e-5 (`probe_lib.EVAR`); a dict -> the grid protocol with these fields overridden
        (`{"learning_rates": [1e-3]}`: one lr); a `ProbeConfig` as it is.
    """
    from matpac_jax.evaluation import protocol as probe_lib  # pylint: disable=g-import-not-at-top (jax: see the note above PROG)

    if isinstance(cfg, probe_lib.ProbeConfig):
        return cfg
    if cfg is None or isinstance(cfg, str):
        named = {"grid": probe_lib.GRID, "evar": probe_lib.EVAR}
        if (cfg or "grid") not in named:
            raise ValueError(f"protocol {cfg!r}: known: {', '.join(named)}")
        return named[cfg or "grid"]
    return dataclasses.replace(probe_lib.GRID, **cfg)


def probe_task(task, emb, spec, clip_seconds, seeds, cfg, out, warnings) -> dict:
    """The report entry of one task (its confusion PNG written to `out`)."""
    from matpac_jax.evaluation import protocol as probe_lib  # pylint: disable=g-import-not-at-top (jax: see the note above PROG)

    start = time.time()
    partitions = task.partitions()
    try:
        result = probe_lib.evaluate(
            emb,
            task.targets(),
            partitions,
            num_classes=len(task.classes),
            seeds=tuple(range(seeds)),
            cfg=cfg,
            known=task.known(),
            keep_logits=True,
        )
    except probe_lib.DataError as e:
        raise cli.UserError(f"{task.name}: {e}") from e
    # Every run's test logits, for a paired comparison with another encoder (`paired`).
    tests = [p.test for p in partitions]
    predictions = paired.write_predictions(
        out, task.name, task.paths, tests, task.targets(), task.known(), result.pop("test_logits")
    )
    capped = probe_report.cap_warnings(result, list(range(seeds)), task.partition_names(), cfg)
    for w in capped:
        warn(task.name, w)
    entry = {
        "task": task.name,
        "csv": task.csv,
        "encoder": spec,
        "metric": "mAP" if task.multilabel else "accuracy",
        "multilabel": task.multilabel,
        "classes": task.classes,
        "folds": task.folds() if task.kfold else None,
        "clip_seconds": clip_seconds,
        "embedding_dim": int(emb.shape[1]),
        "seeds": list(range(seeds)),
        **result,
        "probe_seconds": round(time.time() - start, 2),
        "warnings": warnings + capped,
        "predictions": predictions,
    }
    if not task.multilabel:
        entry["confusion_png"] = f"confusion_{task.name}.png"
        runs = f"{seeds} seed{'s' * (seeds > 1)}" + (f" x {len(task.folds())} folds" * task.kfold)
        probe_report.plot_confusion(
            np.array(result["confusion"]),
            task.classes,
            os.path.join(out, entry["confusion_png"]),
            title=f"{task.name}, encoder {spec}: {entry['metric']} {probe_report.cell(entry)} %\n"
            f"test counts summed over {runs}, protocol {cfg.protocol}",
        )
    return entry


# ---------------------------------------------------------------------------------------------
# Command line.


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        PROG,
        __doc__,
        epilog=f"Compare reports: {PROG} table OUT1 OUT2 ...; {PROG} compare OUT_A OUT_B (--help)",
    )
    p.add_argument("--encoder", required=True, help="export dir, workdir, random[:VARIANT], logmel")
    p.add_argument("--task_csv", required=True, action="append", help="repeat for several tasks")
    p.add_argument("--out", required=True, help="folder for report.json, report.md, PNGs")
    p.add_argument("--clip_seconds", type=float, help="default: each task's median duration")
    p.add_argument("--seeds", type=int, default=3, help="classifier seeds 0..N-1")
    p.add_argument("--audio_root", help="folder the CSV paths are relative to")
    p.add_argument("--cache", help="embedding cache folder (default OUT/cache)")
    p.add_argument("--multilabel", action="store_true", help="force multi-label (else: any ';')")
    p.add_argument(
        "--protocol",
        choices=("grid", "evar"),
        help="grid (default): lr chosen on validation per seed and fold; evar: the papers' 3e-5",
    )
    p.add_argument("--lr", type=float, help="train at this Adam learning rate alone (no grid)")
    return p


def _check_numbers(args) -> None:
    if args.seeds < 1:
        raise cli.UserError(f"--seeds {args.seeds}: must be at least 1")
    if args.lr is not None and not args.lr > 0:
        raise cli.UserError(f"--lr {args.lr:g}: must be greater than 0")
    if args.lr is not None and args.protocol == "grid":
        raise cli.UserError(
            f"--lr {args.lr:g} trains at one learning rate, --protocol grid chooses one: drop one"
        )
    if args.clip_seconds is not None and not args.clip_seconds > 0:
        raise cli.UserError(f"--clip_seconds {args.clip_seconds:g}: must be greater than 0")


def _probe_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    _check_numbers(args)
    # Every path made absolute and checked here, before the slow imports and any embedding.
    task_csvs = [cli.input_file(t, "--task_csv", what="task CSV") for t in args.task_csv]
    audio_root = args.audio_root and cli.input_dir(args.audio_root, "--audio_root")
    out = cli.output_dir(args.out, "--out")
    cache = args.cache and cli.output_dir(args.cache, "--cache")
    run(
        args.encoder,
        task_csvs,
        out,
        clip_seconds=args.clip_seconds,
        seeds=args.seeds,
        audio_root=audio_root,
        cache_dir=cache,
        multilabel=args.multilabel or None,
        cfg=args.protocol if args.lr is None else {"learning_rates": [args.lr]},
    )
    print(f"-> {shown(os.path.join(out, 'report.md'))}")
    return 0


def _table_main(argv: list[str]) -> int:
    p = cli.ArgumentParser(f"{PROG} table", "Markdown table of probe reports: encoders x tasks.")
    p.add_argument("reports", nargs="+", help="OUT folders (or report.json files)")
    p.add_argument("--names", nargs="+", help="column titles (default: encoder specs)")
    p.add_argument("--out", help="also write the table to this file")
    args = p.parse_args(argv)
    out = args.out and cli.output_file(args.out, "--out")
    if args.names and len(args.names) != len(args.reports):
        raise cli.UserError(f"--names: {len(args.names)} names for {len(args.reports)} reports")
    table = probe_report.render_table(
        [probe_report.load_report(r) for r in args.reports], args.names
    )
    if out:
        cli.make_dir(os.path.dirname(out))
        with open(out, "w") as f:
            f.write(table)
    print(table, end="")
    return 0


def _compare_main(argv: list[str]) -> int:
    p = cli.ArgumentParser(
        f"{PROG} compare",
        "Two encoders' probe reports, task by task: the difference of their scores with its 95% "
        "interval (a paired bootstrap over the shared test clips, combined with both reports' "
        "seed intervals) and which is better where that interval excludes 0.",
    )
    p.add_argument("reports", nargs=2, metavar=("OUT_A", "OUT_B"), help="folders or report.json")
    p.add_argument("--names", nargs=2, metavar=("A", "B"), help="default: the encoder specs")
    p.add_argument("--resamples", type=int, default=paired.RESAMPLES, help="bootstrap draws")
    args = p.parse_args(argv)
    if args.resamples < 2:
        raise cli.UserError(f"--resamples {args.resamples}: must be at least 2")
    reports = [probe_report.load_report(r) for r in args.reports]
    names = args.names or [r["encoder"] for r in reports]
    compared = paired.compare_reports(
        args.reports[0], reports[0], args.reports[1], reports[1], resamples=args.resamples
    )
    if not compared:
        raise cli.UserError(f"{args.reports[0]} and {args.reports[1]} share no task")
    lines = [
        f"| task | {names[0]} | {names[1]} | difference | test clips | seeds | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    unpaired = False
    for task, (a, b, c) in compared.items():
        unpaired |= c["clips"] is None
        clips = "–" if c["clips"] is None else f"± {100 * c['clips']:.1f} ({c['n_test']:,})"
        lines.append(
            f"| {task} ({a['metric']}) | {probe_report.cell(a)} | {probe_report.cell(b)} | "
            f"{100 * c['difference']:+.1f} ± {100 * c['half']:.1f} | {clips} | "
            f"± {100 * c['seeds']:.1f} | {paired.verdict(c, names[0], names[1])} |"
        )
    lines += [
        "",
        f"Points; difference: {names[0]} - {names[1]} ± its 95% half-width, sqrt(test clips² + seeds²): the test "
        f"clips' part from {args.resamples:,} paired bootstrap draws (the same clips for both "
        "encoders), the seeds' part from both reports' intervals over classifier seeds."
        + ("" if not unpaired else " –: no test predictions stored in a report (written "
           "before they were): that row's interval covers the seeds alone; probe again to add "
           "them."),
    ]  # fmt: skip
    print("\n".join(lines))
    return 0


def _main(argv) -> int:
    argv = list(argv)
    if argv[:1] == ["table"]:
        return _table_main(argv[1:])
    if argv[:1] == ["compare"]:
        return _compare_main(argv[1:])
    return _probe_main(argv)


def main(argv=None) -> int:
    """`python -m matpac_jax.evaluation.probe [table] ...`; returns the exit status."""
    return cli.run(_main, sys.argv[1:] if argv is None else list(argv), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
