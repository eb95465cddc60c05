r"""Do a run's learning curves and the final probe table tell the same story?

  python -m matpac_jax.tools.agreement WORKDIR --reports PRETRAINED INIT LOGMEL

WORKDIR is a training run with evaluators (`metrics.jsonl`, `eval_baselines.json`); the three
reports are probe outputs (`python -m matpac_jax.evaluation.probe ... --out DIR`, a folder or
its report.json) of, in this order, the run's encoder, its initial weights (the random-init
twin: the same command stopped before its first update) and the log-mel statistics.

For each task both rank the three encoders: the curves by the run's last evaluation against
its step-0 evaluation (the same initial weights) and the log-mel line, the table by the probes'
means. Prints, per in-training protocol (kNN, linear), one line per task with both rankings and
whether they agree, then one verdict line:

  agreement (linear, step 1500): the curves and the table rank the encoders alike on 3 of 3 tasks

and one line on the decision that matters most, the pretrained encoder against its initial
weights: per task the table's difference with its 95% interval and the verdict, e.g.

  timbre +11.7 ± 4.1 (pretrained better), pitch +2.8 ± 4.6 (undecided)

The interval is `evaluation.paired.compare`'s: a paired bootstrap over the test clips both
reports scored (the same draws for both encoders) combined with the two reports' intervals
over classifier seeds; the line says what it covers (the seeds alone for reports written
before the probe stored its test predictions).

Exit status 0 (whatever the verdict), 2 for a usage error.
"""

from __future__ import annotations

import os
import sys

from matpac_jax import cli
from matpac_jax.evaluation import evaluators
from matpac_jax.evaluation import paired
from matpac_jax.evaluation import report as probe_report
from matpac_jax.train import metrics as metric_writer

PROG = "python -m matpac_jax.tools.agreement"
ROLES = ("pretrained", "init", "log-mel")


def ranking(scores: dict[str, float]) -> tuple[str, ...]:
    """The roles from best to worst (ties: the order of ROLES)."""
    return tuple(sorted(scores, key=lambda r: (-scores[r], ROLES.index(r))))


def curve_scores(rows: list[dict], baselines: dict) -> dict[str, dict[str, dict]]:
    """{protocol: {task: {"step", "scores": {role: value}}}} from the run's last evaluation and
    its baselines (`init`, `logmel`)."""
    out: dict[str, dict[str, dict]] = {}
    last = [r for r in rows if any(k.startswith("eval/") and k != "eval/seconds" for k in r)]
    if not last:
        return out
    row = last[-1]
    for key, value in row.items():
        parts = key.split("/")
        if len(parts) != 3 or key.endswith(evaluators.CI_SUFFIX) or "teacher_" in parts[2]:
            continue
        task, metric = parts[1], parts[2]
        protocol = metric.rsplit("_", 1)[0]
        init, logmel = baselines.get("init", {}).get(key), baselines.get("logmel", {}).get(key)
        if init is None or logmel is None:
            continue
        scores = {"pretrained": value, "init": init, "log-mel": logmel}
        out.setdefault(protocol, {})[task] = {"step": row["step"], "scores": scores}
    return out


def table_entries(reports: list[dict]) -> dict[str, dict[str, dict]]:
    """{task: {role: report entry}} for the tasks in all three reports."""
    by_role = [{e["task"]: e for e in r["tasks"]} for r in reports]
    tasks = [t for t in by_role[0] if all(t in b for b in by_role)]
    return {t: {role: b[t] for role, b in zip(ROLES, by_role)} for t in tasks}


def decisions(compared: dict) -> list[str]:
    """The pretrained-vs-initial-weights line (module docstring), from
    `paired.compare_reports` of the two reports."""
    decided, with_clips, seeds_only = [], None, []
    for task, (_, _, c) in compared.items():
        if c["clips"] is None:
            seeds_only.append(task)
        else:
            with_clips = with_clips or c
        verdict = paired.verdict(c, "pretrained", "initial weights")
        decided.append(f"{task} {100 * c['difference']:+.1f} ± {100 * c['half']:.1f} ({verdict})")
    if not decided:
        return []
    what = [paired.covers(with_clips)] if with_clips else []
    if seeds_only:
        what.append(
            f"the classifier seeds alone on {', '.join(seeds_only)}: a report holds no test "
            "predictions (probe again to store them)"
        )
    return [
        "pretrained vs initial weights in the table (points, ± the 95% interval of the "
        f"difference: {'; '.join(what)}): " + ", ".join(decided)
    ]


def agreement_lines(curves: dict, table: dict, compared: dict) -> list[str]:
    """The per-task lines and the verdicts (module docstring); `table`: `table_entries`,
    `compared`: `paired.compare_reports` of the pretrained and initial-weights reports."""
    lines = []
    for protocol, tasks in sorted(curves.items()):
        shared = [t for t in tasks if t in table]
        if not shared:
            continue
        step = next(iter(tasks.values()))["step"]
        agree = []
        for task in shared:
            c = ranking(tasks[task]["scores"])
            t = ranking({role: e["mean"] for role, e in table[task].items()})
            agree.append(c == t)
            lines.append(
                f"  {task}: curves {' > '.join(c)}; table {' > '.join(t)}"
                f"{'' if c == t else '  (differ)'}"
            )
        lines.append(
            f"agreement ({protocol}, step {step}): the curves and the table rank the encoders "
            f"alike on {sum(agree)} of {len(shared)} tasks"
        )
    return lines + decisions({t: c for t, c in compared.items() if t in table})


def agreement(workdir: str, report_paths: list[str]) -> list[str]:
    """The lines for a run and its three reports.

    Raises:
      cli.UserError: no such workdir or report, or a run without evaluations or baselines.
    """
    workdir = cli.input_dir(workdir, "workdir")
    reports = [probe_report.load_report(p) for p in report_paths]
    rows = metric_writer.read_metrics(workdir)
    baselines = evaluators.read_baselines(workdir)
    curves = curve_scores(rows, baselines)
    if not curves:
        raise cli.UserError(
            f"workdir {workdir}: no evaluation with baselines (run it with --config.evals, "
            f"which writes {evaluators.BASELINES})"
        )
    compared = paired.compare_reports(report_paths[0], reports[0], report_paths[1], reports[1])
    return agreement_lines(curves, table_entries(reports), compared)


def _main(argv) -> int:
    p = cli.ArgumentParser(PROG, __doc__)
    p.add_argument("workdir", help="a training workdir with evaluations")
    p.add_argument(
        "--reports", nargs=3, required=True, metavar=("PRETRAINED", "INIT", "LOGMEL"),
        help="probe outputs (folders or report.json) of the run, its initial weights, log-mel",
    )  # fmt: skip
    args = p.parse_args(argv)
    for path in args.reports:
        if not os.path.exists(path):
            raise cli.UserError(f"--reports {path}: no such probe output")
    print("\n".join(agreement(args.workdir, args.reports)))
    return 0


def main(argv=None) -> int:
    """Command-line entry point; see the module docstring."""
    return cli.run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
