"""How the code is put together: no import cycles inside the device or the host package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"edge": "teachcam.edge", "convert": "teachcam.convert"}  # folder -> import name


def module_names() -> dict[str, Path]:
    names = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names[".".join([package, *parts])] = path
    return names


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ours that ``name`` imports, at module level or inside a function (not for type checks)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for block in ast.walk(tree):  # `if TYPE_CHECKING:` imports never run: annotations only, not dependencies
        if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING":
            block.body = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            for folder, package_name in PACKAGES.items():  # the bare folder names must not be used any more
                if target == folder or target.startswith(folder + "."):
                    target = package_name + target[len(folder):]
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycles() -> list[list[str]]:
    names = module_names()
    graph = {name: imports_of(name, path, set(names)) for name, path in names.items()}
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_in_edge_or_convert():
    assert cycles() == []


# The wings of teachcam.edge, and which wings each may never import. The top (errors, messages, ports, samples:
# the vocabulary) imports no wing; config imports only the choice lists that live with their owners.
WINGS = ("model", "teaching", "devices", "daemon", "link", "apps", "tools", "cli")
NEVER = {
    "vocabulary": set(WINGS) | {"config"},
    "config": {"link", "apps", "tools", "cli"},
    "model": {"teaching", "devices", "daemon", "link", "apps", "tools", "cli", "config"},
    "teaching": {"devices", "daemon", "link", "apps", "tools", "cli", "config"},
    "devices": {"teaching", "daemon", "link", "apps", "tools", "cli", "config"},
    "link": {"teaching", "devices", "daemon", "apps", "tools", "cli", "config"},  # model: it decodes uploaded images
    "daemon": {"apps", "tools", "cli"},
    "apps": {"model", "devices", "daemon", "tools", "cli"},  # the network processes reach the daemon by its socket
    "tools": {"cli"},
    "cli": set(),
}
APPS_APART = ("teachcam.edge.apps.web", "teachcam.edge.apps.mqtt")  # the page and the bridge share nothing


def wing(name: str) -> str | None:
    """The wing of a module of teachcam.edge (None outside it)."""
    parts = name.split(".")
    if parts[:2] != ["teachcam", "edge"]:
        return None
    if len(parts) == 2:
        return "vocabulary"
    return parts[2] if parts[2] in WINGS or parts[2] == "config" else "vocabulary"


def wall_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for name, targets in sorted(graph.items()):
        mine = wing(name)
        for target in sorted(targets):
            theirs = wing(target)
            if mine and theirs and theirs != mine and theirs in NEVER[mine]:
                found.append(f"{name} ({mine}) imports {target} ({theirs})")
            for one, other in (APPS_APART, APPS_APART[::-1]):
                if name.startswith(one) and target.startswith(other):
                    found.append(f"{name} imports {target}")
    return found


def import_graph() -> dict[str, set[str]]:
    names = module_names()
    return {name: imports_of(name, path, set(names)) for name, path in names.items()}


def test_the_wings_keep_their_walls():
    assert wall_violations(import_graph()) == []


def test_a_planted_violation_is_caught(tmp_path):
    # The real graph with one import planted where it must never be: the store reaching for the daemon.
    graph = import_graph()
    graph["teachcam.edge.teaching.store"] = graph["teachcam.edge.teaching.store"] | {"teachcam.edge.daemon.loop"}
    graph["teachcam.edge.apps.web.server"] = graph["teachcam.edge.apps.web.server"] | {"teachcam.edge.apps.mqtt.bridge"}
    assert wall_violations(graph) == [
        "teachcam.edge.apps.web.server imports teachcam.edge.apps.mqtt.bridge",
        "teachcam.edge.teaching.store (teaching) imports teachcam.edge.daemon.loop (daemon)"]
    # and the walk finds such an import inside a function too
    module = tmp_path / "planted.py"
    module.write_text("def f():\n    from teachcam.edge.daemon.loop import Daemon\n")
    assert "teachcam.edge.daemon.loop" in imports_of("teachcam.edge.teaching.planted", module, set(graph))


def test_only_the_bundle_writer_writes_bundles():
    # One way to write a bundle (convert, dense, finetune and cnn alike): its manifest is written once.
    writers = [path.relative_to(ROOT) for path in (ROOT / "convert").rglob("*.py")
               if path.name != "bundle_writer.py" and any(word in path.read_text(encoding="utf-8") for word in
                                                          ("write_manifest", "staging_folder", "MANIFEST"))]
    assert writers == []


def test_rooms_stay_small():
    # No module of the device package over 450 lines, no class over 350, at most 12 loose modules at its top.
    too_big = []
    for path in sorted((ROOT / "edge").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 450:
            too_big.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 350:
                too_big.append(f"{path.relative_to(ROOT)}: class {node.name} {node.end_lineno - node.lineno + 1} lines")
    assert too_big == []
    assert len(list((ROOT / "edge").glob("*.py"))) <= 12
