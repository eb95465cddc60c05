"""The README's quick start and every command block of README.md and docs/*.md, run as written
(paths and flags unchanged) on tiny data: one test per doc file. Rules: tests/doc_runner.py."""

import re

import doc_runner
import pytest
from conftest import subprocess_env

DOCS = doc_runner.doc_files()


@pytest.fixture(scope="session")
def doc_assets(tmp_path_factory):
    env = subprocess_env(devices=1)
    env["JAX_PLATFORMS"] = "cpu"
    return doc_runner.Assets(tmp_path_factory.mktemp("doc_assets") / "assets", env)


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_doc_blocks_run_as_written(doc, doc_assets, tmp_path):
    blocks = doc_runner.extract_blocks(doc)
    for block in blocks:  # a skip must say why
        assert block.skip is None or block.skip.strip(), block.where()
    results = doc_runner.run_doc(doc, tmp_path / "checkout", doc_assets, echo=print)
    skipped = doc_runner.skips(results)
    print(f"{doc}: {len(blocks)} blocks, {len(skipped)} skipped:", *skipped, sep="\n  ")
    failed = [r for r in results if not r.ok]
    if failed:
        pytest.fail("\n\n".join(r.report() for r in failed), pytrace=False)
    assert len(results) == len(blocks)  # every block ran (or was skipped with its reason)


def test_readme_starts_with_the_quick_start():
    first = doc_runner.extract_blocks("README.md")[0]
    assert first.text.split("\n")[:2] == ["bash launch/demo.sh", "bash launch/test.sh"]
    assert first.skip is None  # the runner runs the first line and skips only the test suite


def test_docs_stay_inside_the_repository():
    for doc in DOCS:
        text = (doc_runner.REPO / doc).read_text()
        assert "shared/DESIGN" not in text, f"{doc} names shared/DESIGN, outside the repository"
        # `../x` leaves the repository (an elided `.../x` in sample output does not)
        assert not re.search(r"(?<![.\w])\.\./", text), f"{doc} names a path above the repository"
        prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))
        for link in re.findall(r"\]\(([^)#]+)", prose):  # relative links point at real files
            if "://" not in link:
                assert (doc_runner.REPO / doc).parent.joinpath(link).exists(), (doc, link)


def test_block_extraction_and_skip_markers():
    text = (
        "```bash\necho a\n```\n\n<!-- doctest: skip needs a cluster -->\n```sh\nsbatch x\n```\n"
        "```\nnot a command\n```\n```python\nprint(1)\n```\n"
    )
    blocks = doc_runner.extract_blocks("x.md", text)
    assert [(b.lang, b.line, b.skip) for b in blocks] == [
        ("bash", 1, None),
        ("sh", 6, "needs a cluster"),
        ("python", 12, None),
    ]
    with pytest.raises(ValueError, match="needs a reason"):
        doc_runner.extract_blocks("x.md", "<!-- doctest: skip -->\n```bash\ntrue\n```\n")


def test_shim_shrinks_sizes_never_paths():
    import sys  # pylint: disable=g-import-not-at-top

    sys.path.insert(0, str(doc_runner.SHIM_DIR))
    import shim  # pylint: disable=g-import-not-at-top

    argv = [
        "-m",
        "matpac_jax.inference.embed",
        "--encoder",
        "random:B",
        "--input_dir",
        "audio",
        "--out",
        "e.npz",
    ]
    assert shim.shrink(argv) == argv[:3] + ["random:mu"] + argv[4:]
    cost = [
        "-m",
        "matpac_jax.tools.cost",
        "--config",
        "configs/matpac_pp.py:variant=B",
        "--batch_size",
        "2048",
        "--mesh",
        "8,1",
    ]
    assert shim.shrink(cost) == [
        "-m",
        "matpac_jax.tools.cost",
        "--config",
        "configs/matpac_pp.py:runlocal",
        "--batch_size",
        "8",
        "--mesh",
        "8,1",
    ]
    assert shim.shrink_word("c.py:variant=Ti") == "c.py:runlocal"
    assert shim.shrink_word("c.py:variant=Tiny") == "c.py:variant=Tiny"  # a whole name only
    corpus = shim.shrink(["-m", "matpac_jax.data.demo_corpus", "--out", "a", "--num_pretrain=0"])
    assert corpus == [
        "-m",
        "matpac_jax.data.demo_corpus",
        "--out",
        "a",
        "--num_pretrain",
        "0",
        "--num_labelled",
        "72",
        "--num_tagging",
        "8",
        "--num_workers",
        "0",
    ]
    train = shim.shrink(["-m", "matpac_jax.train", "--workdir=runs/x"])
    assert train[:3] == ["-m", "matpac_jax.train", "--workdir=runs/x"]
    assert train[-6:] == list(shim.TRAIN_TINY)
    table = ["-m", "matpac_jax.evaluation.probe", "table", "a", "b"]
    assert shim.shrink(table) == table
    assert shim.shrink(["-", "logmel", "32"]) == ["-", "logmel", "32"]
