"""The layer rule of ARCHITECTURE.md, checked on the source by an AST walk, and the contract paths.

    views ──► session ──► cluster_protocol ◄── backends
                 └──► nbdist.backends (the loader; never a backend module)
    integrations (beside views: joblib's backend) ──► the public Python API (INTEGRATIONS_API)

Every import counts, function-local and ``TYPE_CHECKING`` ones included, and no underscore name
crosses a module boundary.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nbdist"

# Modules allowed to reach every layer: the lazy facade and the two contract shims.
FACADES = {"nbdist", "nbdist.multiprocess", "nbdist.slurm"}

# Underscore attributes that are public API of the standard library.
STDLIB_UNDERSCORE_API = {"_exit", "_replace", "_asdict", "_fields", "_make", "_field_defaults"}

# The one reach into another library's internals, and why: a Job *is* a concurrent.futures.Future (so
# ``wait``/``as_completed`` take it), and a retry makes a settled Future pending again, which Future has
# no public way to do (``SessionFuture.reopen``, under the Future's own condition). Settling uses the
# public set_result/set_exception/cancel/set_running_or_notify_cancel. futures.py is the only module
# allowed these names, and only on ``self``.
FUTURE_INTERNALS = {"nbdist.session.futures": {"_condition", "_state", "_result", "_exception"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from … import`` names (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> list[tuple[str, list[str], int]]:
    """``(imported module, imported names, line)`` for every import in ``module``, nested ones too."""
    tree = ast.parse(MODULES[module].read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            names = [alias.name for alias in node.names]
            # ``from pkg import sub`` imports the submodule pkg.sub when there is one.
            subs = [name for name in names if f"{target}.{name}" in MODULES]
            found.extend((f"{target}.{name}", [], node.lineno) for name in subs)
            rest = [name for name in names if name not in subs]
            if rest or not subs:
                found.append((target, rest, node.lineno))
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


# What nbdist/integrations/ may import: the session's public names and the modules behind the facade's
# ``nbdist.function``/``nbdist.Executor`` (``resolve_session``: one session for a plug-in's jobs).
INTEGRATIONS_API = {"nbdist.session", "nbdist.session.functions", "nbdist.session.executor"}


def _allowed(importer: str, target: str) -> bool:
    """The dependency rule: may ``importer`` import the nbdist module ``target``?"""
    if importer in FACADES:
        return True
    if target == "nbdist":
        return False  # no module imports the facade
    source, dest = _layer(importer), _layer(target)
    if source == dest:
        return True
    if source == "backends":
        return dest == "cluster_protocol"
    if source == "session":
        return dest == "cluster_protocol" or target == "nbdist.backends"
    if source == "views":
        return target == "nbdist.session"  # its public names only: never a submodule of the session
    if source == "integrations":
        # Beside the views: other libraries' plug-ins (joblib's backend) on the public Python API only.
        return target in INTEGRATIONS_API
    return False  # cluster_protocol imports nothing else of nbdist


def test_every_import_follows_the_layer_rule():
    broken = [f"{module}:{line} imports {target}"
              for module in MODULES
              for target, _names, line in imports_of(module)
              if (target == "nbdist" or target.startswith("nbdist.")) and not _allowed(module, target)]
    assert not broken, "\n".join(broken)


def test_views_import_only_the_public_names_of_the_session_package():
    """Views draw what the session computes: they import ``nbdist.session``'s ``__all__``, no submodule of it
    (``nbdist.session.state``, ``.sweep``, ``.snapshot`` were imported directly before), so a rule the
    views need is a public name of the core, not a second copy or a reach inside."""
    import nbdist.session

    public = set(nbdist.session.__all__)
    broken = [f"{module}:{line} imports {target}" + (f" {sorted(set(names) - public)}" * (target == "nbdist.session"))
              for module in MODULES if module.startswith("nbdist.views.")
              for target, names, line in imports_of(module)
              if target.startswith("nbdist.session") and (target != "nbdist.session" or not set(names) <= public)]
    assert not broken, "\n".join(broken)


def test_no_import_cycle():
    graph = {module: {target for target, _names, _line in imports_of(module) if target in MODULES}
             for module in MODULES}
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_no_private_name_is_imported_from_another_module():
    crossings = [f"{module}:{line} imports {name} from {target}"
                 for module in MODULES
                 for target, names, line in imports_of(module)
                 for name in names
                 if name.startswith("_") and not name.startswith("__")]
    assert not crossings, "\n".join(crossings)


def _private_attributes_defined(tree: ast.AST) -> set[str]:
    defined = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            defined.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
        elif isinstance(node, ast.keyword) and node.arg:
            defined.add(node.arg)  # NamedTuple / dataclass fields set by keyword
    return defined


def test_no_private_attribute_of_another_module_is_used():
    """``obj._name`` is only used where ``_name`` is defined: its own module (the rule of process.py)."""
    used_elsewhere = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        defined = _private_attributes_defined(tree)
        for node in ast.walk(tree):
            allowed_on_self = FUTURE_INTERNALS.get(module, set())
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and node.attr not in defined and node.attr not in STDLIB_UNDERSCORE_API
                    and not (node.attr in allowed_on_self and isinstance(node.value, ast.Name)
                             and node.value.id == "self")):
                used_elsewhere.append(f"{module}:{node.lineno} uses .{node.attr}")
    assert not used_elsewhere, "\n".join(used_elsewhere)


def test_no_file_is_over_500_lines():
    long = {module: count for module, path in MODULES.items()
            if (count := len(path.read_text().splitlines())) > 500}
    assert not long, long


# ---------------------------------------------------------------------------- contract paths

CONTRACT = {
    "nbdist": ["Session", "State", "Job", "Array", "Attempt", "JobFailed", "LogPaths", "Snapshot", "StepRow",
               "UnknownJob", "submit", "array", "attach", "default_session", "set_default_session", "show",
               "load_ipython_extension", "__version__", "Executor", "RemoteError", "function", "call", "map"],
    "nbdist.cluster_protocol": ["ClusterDistributor", "ClusterWorkerNode", "ClusterQueue", "TaskInstanceStatus",
                                "RemoteExitInfoNotAvailable", "TaskReport", "ReportingDistributor",
                                "AdoptingDistributor", "SessionDefaults"],
    "nbdist.cluster_protocol.resources": ["Resources", "parse_memory", "parse_runtime"],
    "nbdist.multiprocess": ["PickableTask", "Consumer", "MultiprocessDistributor", "MultiprocessWorkerNode",
                            "RemoteExitInfoNotAvailable", "new_job_id_prefix"],
    "nbdist.slurm": ["SlurmDistributor", "SlurmWorkerNode", "SlurmUnavailable"],
    "nbdist.backends": ["load_backend", "available_backends", "BUILTIN_BACKENDS", "ENTRY_POINT_GROUP"],
}


@pytest.mark.parametrize("path", sorted(CONTRACT))
def test_contract_names_import_from_their_documented_path(path):
    module = importlib.import_module(path)
    missing = [name for name in CONTRACT[path] if not hasattr(module, name)]
    assert not missing, f"{path} lacks {missing}"


def test_the_facade_lists_and_shows_its_public_names():
    import nbdist

    assert set(CONTRACT["nbdist"]) == set(nbdist.__all__)
    assert set(nbdist.__all__) <= set(dir(nbdist))
    leaked = {name for name in vars(nbdist) if not name.startswith("_")} - set(nbdist.__all__) - {
        "annotations"} - {name for name in vars(nbdist) if isinstance(vars(nbdist)[name], type(nbdist))}
    assert not leaked, f"names in nbdist's namespace but not in __all__: {sorted(leaked)}"


def test_builtin_backends_load_and_the_console_scripts_resolve():
    from nbdist.backends import BUILTIN_BACKENDS, load_backend
    from nbdist.cluster_protocol import ClusterDistributor

    protocol = [name for name in vars(ClusterDistributor) if not name.startswith("_")]
    for name in BUILTIN_BACKENDS:
        cls = load_backend(name)
        assert [member for member in protocol if not hasattr(cls, member)] == [], name
    for target in ("nbdist.views.cli:main", "nbdist.backends._task.worker:main"):
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute))


def test_a_consumer_starts_without_the_session_or_sqlite(tmp_path):
    """The consumer's import and its first task must stay light: a consumer starts per distributor, so every
    millisecond of import is paid once per Jobmon task submitted alone (about 30 ms today, 60 ms with these)."""
    heavy = ("sqlite3", "nbdist.session", "nbdist.backends.multiprocess.distributor", "importlib.metadata",
             "subprocess", "logging", "dataclasses", "inspect", "json", "nbdist.backends._task.callworker",
             "nbdist.backends._task.pycall")
    code = textwrap.dedent(f"""
        import sys
        import nbdist.backends.multiprocess.consumer
        from nbdist.backends._task.runner import RunningTask, TaskSpec
        outcome = RunningTask(TaskSpec("1", "true", {str(tmp_path / 'o')!r}, {str(tmp_path / 'e')!r}, {{}})).wait()
        assert outcome.status == "D", outcome
        print([name for name in {heavy!r} if name in sys.modules])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
