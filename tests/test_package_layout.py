"""The package's layout (docs/architecture.md): folders by part, imports only downwards.

Every `import` and `from ... import` of matpac_jax, at module level or inside a function, is read
with `ast` (nothing is imported). The rules:
- a module at the top of the package (shared: cli, config_lib, dirlock) imports only other top
  modules;
- a folder imports the top modules, itself, and the folders before it in `PARTS` (the data's
  path: audio -> shards -> input -> model -> objective -> encoder -> probe -> trainer ...);
- no circle of modules (one module importing another that, through any chain, imports it back);
- at most 8 modules at the top.
The checker is tested on small packages that break each rule, so it is seen to find them.
"""

from __future__ import annotations

import ast
import pathlib
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "matpac_jax"

# The folders, lowest first. The trainer sits above inference and evaluation because it writes
# the encoder export and runs the evaluators during training (as big_vision's trainers import
# its evaluators); interop reads and writes training checkpoints, so it sits above the trainer.
PARTS = (
    "audio",
    "data",
    "datasets",
    "models",
    "objective",
    "inference",
    "evaluation",
    "train",
    "interop",
    "tools",
)
MAX_TOP_MODULES = 8


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: pathlib.Path, root: pathlib.Path, modules: set[str]) -> set[str]:
    """The package's modules `path` imports anywhere in its code (functions included)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` names the module; `from mod import obj` names mod.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # import a.b.c of a module a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    return {module_name(f, root): imports_of(f, root, modules) for f in files}


def layering_errors(graph: dict[str, set[str]], parts=PARTS) -> list[str]:
    rank = {p: i for i, p in enumerate(parts)}
    folders = {m.split(".")[1] for m in graph if m.count(".") >= 2}

    def part_of(module: str) -> str | None:
        """The folder a module lies in; None for a module at the top (or the package)."""
        name = module.split(".")[1] if "." in module else None
        return name if name in folders else None

    errors = []
    for module, targets in sorted(graph.items()):
        src = part_of(module)
        if src is not None and src not in rank:
            errors.append(f"{module}: folder {src!r} has no place in the layout (PARTS)")
            continue
        for target in sorted(targets):
            dst = part_of(target)
            if dst is None:
                continue  # the shared top modules: anyone may import them
            if src is None and module.count(".") >= 1:
                errors.append(f"{module} (a shared top module) imports {target} (folder {dst})")
            elif src is not None and dst in rank and rank[dst] > rank[src]:
                errors.append(f"{module} ({src}) imports {target} from a higher folder ({dst})")
    return errors


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def top_modules(root: pathlib.Path) -> list[str]:
    return sorted(p.stem for p in root.glob("*.py") if p.name != "__init__.py")


# ------------------------------------------------------------------------- the package itself


def test_no_circles_in_the_package():
    assert circles(import_graph(ROOT)) == []


def test_every_import_goes_down_the_data_path():
    assert layering_errors(import_graph(ROOT)) == []


def test_the_top_of_the_package_holds_few_modules_and_every_folder_has_a_place():
    assert len(top_modules(ROOT)) <= MAX_TOP_MODULES, top_modules(ROOT)
    folders = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())
    assert sorted(PARTS) == folders


# --------------------------------------------------- the checker sees what it guards against


def _write_package(tmp_path, files: dict[str, str]) -> pathlib.Path:
    root = tmp_path / "matpac_jax"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent != root and not (path.parent / "__init__.py").exists():
            (path.parent / "__init__.py").write_text("")
        path.write_text(textwrap.dedent(text))
    return root


def test_checker_finds_a_circle_through_a_function_local_import(tmp_path):
    root = _write_package(
        tmp_path,
        {
            "audio/a.py": "from matpac_jax.audio import b\n",
            "audio/b.py": "def f():\n    from matpac_jax.audio import c  # hidden in a function\n",
            "audio/c.py": "import matpac_jax.audio.a\n",
            "audio/d.py": "from matpac_jax.audio import a\n",  # imports into the circle only
        },
    )
    assert circles(import_graph(root)) == [
        ["matpac_jax.audio.a", "matpac_jax.audio.b", "matpac_jax.audio.c"]
    ]


def test_checker_finds_upward_and_shared_to_folder_imports(tmp_path):
    root = _write_package(
        tmp_path,
        {
            "cli.py": "",
            "config_lib.py": "def f():\n    from matpac_jax.train import step\n",
            "audio/frontend.py": "from matpac_jax import cli\n",
            "models/vit.py": "from matpac_jax.audio import frontend\n",  # down: fine
            "train/step.py": "from matpac_jax.models import vit\n",  # down: fine
            "models/bad.py": "from matpac_jax.train.step import thing\n",  # up
            "audio/relative.py": "from ..models import vit\n",  # up, relative
            "extra/x.py": "",
        },
    )
    errors = layering_errors(import_graph(root), parts=("audio", "models", "train"))
    assert errors == [
        (
            "matpac_jax.audio.relative (audio) imports matpac_jax.models.vit from a higher "
            "folder (models)"
        ),
        "matpac_jax.config_lib (a shared top module) imports matpac_jax.train.step (folder train)",
        "matpac_jax.extra: folder 'extra' has no place in the layout (PARTS)",
        "matpac_jax.extra.x: folder 'extra' has no place in the layout (PARTS)",
        "matpac_jax.models.bad (models) imports matpac_jax.train.step from a higher folder (train)",
    ]


@pytest.mark.parametrize("count,ok", [(8, True), (9, False)])
def test_checker_counts_the_top_modules(tmp_path, count, ok):
    root = _write_package(tmp_path, {f"m{i}.py": "" for i in range(count)})
    assert (len(top_modules(root)) <= MAX_TOP_MODULES) == ok
