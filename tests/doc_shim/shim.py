"""The doc tests' `python`: the same command, on tiny sizes. Rules in tests/doc_runner.py.

Only sizes change (counts, batch sizes, steps, seconds, model size); every path, file name and
other flag is passed through as written. Each rewritten command is appended to the file named
by MATPAC_DOC_SHIM_LOG (if set), so a failing block shows what really ran.
"""

from __future__ import annotations

import os
import re
import shlex
import sys

# A trainer run: 3 steps of batch 4 on 64-frame crops, everything logged, the last step saved.
# absl applies --config.* overrides in order, so these (last) win over the command's own.
TRAIN_TINY = (
    "--config.total_steps=3",
    "--config.batch_size=4",
    "--config.log_every=1",
    "--config.checkpoint_every=3",
    "--config.data.crop_frames=64",
    "--config.data.num_workers=0",
)

# Per module: flag -> its tiny value. A number is a ceiling (a smaller value stays); a string
# replaces the value. A flag the command leaves out is added, so its large default is not used.
CAPS = {
    "matpac_jax.data.demo_corpus": {
        "--num_pretrain": 8,
        "--num_labelled": 72,
        "--num_tagging": 8,
        "--num_workers": 0,
    },
    "matpac_jax.audio.preprocess": {"--num_workers": 0},
    "matpac_jax.tools.bench_input": {
        "--batch_size": 4,
        "--seconds": 0.5,
        "--workers": "0",
        "--preprocess_files": 2,
        "--preprocess_workers": 0,
    },
    "matpac_jax.tools.bench_step": {"--batch_size": 4, "--seconds": 0.2, "--matmul_n": 256},
    "matpac_jax.tools.bench_attention": {"--batch_size": 2, "--seconds": 0.05, "--matmul_n": 256},
    "matpac_jax.tools.cost": {"--batch_size": 8},
    "matpac_jax.evaluation.probe": {"--seeds": 1},
    "matpac_jax.evaluation.suite": {"--seeds": 2},
}


def shrink_word(word: str) -> str:
    """ViT-B -> the tiny `mu` model: `random:B` -> `random:mu`; a config spec
    `FILE.py:variant=B` (or `Ti`, `S`) -> `FILE.py:runlocal` (mu with small heads)."""
    if word == "random:B":
        return "random:mu"
    if ".py:" in word:
        return re.sub(r"\bvariant=(B|S|Ti)\b", "runlocal", word)
    return word


def _cap(args: list[str], flag: str, tiny) -> list[str]:
    out, found = [], False
    i = 0
    while i < len(args):
        word = args[i]
        value = None
        if word == flag and i + 1 < len(args):
            value, step = args[i + 1], 2
        elif word.startswith(flag + "="):
            value, step = word[len(flag) + 1 :], 1
        if value is None:
            out.append(word)
            i += 1
            continue
        found = True
        if isinstance(tiny, str):
            new = tiny
        else:
            try:
                new = str(min(type(tiny)(value), tiny))
            except ValueError:  # not a number: leave the command's own mistake alone
                new = value
        out += [flag, new]
        i += step
    if not found:
        out += [flag, str(tiny)]
    return out


def shrink(argv: list[str]) -> list[str]:
    """The interpreter's arguments, sizes shrunk."""
    argv = [shrink_word(w) for w in argv]
    if "-m" not in argv[:-1]:
        return argv
    at = argv.index("-m")
    module, args = argv[at + 1], argv[at + 2 :]
    if module in ("matpac_jax.train", "matpac_jax.train.finetune"):
        args = args + list(TRAIN_TINY)
    elif module in CAPS and not (
        module == "matpac_jax.evaluation.probe" and args[:1] in (["table"], ["compare"])
    ):
        if "-h" not in args and "--help" not in args:
            for flag, tiny in CAPS[module].items():
                args = _cap(args, flag, tiny)
    return argv[: at + 2] + args


def main() -> None:
    argv = sys.argv[1:]
    new = shrink(argv)
    log = os.environ.get("MATPAC_DOC_SHIM_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"python {shlex.join(argv)}\n")
            if new != argv:
                f.write(f"  ran: python {shlex.join(new)}\n")
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *new])


if __name__ == "__main__":
    main()
