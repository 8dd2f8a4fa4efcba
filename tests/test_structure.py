"""The package's shape: imports form a one-way graph, the reference core stays plain PyTorch,
and importing the library pulls in no notebook machinery."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gemma3_minimal"
# Layers, imported one way only: a module may import its own layer and the layers above it in this list.
CORE = {"config", "masks", "rope", "layers", "kv_cache", "model", "vision", "multimodal", "generate",
        "sampling", "memory", "pan_and_scan", "distill", "teacher_store", "checks", "chat"}
PERFORMANCE = {"fast", "compiled", "quantize", "kv_quant", "cpu_kernels"}
BASE = {"assets"}  # imports nothing from the package; the cache folder any layer may write to
FORBIDDEN_IN_CORE = ("torch.library", "custom_op", "data_ptr", "as_strided", "is_compiling", "cudagraph",
                     "column_major", "stride(", "mark_static_address")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path, name: str) -> set[str]:
    """Every gemma3_minimal module that module `name` at `path` imports, function-local imports included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "gemma3_minimal"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "gemma3_minimal":
                target = node.module
            else:
                continue
            for alias in node.names:  # `from . import masks` imports the module gemma3_minimal.masks
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: package_imports(path, name) for name, path in MODULES.items()}


def test_the_package_imports_form_no_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [name, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_the_cycle_finder_sees_function_local_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from .model import Gemma3ForCausalLM\n    from . import masks\n")
    assert package_imports(probe, "gemma3_minimal.probe") == {"gemma3_minimal.model", "gemma3_minimal.masks"}


def test_imports_go_one_way_core_then_performance_then_loading_and_course():
    for name, deps in GRAPH.items():
        leaf = name.split(".")[1] if "." in name else ""
        for dep in deps:
            dep_leaf = dep.split(".")[1] if "." in dep else ""
            if leaf in CORE:
                assert dep_leaf in CORE, f"the reference core module {name} imports {dep}"
            if leaf in PERFORMANCE:
                assert dep_leaf in CORE | PERFORMANCE | BASE, f"the performance module {name} imports {dep}"
            if dep_leaf == "course":
                assert leaf == "course", f"{name} imports the course helpers ({dep})"
    assert not GRAPH["gemma3_minimal.assets"], "assets must import nothing from the package"


@pytest.mark.parametrize("name", ["layers", "model", "kv_cache", "generate"])
def test_the_reference_core_holds_no_speed_machinery(name):
    source = (PACKAGE / f"{name}.py").read_text()
    assert not [word for word in FORBIDDEN_IN_CORE if word in source]


def test_every_module_imports_the_package_at_the_top_only():
    """Package imports inside functions hide cycles and import costs: every one sits at module level."""
    local = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                local += [f"{name}:{n.lineno}" for n in ast.walk(func)
                          if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not local, f"imports inside functions: {local}"


def test_importing_the_library_pulls_in_no_notebook_machinery():
    code = ("import sys, gemma3_minimal; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'ipywidgets', 'jupyter', "
            "'jupyter_server', 'jupyterlab', 'IPython', 'ipykernel', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_readme_module_table_lists_every_module():
    readme = (PACKAGE.parent / "README.md").read_text()
    top_level = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    course = [f"course/{p.name}" for p in (PACKAGE / "course").glob("*.py") if p.name != "__init__.py"]
    missing = [name for name in top_level + course if f"`{name}`" not in readme]
    assert not missing, f"README's module table does not list {missing}"
    assert "`course/exercises/`" in readme
