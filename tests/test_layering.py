"""The layering of acestep (docs/architecture.md): no import circle, no import from a lower layer up, the machinery
(data/, training/, lora/) imports no family or model code, families do not import each other, and no file of
the repository holds a path of somebody's machine.

The graph is read from the source with `ast` (nothing is imported): every `import` and `from ... import` of a
module, at the top or inside a function, except those under `if TYPE_CHECKING:` (annotations only).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "acestep"

# Lowest first. A module belongs to the layer of its longest matching prefix; it may import its own layer and
# the ones below, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("acestep.core",)),
    ("formats", ("acestep.audio", "acestep.lora")),
    ("data", ("acestep.data",)),
    ("machinery", ("acestep.training", "acestep.captioning", "acestep.evaluation")),
    ("seam", ("acestep.families.base",)),
    ("family", ("acestep.families.v1", "acestep.families.v15")),
    ("registry", ("acestep.families",)),
    ("cli", ("acestep.families.training", "acestep.families.generation", "acestep.families.preprocess",
             "acestep.plan", "acestep.presets", "acestep.demo", "acestep.demo_v15", "acestep.demo_songs",
             "acestep.reg_songs", "acestep.tiny_checkpoint", "acestep.lora.__main__", "acestep.evaluate",
             "acestep.evaluation.cli", "acestep.evaluation.demo", "acestep.evaluation.during_training")),
]
MACHINERY = ("acestep.data", "acestep.training", "acestep.lora")
FAMILY_PACKAGES = ("acestep.families.v1", "acestep.families.v15")
LAYER_PREFIXES = sorted(((prefix, rank, name) for rank, (name, prefixes) in enumerate(LAYERS) for prefix in prefixes),
                        key=lambda item: -len(item[0]))


def module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes, skipping `if TYPE_CHECKING:` bodies."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _imports(ast.Module(body=[child], type_ignores=[])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def import_graph() -> dict[str, set[str]]:
    """module -> the acestep modules it imports (a name imported from a package resolves to its submodule when
    there is one)."""
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = {name for name, _ in files}
    graph: dict[str, set[str]] = {}
    for (name, is_package), path in files.items():
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = name.split(".") if is_package else name.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for candidate in candidates:
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name:
                    targets.add(candidate)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def layer_of(module: str) -> tuple[int, str]:
    if module == "acestep":  # the package's own __init__
        return 0, LAYERS[0][0]
    for prefix, rank, name in LAYER_PREFIXES:
        if module == prefix or module.startswith(prefix + "."):
            return rank, name
    raise AssertionError(f"{module} is in no layer of LAYERS: add it to the table")


def family_of(module: str) -> str | None:
    return next((f for f in FAMILY_PACKAGES if module == f or module.startswith(f + ".")), None)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_the_imports(graph: dict[str, set[str]]) -> None:
    """The reader works: known edges are found (a relative one, an absolute one, one inside a function)."""
    assert "acestep.lora.bake" in graph["acestep.lora.inspect"]
    assert "acestep.families.v1.models.transformer" in graph["acestep.families.v1.models"]
    assert "acestep.families.v1.training" in graph["acestep.families.v1"]  # imported inside training_parts()


def test_find_cycle_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_has_no_circle(graph: dict[str, set[str]]) -> None:
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_machinery_imports_no_family_or_model_code(graph: dict[str, set[str]]) -> None:
    wrong = sorted(f"{module} -> {target}" for module, targets in graph.items() if module.startswith(MACHINERY)
                   and layer_of(module)[1] != "cli" for target in targets if target.startswith("acestep.families"))
    assert not wrong, "\n".join(wrong)


def test_the_grep_of_issue_24_prints_nothing() -> None:
    """The check the issue names, as written: no family, model, pipeline, checkpoint, lyrics or text encoder import
    in data/, training/ or lora/."""
    pattern = re.compile(r"(from|import) +(acestep\.|\.\.)(families|models|pipeline|checkpoint|lyrics|text_encoder)")
    hits = [f"{path.relative_to(REPO)}:{number}" for folder in ("data", "training", "lora")
            for path in sorted((PACKAGE / folder).rglob("*.py"))
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_no_import_runs_from_a_lower_layer_up(graph: dict[str, set[str]]) -> None:
    wrong = []
    for module, targets in graph.items():
        rank, name = layer_of(module)
        for target in targets:
            target_rank, target_name = layer_of(target)
            if target_rank > rank:
                wrong.append(f"{module} ({name}) -> {target} ({target_name})")
    assert not wrong, "\n".join(sorted(wrong))


def test_families_do_not_import_each_other(graph: dict[str, set[str]]) -> None:
    wrong = sorted(f"{module} -> {target}" for module, targets in graph.items() if (own := family_of(module))
                   for target in targets if (other := family_of(target)) and other != own)
    assert not wrong, "\n".join(wrong)


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    for module in graph:
        layer_of(module)


# what only one family knows: its recorded name, its module paths, its style names, its checkpoint's prefixes, files,
# folders and classes
FAMILY_FACTS = ("ace-step-1.5", "ace-step-v1", "layers.", "transformer_blocks", "lyric_encoder", "v15_", "decoder.",
                "silence_latent", "ace_step_transformer", "AceStepTransformer1DModel", "ACEStepTransformer2DModel")


def family_literals(source: str) -> list[str]:
    """The string constants of the code (docstrings aside: they may give examples) that hold a family fact."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [f"{node.lineno}: {node.value!r}" for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings
            and any(fact in node.value for fact in FAMILY_FACTS)]


