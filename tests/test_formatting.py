"""The package, the tests, the configs and the Python blocks of README.md and docs/*.md are
formatted as `ruff format` (pyproject.toml's settings) writes them."""

import subprocess
import sys

import doc_runner

RUFF = [sys.executable, "-m", "ruff", "format", "--config", str(doc_runner.REPO / "pyproject.toml")]


def unformatted(blocks: list[doc_runner.Block]) -> list[str]:
    """`where: diff` for each Python block that `ruff format` would change."""
    found = []
    for block in blocks:
        if block.lang != "python":
            continue
        out = subprocess.run(
            [*RUFF, "--diff", "--stdin-filename", "block.py", "-"],
            input=block.text,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            found.append(f"{block.where()}:\n{out.stdout or out.stderr}")
    return found


def test_code_is_formatted():
    paths = [doc_runner.REPO / p for p in ("matpac_jax", "tests", "configs")]
    out = subprocess.run(
        [*RUFF, "--check", *map(str, paths)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"run `ruff format` on:\n{out.stdout}{out.stderr}"


def test_doc_python_blocks_are_formatted():
    blocks = [b for doc in doc_runner.doc_files() for b in doc_runner.extract_blocks(doc)]
    assert sum(b.lang == "python" for b in blocks) >= 10  # the docs' blocks were found
    found = unformatted(blocks)
    assert not found, "format these blocks as ruff would:\n\n" + "\n".join(found)


def test_the_check_sees_an_unformatted_block():
    text = "```python\nx = [1,2]   # aligned\ny = 2\n```\n\n```bash\nx=1\n```\n"
    found = unformatted(doc_runner.extract_blocks("x.md", text))
    assert len(found) == 1 and "x.md:1 (python)" in found[0] and "+x = [1, 2]" in found[0]
