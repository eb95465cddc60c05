r"""Runs the command blocks of README.md and docs/*.md as written, on tiny data.

  python tests/doc_runner.py [README.md docs/inference.md ...]   # by hand; all docs without
  pytest tests/test_docs.py                                       # the test: one case per doc

The rules:

- **Blocks.** Every fenced ```bash, ```sh and ```python block of README.md and docs/*.md, in
  document order. Unlabelled fences (diagrams, file layouts, sample output) are not commands
  and are not run. A block is skipped only with an HTML comment on the line before its fence,
  `<!-- doctest: skip REASON -->` (REASON required), or, one command at a time, by SKIP_LINES
  below (README's `bash launch/test.sh`: the test suite itself). Every skip is reported.
- **Sandbox.** Each doc runs in its own fresh folder, a user's checkout: `configs/`, `launch/`
  and `setup.cfg` are links into this repository, `.venv` is a stand-in whose `bin/python` is
  the shim below and whose install stamp is current for the CPU (MATPAC_ACCELERATOR=cpu, so
  `launch/env.sh` neither creates nor installs anything), and HOME is `home/` inside it (nothing touches the real ~/.cache). The
  blocks of one doc run in order, in that folder, so a later block sees what an earlier one
  wrote. bash blocks run under `bash -e -o pipefail` (a failing command fails the block);
  python blocks are fed to `python -` on stdin. Each block has a timeout.
- **Fixtures.** Before its first block, a doc's sandbox gets what the doc assumes exists, at
  the relative path the doc names (FIXTURES): `audio/` (a handful of demo clips, 6.1 s
  pretraining clips and 3 s labelled ones), `runs/b` (a pretraining run trained here, 3 steps
  of the tiny model, with its `export/`), `data/esc50` (tests/fake_layouts.py's fake ESC-50 in
  its official layout), `data/` for docs/probe.md (the seven datasets of the papers' table,
  fake copies in their official layouts). Every sandbox gets the demo-corpus cache that a
  trainer run without `--config.data.dir` uses (`~/.cache/matpac_jax/demo`), pre-filled with
  the tiny corpus and its shards so that such a run trains at once instead of generating 1,000
  clips.
- **The shim** (tests/doc_shim/python, first on PATH and as `.venv/bin/python`; the rules
  live in tests/doc_shim/shim.py) **shrinks sizes, never paths**: every path, file name and
  flag of the command is passed on as written, and only these change:
    * `random:B` -> `random:mu`, and a config spec `FILE.py:variant=B` -> `FILE.py:runlocal`
      (the tiny `mu` model instead of ViT-B), in any command;
    * `-m matpac_jax.train` and `-m matpac_jax.train.finetune` get `--config.total_steps=3 --config.batch_size=4
      --config.log_every=1 --config.checkpoint_every=3 --config.data.crop_frames=64
      --config.data.num_workers=0` appended (absl applies repeated overrides in order: the
      last wins);
    * counts, batch sizes, timing windows and worker counts get ceilings: demo_corpus
      `--num_pretrain 8 --num_labelled 72 --num_tagging 8 --num_workers 0`; preprocess `--num_workers 0`;
      bench_input `--batch_size 4 --seconds 0.5 --workers 0 --preprocess_files 2
      --preprocess_workers 0`; bench_step `--batch_size 4 --seconds 0.2 --matmul_n 256`;
      bench_attention `--batch_size 2 --seconds 0.05 --matmul_n 256`; cost
      `--batch_size 8`; probe `--seeds 1`; suite `--seeds 2`. A flag the command leaves out
      is added with that value (a smaller value the command gives stays);
    * everything else (python blocks, other modules, `--help`) passes through unchanged.
  `bash launch/demo.sh` runs with `MATPAC_DEMO_SIZE=tiny` (the script's own small sizes) and
  `MATPAC_DEMO_DIR` inside the sandbox.
- **Environment.** tests/conftest.py's `subprocess_env(devices=1)` (one CPU device, the tests'
  persistent compile cache), JAX_PLATFORMS=cpu, HOME and PATH as above.

A failure names the doc, the block (its line and first line), the exit status and the tail of
its output; every block's full output is in the sandbox as `block-NN.log`, and the commands
the shim rewrote in `shim.log`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHIM_DIR = TESTS / "doc_shim"
LANGS = ("bash", "sh", "python")
SKIP_RE = re.compile(r"^<!--\s*doctest:\s*skip\b(.*?)-->\s*$")
BLOCK_TIMEOUT_S = 300

# One command line skipped wherever it appears in a bash block, with the reason.
SKIP_LINES = {
    "bash launch/test.sh": "the test suite itself (CI runs it); run from the doc test it would "
    "run the doc test again",
    "python -m matpac_jax.tools.accelerator_check --out runs/accel_tiny --tiny": "tests/"
    "test_tools_accelerator_check.py runs this command (plus --cache_dir, --mem_fraction) from "
    "another folder and checks its "
    "report (a minute of compiles, not twice)",
}


def doc_files() -> list[str]:
    """README.md, then docs/*.md, as paths relative to the repository."""
    return ["README.md"] + sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))


@dataclasses.dataclass
class Block:
    doc: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    skip: Optional[str] = None  # the reason, when skipped

    @property
    def first_line(self) -> str:
        """The first command (comment lines skipped), else the first line."""
        lines = [l.strip() for l in self.text.splitlines() if l.strip()]
        commands = [l for l in lines if not l.startswith("#")]
        return (commands or lines or [""])[0]

    def where(self) -> str:
        return f"{self.doc}:{self.line} ({self.lang}) `{self.first_line}`"


def extract_blocks(doc: str, text: Optional[str] = None) -> list[Block]:
    """The bash/sh/python fenced blocks of `doc`, in order, with their skip markers."""
    if text is None:
        text = (REPO / doc).read_text()
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(`{3,})\s*([\w+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        ticks, lang = fence.group(2), fence.group(3).lower()
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(ticks):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if lang not in LANGS:
            continue
        skip = None
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        if before >= 0:
            marker = SKIP_RE.match(lines[before].strip())
            if marker:
                skip = marker.group(1).strip()
                if not skip:
                    raise ValueError(f"{doc}:{before + 1}: a doctest skip needs a reason")
        blocks.append(Block(doc, start + 1, lang, "\n".join(body) + "\n", skip))
    return blocks


# ---------------------------------------------------------------- sandbox and fixtures


def base_env() -> dict:
    """tests/conftest.py's environment for a child process, on one CPU device."""
    sys.path.insert(0, str(TESTS))
    from conftest import subprocess_env  # pylint: disable=g-import-not-at-top

    env = subprocess_env(devices=1)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def sandbox_env(sandbox: Path, env: dict) -> dict:
    env = dict(env)
    for var in ("VIRTUAL_ENV", "PYTHONPATH", "MATPAC_DEBUG", "PYTHONHOME"):
        env.pop(var, None)
    env.update(
        HOME=str(sandbox / "home"),
        PATH=f"{SHIM_DIR}{os.pathsep}{env.get('PATH', '')}",
        MATPAC_DOC_PYTHON=sys.executable,
        MATPAC_DOC_SHIM_LOG=str(sandbox / "shim.log"),
        MATPAC_DEMO_SIZE="tiny",
        MATPAC_DEMO_DIR=str(sandbox / "runs" / "demo"),
        MATPAC_ACCELERATOR="cpu",  # the stand-in .venv's install stamp is the CPU one
        PYTHONUNBUFFERED="1",
        TERM="dumb",
    )
    return env


def make_sandbox(sandbox: Path) -> None:
    """A user's checkout: links to the repository's configs and launch scripts, a stand-in
    .venv (its python is the shim, its install stamp current) and a HOME of its own."""
    sandbox.mkdir(parents=True, exist_ok=True)
    for name in ("configs", "launch", "setup.cfg"):
        (sandbox / name).symlink_to(REPO / name)
    venv_bin = sandbox / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(SHIM_DIR / "python")
    (venv_bin / "activate").write_text(
        f'export VIRTUAL_ENV="{sandbox / ".venv"}"\nexport PATH="{venv_bin}:$PATH"\n'
    )
    stamp = subprocess.run(
        ["sha1sum", str(REPO / "setup.cfg")], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    # launch/env.sh's stamp: setup.cfg's hash and the extras installed (CPU: "test").
    (sandbox / ".venv" / ".matpac_installed").write_text(f"{stamp} test\n")
    (sandbox / "home").mkdir()


def run_bash(script: str, cwd: Path, env: dict, timeout: float, log: Path, stdin=None):
    """Runs `bash -e -o pipefail -c script` in its own process group; returns (status, output).

    The group is killed at the timeout, and afterwards (a background process a block left)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.communicate(stdin.encode() if stdin is not None else None, timeout=timeout)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            status = None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return status, log.read_text(errors="replace")


class Assets:
    """What the fixtures copy, made once (lazily) under `root` by commands through the shim:
    the tiny demo corpus (8 + 72 clips), its shards, and `runs/b` (a 3-step run, exported)."""

    def __init__(self, root: Path, env: Optional[dict] = None):
        self.root = Path(root)
        self.env = env if env is not None else base_env()
        self._made: set[str] = set()

    def _make(self, what: str, script: str) -> Path:
        path = self.root / what
        if what not in self._made:
            if not self.root.exists():
                make_sandbox(self.root)
            status, output = run_bash(
                script,
                self.root,
                sandbox_env(self.root, self.env),
                BLOCK_TIMEOUT_S,
                self.root / f"make-{what.replace('/', '_')}.log",
            )
            if status != 0:
                raise RuntimeError(f"making the doc-test asset {what} failed:\n{output[-3000:]}")
            self._made.add(what)
        return path

    @property
    def corpus(self) -> Path:
        return self._make("corpus", "python -m matpac_jax.data.demo_corpus --out corpus\n")

    @property
    def mels(self) -> Path:
        self.corpus  # pylint: disable=pointless-statement
        return self._make(
            "mels",
            "python -m matpac_jax.audio.preprocess --input_dir corpus/pretrain --output_dir mels\n",
        )

    @property
    def runs_b(self) -> Path:
        self.mels  # pylint: disable=pointless-statement
        return self._make(
            "runs/b",
            "python -m matpac_jax.train --config=configs/matpac_pp.py:variant=B "
            "--config.data.dir=mels --workdir=runs/b\n",
        )


def demo_cache(sandbox: Path, assets: Assets) -> None:
    """~/.cache/matpac_jax/demo (a trainer's data without --config.data.dir), pre-filled with
    the tiny corpus and its shards, its manifest marked as the default corpus that
    `matpac_jax.data.demo.pretraining_shards` asks for (so it is used, not regenerated)."""
    from matpac_jax.data import demo_corpus  # pylint: disable=g-import-not-at-top

    cache = sandbox / "home" / ".cache" / "matpac_jax" / "demo"
    shutil.copytree(assets.corpus, cache / "audio")
    shutil.copytree(assets.mels, cache / "mels", ignore=shutil.ignore_patterns(".lock*"))
    defaults = inspect.signature(demo_corpus.generate).parameters
    manifest = json.loads((cache / "audio" / "manifest.json").read_text())
    for key in ("num_pretrain", "num_labelled"):
        manifest["params"][key] = defaults[key].default
    manifest["params"]["num_tagging"] = demo_corpus.DEFAULT_TAGGING
    (cache / "audio" / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def audio_handful(sandbox: Path, assets: Assets) -> None:
    """audio/: 4 pretraining clips (6.1 s, long enough for preprocessing's --min_frames 608)
    under audio/pretrain/ and 4 labelled ones (3 s) under audio/labelled/."""
    for part in ("pretrain", "labelled"):
        (sandbox / "audio" / part).mkdir(parents=True)
        for src in sorted((assets.corpus / part).iterdir())[:4]:
            shutil.copy(src, sandbox / "audio" / part / src.name)


def audio_corpus(sandbox: Path, assets: Assets) -> None:
    """audio/: the whole tiny demo corpus (manifest, tasks/*.csv, labelled/, pretrain/)."""
    shutil.copytree(assets.corpus, sandbox / "audio")


def runs_b(sandbox: Path, assets: Assets) -> None:
    """runs/b: a finished (3-step, tiny-model) pretraining run with its export/."""
    shutil.copytree(assets.runs_b, sandbox / "runs" / "b", ignore=shutil.ignore_patterns(".lock*"))


def papers_data(sandbox: Path, assets: Assets) -> None:
    """data/: the seven tasks of the papers' table in their official layouts, one folder each
    (tests/fake_layouts.py's `papers_data_root`), as the probe's suite finds them."""
    del assets
    sys.path.insert(0, str(TESTS))
    import fake_layouts  # pylint: disable=g-import-not-at-top

    fake_layouts.papers_data_root(sandbox / "data")


def esc50_copy(sandbox: Path, assets: Assets) -> None:
    """data/esc50: a fake ESC-50 in the official layout (tests/fake_layouts.py)."""
    del assets
    sys.path.insert(0, str(TESTS))
    import fake_layouts  # pylint: disable=g-import-not-at-top

    fake_layouts.esc50_layout(sandbox / "data" / "esc50")


FIXTURES: dict[str, tuple[Callable[[Path, Assets], None], ...]] = {
    "docs/inference.md": (audio_handful, runs_b),
    "docs/datasets.md": (esc50_copy, audio_corpus),
    "docs/weights.md": (audio_handful, runs_b),
    "docs/probe.md": (papers_data,),
    "docs/launching.md": (audio_handful,),
}


# ---------------------------------------------------------------- running


@dataclasses.dataclass
class Result:
    block: Block
    status: Optional[int] = None  # None: timed out (or skipped)
    seconds: float = 0.0
    output: str = ""
    skipped_lines: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.block.skip is not None or self.status == 0

    def report(self, tail: int = 4000) -> str:
        status = "timed out" if self.status is None else f"exit status {self.status}"
        return (
            f"{self.block.where()}: {status} after {self.seconds:.0f} s; last output:\n"
            f"{self.output[-tail:]}"
        )


def strip_skipped_lines(text: str) -> tuple[str, tuple[str, ...]]:
    kept, skipped = [], []
    for line in text.splitlines():
        command = line.split("#", 1)[0].strip()
        if command in SKIP_LINES:
            skipped.append(command)
            kept.append(f": skipped by the doc test: {command}")
        else:
            kept.append(line)
    return "\n".join(kept) + "\n", tuple(skipped)


def run_block(block: Block, sandbox: Path, env: dict, index: int, timeout: float) -> Result:
    log = sandbox / f"block-{index:02d}.log"
    start = time.perf_counter()
    if block.lang == "python":
        status, output = run_bash("python -", sandbox, env, timeout, log, stdin=block.text)
        skipped = ()
    else:
        script, skipped = strip_skipped_lines(block.text)
        status, output = run_bash(script, sandbox, env, timeout, log)
    result = Result(block, status, time.perf_counter() - start, output, skipped)
    shim_log = sandbox / "shim.log"
    if not result.ok and shim_log.exists():
        result.output += "\n--- shim.log (the commands as run) ---\n" + shim_log.read_text()[-2000:]
    return result


def run_doc(
    doc: str,
    sandbox: Path,
    assets: Assets,
    env: Optional[dict] = None,
    timeout: float = BLOCK_TIMEOUT_S,
    echo: Callable[[str], None] = lambda s: None,
) -> list[Result]:
    """Runs `doc`'s blocks in order in a fresh `sandbox`; stops at the first failure."""
    sandbox = Path(sandbox)
    make_sandbox(sandbox)
    demo_cache(sandbox, assets)
    for fixture in FIXTURES.get(doc, ()):
        fixture(sandbox, assets)
    env = sandbox_env(sandbox, env if env is not None else assets.env)
    results = []
    for i, block in enumerate(extract_blocks(doc)):
        if block.skip is not None:
            results.append(Result(block))
            echo(f"SKIP {block.where()}: {block.skip}")
            continue
        result = run_block(block, sandbox, env, i, timeout)
        results.append(result)
        echo(f"{'ok  ' if result.ok else 'FAIL'} {block.where()} ({result.seconds:.1f} s)")
        for line in result.skipped_lines:
            echo(f"SKIP {block.doc}:{block.line} line `{line}`: {SKIP_LINES[line]}")
        if not result.ok:
            break
    return results


def skips(results: list[Result]) -> list[str]:
    """'where: reason' of every skipped block and skipped command line."""
    out = []
    for r in results:
        if r.block.skip is not None:
            out.append(f"{r.block.where()}: {r.block.skip}")
        out += [f"{r.block.doc}:{r.block.line} `{l}`: {SKIP_LINES[l]}" for l in r.skipped_lines]
    return out


def main(argv: list[str]) -> int:
    import tempfile  # pylint: disable=g-import-not-at-top

    docs = argv or doc_files()
    root = Path(tempfile.mkdtemp(prefix="matpac_doc_test-"))
    print(f"sandboxes under {root}")
    assets = Assets(root / "assets")
    failed = 0
    for doc in docs:
        doc = os.path.relpath(os.path.abspath(doc), REPO) if os.path.exists(doc) else doc
        start = time.perf_counter()
        results = run_doc(
            doc, root / doc.replace("/", "_"), assets, echo=lambda s: print(s, flush=True)
        )
        bad = [r for r in results if not r.ok]
        print(f"== {doc}: {len(results)} blocks, {time.perf_counter() - start:.0f} s")
        for r in bad:
            failed += 1
            print(r.report())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