def test_a_family_literal_is_recognized() -> None:
    assert family_literals('"""Keys like `layers.0.attn`."""\nNAME = "ace-step-1.5"\nkey = f"{p}transformer_blocks.{i}"\n') \
        == ["2: 'ace-step-1.5'", "3: 'transformer_blocks.'"]
    assert family_literals('def f():\n    """decoder.layers.0 in a docstring"""\n    return "peft"\n') == []
    assert family_literals('A = "ace_step_transformer"\nif (out / "silence_latent.pt").is_file():\n    pass\n') \
        == ["1: 'ace_step_transformer'", "2: 'silence_latent.pt'"]


def test_the_lora_tools_name_no_family() -> None:
    """lora/ holds no family's key naming or checkpoint layout: each family hands in its own (its lora_keys.py, and
    the folders and packed layout of its TransformerKind)."""
    hits = [f"{path.relative_to(REPO)}:{hit}" for path in sorted((PACKAGE / "lora").rglob("*.py"))
            for hit in family_literals(path.read_text(encoding="utf-8"))]
    assert not hits, "\n".join(hits)


MACHINE_PATH = re.compile(r"(?<![\w.:/~-])(/(?:work|root|home|Users|mnt)/[\w.-]+|[A-Za-z]:\\(?:Users|work)\\)")


def test_a_machine_path_is_recognized() -> None:
    assert MACHINE_PATH.search('Path("/home/alice/ckpt")') and MACHINE_PATH.search("see /work/notes.md")
    assert MACHINE_PATH.search(r"C:\Users\bob\songs")
    assert not MACHINE_PATH.search("https://example.org/home/page and ~/models and ./work/x and a/root/b")


def test_no_file_holds_a_path_of_a_machine() -> None:
    """Tracked files (and new ones not ignored) name no path on somebody's disk."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    this_file = Path(__file__).resolve()
    found = []
    for name in listed.stdout.splitlines():
        path = REPO / name
        if path.resolve() == this_file or not path.is_file() or path.suffix in {".png", ".wav", ".flac", ".mp3"}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        found += [f"{name}:{number}: {match.group(0)}" for number, line in enumerate(text.splitlines(), 1)
                  for match in [MACHINE_PATH.search(line)] if match]
    assert not found, "\n".join(found)


def family_facts_in(source: str, facts: set[str]) -> list[str]:
    """Where `source` names a family fact: a string literal (docstrings aside) equal to one or starting with one, a
    name or attribute of that name, or, for facts no English sentence holds (`_`, `-` inside), any mention at all."""
    found = []
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found += [f"{node.lineno}: {node.value!r}" for fact in facts if node.value.startswith(fact)]
        elif isinstance(node, ast.Attribute) and node.attr in facts:
            found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in facts:
            found.append(f"{node.lineno}: {node.id}")
    for number, line in enumerate(source.splitlines(), 1):
        found += [f"{number}: {fact}" for fact in facts if re.search(r"[_-]\w", fact.strip(".")) and fact in line]
    return found


def test_the_fact_finder_finds_block_lists_and_prefixes() -> None:
    facts = {"transformer_blocks", "layers", "t_block.", "ace-step-v1", "V1_FAMILY"}
    assert family_facts_in('BLOCKS = ("transformer_blocks", "layers")\n', facts)
    assert family_facts_in('def f(m):\n    return m.layers\n', facts)
    assert family_facts_in('PREFIXES = ("t_block.0",)\n', facts)
    assert family_facts_in('"""Docstring."""\n# the ace-step-v1 step\n', facts)
    assert family_facts_in('from keys import V1_FAMILY\n', facts)
    assert not family_facts_in('"""The layers of any model."""\nx = 1  # fp8 layers\n', facts)


def test_training_names_no_family_fact() -> None:
    """training/ is the trainer of any family: no family's name (nor the constant that holds it), block list or fp8
    prefixes appear in it (they come from the family's TrainingParts and ModelBlocks)."""
    from acestep import families
    from acestep.lora import keys

    facts = set()
    for family in families.all_families():
        facts |= {family.NAME, family.BLOCKS.block_list, *family.BLOCKS.fp8_prefixes}
    facts |= {name for name, value in vars(keys).items() if isinstance(value, str) and value in facts}
    found = [f"{path.relative_to(REPO)}:{hit}" for path in sorted((PACKAGE / "training").rglob("*.py"))
             for hit in family_facts_in(path.read_text(encoding="utf-8"), facts)]
    assert not found, "\n".join(found)
