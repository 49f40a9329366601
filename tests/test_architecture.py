"""The package's architecture as docs/design.md maps it ("The map"): packages named by role, each listed after
the packages it imports; every import runs one way, to a package listed before (or to its own), no two modules
import each other, and the map, the packages' docstrings and the code agree."""

import ast
import re
from pathlib import Path

import gptcore

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "gptcore"
DESIGN = REPO / "docs" / "design.md"


def read_map() -> list[dict]:
    """The map's rows, top to bottom: the layer's name (base, front or the package), its members (top-level
    modules and packages) and the layers it imports."""
    section = DESIGN.read_text().split("\n## The map\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| package "):
            continue
        first, _, imports = (cell.strip() for cell in line.strip().strip("|").split("|"))
        members = [name.rstrip("/") for name in re.findall(r"`([^`]+)`", first)]
        name = "base" if first.startswith("the base") else "front" if first.startswith("the front") else members[0]
        used = set() if imports == "—" else {"base" if part == "the base" else part for part in imports.split(", ")}
        rows.append({"name": name, "members": members, "imports": used})
    return rows


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each gptcore module -> the gptcore modules it imports, at its top or inside a function."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.split(".")[0] == "gptcore"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                if base.split(".")[0] == "gptcore":  # `from a import b`: module a.b where b is a module, else a
                    imported |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base
                                 for alias in node.names}
        graph[name] = imported - {name}
    return graph


def layer_of(module: str, rows: list[dict]) -> str:
    if module == "gptcore":
        return "front"
    top = module.split(".")[1]
    return next((row["name"] for row in rows if top in row["members"]), f"unmapped ({top})")


def problems(graph: dict[str, set[str]], rows: list[dict]) -> list[str]:
    """Every import of a package listed after the importing one, and every circle of modules importing each
    other."""
    order = {row["name"]: index for index, row in enumerate(rows)}
    found = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            mine, theirs = layer_of(module, rows), layer_of(target, rows)
            if theirs not in order or mine not in order:
                found.append(f"{module} imports {target}: {mine} -> {theirs}, a layer the map does not list")
            elif order[theirs] > order[mine]:
                found.append(f"upward import: {module} imports {target}, but {theirs} is listed after {mine} in "
                             "docs/design.md's map (a package imports only those listed before it)")
    found += [f"circular import: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each group of modules that reach each other (depth-first, in name order)."""
    state, path, found = {}, [], []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_the_map_lists_exactly_the_packages_and_top_level_modules_that_exist():
    rows = read_map()
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    mapped = {member for row in rows for member in row["members"]}
    assert mapped == packages | modules, f"in the map, not in gptcore/: {sorted(mapped - packages - modules)}; " \
                                         f"in gptcore/, not in the map: {sorted(packages | modules - mapped)}"
    assert [row["name"] for row in rows if row["name"] in packages] == [row["name"] for row in rows[1:-1]]
    assert modules - {"__init__"} == {"errors", "atomic", "machine", "params", "cli", "bench"}


def test_imports_run_one_way_and_no_two_modules_import_each_other():
    assert problems(import_graph(), read_map()) == []


def test_an_upward_import_or_a_circle_is_named():
    """What the test above says when an import runs the other way or two modules import each other."""
    rows, graph = read_map(), import_graph()
    upward = {**graph, "gptcore.model.gpt": graph["gptcore.model.gpt"] | {"gptcore.pipelines.stage"}}
    assert problems(upward, rows) == ["upward import: gptcore.model.gpt imports gptcore.pipelines.stage, but pipelines "
                                      "is listed after model in docs/design.md's map (a package imports only those "
                                      "listed before it)"]
    circle = {**graph, "gptcore.formats.model_folder": graph["gptcore.formats.model_folder"] |
              {"gptcore.formats.loading"}}
    assert problems(circle, rows) == ["circular import: gptcore.formats.loading -> gptcore.formats.adapters -> "
                                      "gptcore.formats.model_folder -> gptcore.formats.loading"]


def test_each_package_imports_what_the_map_and_its_docstring_say():
    rows, graph = read_map(), import_graph()
    for row in rows:
        used = {layer_of(target, rows) for module, imported in graph.items() if layer_of(module, rows) == row["name"]
                for target in imported} - {row["name"]}
        assert used == row["imports"], f"{row['name']} imports {sorted(used)}; the map says {sorted(row['imports'])}"
        if row["name"] not in ("base", "front"):
            docstring = ast.get_docstring(ast.parse((PACKAGE / row["name"] / "__init__.py").read_text()))
            (said,) = re.findall(r"^Imports: (.+)\.$", docstring, re.M)
            assert {"base" if part == "the base" else part for part in said.split(", ")} == row["imports"], row["name"]


def test_the_front_door_gives_the_readmes_names_the_loop_the_loader_and_the_tasks():
    (example,) = re.findall(r"## Use the library\n\n```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    (names,) = re.findall(r"^from gptcore import (.+)$", example, re.M)
    wanted = set(names.split(", ")) | {"Trainer", "load_model", "Task", "LanguageModeling", "Classification",
                                       "InstructionTuning"}
    assert wanted <= set(gptcore.__all__)
    assert all(getattr(gptcore, name) for name in gptcore.__all__)
    exec(compile(example, "README.md", "exec"), {})  # the example runs as written
