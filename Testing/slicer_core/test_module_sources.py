"""What cannot run without the Slicer application: it must at least compile, keep Qt out of the logic, and
call only Slicer API names that exist (checked against the shared API name list); and the extension's
CMakeLists.txt must copy every file of the core package that the modules use."""

from __future__ import annotations

import ast
import builtins
import fnmatch
import py_compile
import re
import subprocess
import sys
from pathlib import Path

import pytest
from slicer_cases import MODULE_DIR, REPO

QT_MODULES = {"qt", "ctk", "SegmentEditorEffects", "qSlicerSegmentationsEditorEffectsPythonQt"}
LIB = MODULE_DIR / "MiniSAMSegmentLib"
QT_FILES = {
    MODULE_DIR / "MiniSAMSegment.py",
    LIB / "SegmentEditorEffect.py",
    LIB / "__init__.py",
    REPO / "MiniSAMTrain" / "MiniSAMTrain.py",
}
SOURCES = sorted(
    [*MODULE_DIR.rglob("*.py"), *(REPO / "MiniSAMTrain").rglob("*.py")], key=lambda p: str(p)
)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_compiles(path: Path, tmp_path: Path) -> None:
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


def test_logic_modules_import_no_qt() -> None:
    logic_files = sorted(set(LIB.glob("*.py")) - QT_FILES) + [
        MODULE_DIR / "Scripts" / "batch_segment.py"
    ]
    assert len(logic_files) == 12
    for path in logic_files:
        imported = {name.split(".")[0] for name in _imports(path)}
        assert not imported & QT_MODULES, f"{path.name} imports {imported & QT_MODULES}"
        assert "slicer.ScriptedLoadableModule" not in _imports(path), path.name
    import MiniSAMSegmentLib.logic  # noqa: F401

    assert "qt" not in sys.modules


def test_qt_files_do_use_qt() -> None:
    """The split is real: the effect and the module files are where the Qt code lives."""
    for path in QT_FILES - {LIB / "__init__.py", REPO / "MiniSAMTrain" / "MiniSAMTrain.py"}:
        assert "qt" in _imports(path), path.name


def _attribute_chains(path: Path, prefix: tuple[str, ...]) -> set[str]:
    """Names ``X`` used as ``<prefix>.X`` in a file (e.g. prefix ('self', 'scriptedEffect'))."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute):
            chain, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if isinstance(value, ast.Name):
                chain.insert(0, value.id)
                if tuple(chain[: len(prefix)]) == prefix and len(chain) == len(prefix) + 1:
                    found.add(chain[-1])
    return found


def test_slicer_api_names_exist(shared_data: Path) -> None:
    names_file = shared_data.parent / "slicer-api" / "names.txt"
    assert names_file.is_file(), f"{names_file} is missing"
    known = set(names_file.read_text(encoding="utf-8").split())
    effect = LIB / "SegmentEditorEffect.py"
    used = {
        f"qSlicerSegmentEditorAbstractEffect.{n}"
        for n in _attribute_chains(effect, ("self", "scriptedEffect"))
    }
    used |= {f"slicer.util.{n}" for p in QT_FILES for n in _attribute_chains(p, ("slicer", "util"))}
    used |= {f"vtk.vtkCommand.{n}" for n in _attribute_chains(effect, ("vtk", "vtkCommand"))}
    used |= {
        f"AbstractScriptedSegmentEditorEffect.{n}"
        for n in _attribute_chains(effect, ("self",))
        if n.startswith("xy")
    }
    assert len(used) > 25
    assert used <= known, sorted(used - known)


def _cmake_globs(variable: str) -> tuple[bool, list[str]]:
    """(recursive?, patterns) of the top-level CMakeLists.txt's ``file(GLOB[_RECURSE] <variable> ...)``."""
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    found = re.findall(rf"file\(\s*(GLOB|GLOB_RECURSE)\s+{variable}\s+([^)]*)\)", text)
    assert len(found) == 1, f"expected one file(GLOB... {variable} ...) in CMakeLists.txt"
    mode, body = found[0]
    words = iter(body.split())
    patterns = []
    for word in words:
        if word in ("RELATIVE", "LIST_DIRECTORIES"):
            next(words)  # their value
        elif word not in ("CONFIGURE_DEPENDS", "FOLLOW_SYMLINKS"):
            patterns.append(word)
    assert patterns, variable
    return mode == "GLOB_RECURSE", patterns


def _cmake_glob_matches(recursive: bool, pattern: str, path: str) -> bool:
    """CMake's rule: the file name matches the pattern's last component (``*`` never crosses a ``/``);
    GLOB wants the file directly in the pattern's folder, GLOB_RECURSE anywhere below it."""
    folder, _, name = pattern.rpartition("/")
    assert not any(c in folder for c in "*?["), f"{pattern}: wildcard folders are not modelled"
    path_folder, _, path_name = path.rpartition("/")
    if not fnmatch.fnmatchcase(path_name, name):
        return False
    return path_folder == folder or (recursive and path_folder.startswith(folder + "/"))


def _package_files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(REPO).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
    )


# pretrained/: the embedded model, its model card and the built-in adapters (adapters/<name>/...)
@pytest.mark.parametrize(
    ("variable", "folder", "suffix"),
    [
        ("MINISAM_CORE_RESOURCES", "minisam/pretrained", ""),
        ("MINISAM_CORE_SCRIPTS", "minisam", ".py"),
    ],
)
def test_extension_build_copies_every_core_file(variable: str, folder: str, suffix: str) -> None:
    """``import minisam`` in Slicer uses the copy the extension build makes next to the modules."""
    recursive, patterns = _cmake_globs(variable)
    files = [f for f in _package_files(REPO / folder) if f.endswith(suffix)]
    assert files, folder
    missed = [f for f in files if not any(_cmake_glob_matches(recursive, p, f) for p in patterns)]
    assert not missed, f"CMakeLists.txt {variable} does not copy {missed}"


def test_cmake_glob_model() -> None:
    """The helper above follows CMake's GLOB / GLOB_RECURSE semantics on the cases that matter here."""
    sub = "minisam/pretrained/adapters/us_hc18/minisam_adapter.json"
    assert _cmake_glob_matches(False, "minisam/pretrained/*.json", "minisam/pretrained/x.json")
    assert not _cmake_glob_matches(False, "minisam/pretrained/*.json", sub)
    assert _cmake_glob_matches(True, "minisam/pretrained/*.json", sub)
    assert not _cmake_glob_matches(True, "minisam/pretrained/*.json", "minisam/x.json")
    assert not _cmake_glob_matches(True, "minisam/pretrained/*.md", sub)


@pytest.mark.parametrize(
    ("module_folder", "library"),
    [("MiniSAMSegment", "MiniSAMSegmentLib"), ("MiniSAMTrain", "MiniSAMTrainLib")],
)
def test_modules_from_a_source_checkout_find_the_core_package(
    module_folder: str, library: str, tmp_path: Path
) -> None:
    # Slicer puts only a module's own folder on sys.path (modules added by path in its settings).
    # Without site-packages (-S) the installed minisam is out of reach, as in a fresh Slicer.
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / module_folder)!r})\n"
        "try:\n    import minisam\n    print('already importable')\nexcept ImportError:\n    pass\n"
        f"import {library}, minisam.errors, MiniSAMSegmentLib\n"
        "print(minisam.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # not the repository root, which "-c" would put on sys.path
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines == [str(REPO / "minisam" / "__init__.py")], done.stdout


# Slicer's qSlicerSegmentEditorScriptedEffect::setPythonSource (Modules/Loadable/Segmentations/EditorEffects/
# qSlicerSegmentEditorScriptedEffect.cxx) in Python: the module is named after the file's folder and created
# empty if missing (PyImport_AddModule); unless it already has the class, the file is executed into it.
SLICER_EFFECT_LOADER = """
import os, sys, types

class qSlicerSegmentEditorScriptedEffect:
    def __init__(self, parent):
        self._self = None

    def setPythonSource(self, path):
        module_name = os.path.basename(os.path.dirname(path))
        class_name = os.path.splitext(os.path.basename(path))[0]
        module = sys.modules.setdefault(module_name, types.ModuleType(module_name))
        if not hasattr(module, class_name):
            module.__file__ = path
            exec(compile(open(path).read(), path, "exec"), module.__dict__)
        self._self = getattr(module, class_name)(self)
        return True

    def self(self):
        return self._self

class AbstractScriptedSegmentEditorEffect:
    def __init__(self, scriptedEffect):
        self.scriptedEffect = scriptedEffect

    def register(self):
        REGISTERED.append(self)

REGISTERED = []
qt_stub = types.ModuleType("qt")
loader = types.ModuleType("qSlicerSegmentationsEditorEffectsPythonQt")
loader.qSlicerSegmentEditorScriptedEffect = qSlicerSegmentEditorScriptedEffect
effects = types.ModuleType("SegmentEditorEffects")
abstract = types.ModuleType("SegmentEditorEffects.AbstractScriptedSegmentEditorEffect")
abstract.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
abstract.__all__ = ["AbstractScriptedSegmentEditorEffect"]
scripted = types.ModuleType("slicer.ScriptedLoadableModule")
for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
             "ScriptedLoadableModuleWidget"):
    setattr(scripted, name, type(name, (), {}))
sys.modules.update({"qt": qt_stub, "qSlicerSegmentationsEditorEffectsPythonQt": loader,
                    "SegmentEditorEffects": effects, abstract.__name__: abstract, scripted.__name__: scripted})
"""


def test_effect_registers_without_another_module_importing_its_package(tmp_path: Path) -> None:
    """Issue 16: the effect's own imports (MiniSAMSegmentLib.dependencies, .logic) must work when no other
    module (MiniSAMTrain) imported the package before Slicer loads the effect file."""
    code = (
        SLICER_EFFECT_LOADER
        + f"sys.path.insert(0, {str(MODULE_DIR)!r})\n"  # Slicer puts each module's folder on sys.path
        + "import MiniSAMSegment\n"
        + "MiniSAMSegment.MiniSAMSegment.registerEditorEffect(None)\n"
        + "effect, = REGISTERED\n"
        + "print(type(effect).__module__, type(effect).__name__)\n"
        + "import MiniSAMSegmentLib.dependencies, MiniSAMSegmentLib.logic\n"  # what the effect imports
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["MiniSAMSegmentLib.SegmentEditorEffect", "SegmentEditorEffect"]


# What Slicer runs before MiniSAM's version check (MiniSAMSegmentLib/__init__.py) has said "too old":
# these must parse and run on the Python 3.9 of Slicer <= 5.8 so that the user reads that one line.
BEFORE_VERSION_CHECK = [
    MODULE_DIR / "MiniSAMSegment.py",
    LIB / "__init__.py",
    LIB / "compatibility.py",
    REPO / "MiniSAMTrain" / "MiniSAMTrain.py",
    REPO / "MiniSAMTrain" / "MiniSAMTrainLib" / "__init__.py",
]


def _python_310_constructs(path: Path) -> list[str]:
    """Python 3.10+ constructs in a file: grammar (match, ...), zip(strict=), and ``X | Y`` evaluated at
    run time (outside annotations, or in annotations without ``from __future__ import annotations``)."""
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, str(path), feature_version=(3, 9))
    except SyntaxError as exc:
        return [f"line {exc.lineno}: {exc.msg}"]
    lazy = any(
        isinstance(n, ast.ImportFrom)
        and n.module == "__future__"
        and "annotations" in {a.name for a in n.names}
        for n in tree.body
    )
    annotations = set()
    for node in ast.walk(tree):
        for annotation in (getattr(node, "annotation", None), getattr(node, "returns", None)):
            if annotation is not None and lazy:
                annotations |= {id(n) for n in ast.walk(annotation)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "zip":
            if any(k.arg == "strict" for k in node.keywords):
                found.append(f"line {node.lineno}: zip(strict=...)")
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.BitOr)
            and id(node) not in annotations
            and (_looks_like_a_type(node.left) or _looks_like_a_type(node.right))
        ):
            found.append(f"line {node.lineno}: '|' of types evaluated at run time")
    return found


def _looks_like_a_type(node: ast.AST) -> bool:
    """None, a builtin type, a capitalised name (a class) or a subscript (list[int]); not flags like Qt's."""
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Name):
        return node.id in dir(builtins) or node.id[:1].isupper()
    return isinstance(node, ast.Subscript)


@pytest.mark.parametrize("path", BEFORE_VERSION_CHECK, ids=lambda p: str(p.relative_to(REPO)))
def test_runs_on_python_39_up_to_the_version_check(path: Path) -> None:
    assert _python_310_constructs(path) == []


def test_the_python_39_check_sees_what_breaks_there(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(x: int | None) -> None:\n    match x:\n        case _:\n            pass\n"
    )
    assert "Pattern matching" in _python_310_constructs(sample)[0]
    sample.write_text("def f(a, b: int | None):\n    return list(zip(a, b, strict=True))\n")
    assert len(_python_310_constructs(sample)) == 2
    sample.write_text(
        "from __future__ import annotations\ndef f(b: int | None) -> str | None: ...\n"
    )
    assert _python_310_constructs(sample) == []
    sample.write_text("from __future__ import annotations\nOptional = int | None\n")
    assert _python_310_constructs(sample) == ["line 2: '|' of types evaluated at run time"]
    sample.write_text("flags = item.flags() | Qt.ItemIsUserCheckable\nmask = a | b\n")
    assert _python_310_constructs(sample) == []


def test_an_older_slicer_gets_one_line_naming_the_release_to_use(tmp_path: Path) -> None:
    from MiniSAMSegmentLib.compatibility import MINIMUM_SLICER, unsupported_python

    assert unsupported_python((3, 12, 10)) is None and unsupported_python((3, 10, 0)) is None
    message = unsupported_python((3, 9, 10))
    assert message == (
        f"MiniSAM needs 3D Slicer {MINIMUM_SLICER} or later (Python 3.10+); this Slicer runs Python 3.9.10"
    )
    # Slicer 5.8's Python, faked: both modules' packages refuse with that line
    for package in ("MiniSAMSegmentLib", "MiniSAMTrainLib"):
        code = (
            "import sys\n"
            "sys.version_info = (3, 9, 10, 'final', 0)\n"
            f"sys.path[:0] = [{str(MODULE_DIR)!r}, {str(REPO / 'MiniSAMTrain')!r}]\n"
            f"import {package}\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert done.returncode == 1
        assert done.stderr.strip().splitlines()[-1] == f"ImportError: {message}"
    cmake = re.search(
        r'set\(MINISAM_MINIMUM_SLICER "([0-9.]+)"\)',
        (REPO / "CMakeLists.txt").read_text(encoding="utf-8"),
    )
    assert (
        cmake and cmake.group(1) == MINIMUM_SLICER
    )  # the extension build refuses older releases too


@pytest.mark.parametrize("module_folder", ["MiniSAMSegment", "MiniSAMTrain"])
def test_module_build_lists_every_python_file(module_folder: str) -> None:
    """A Python file the module's CMakeLists.txt does not list is missing from the built extension."""
    folder = REPO / module_folder
    text = (
        (folder / "CMakeLists.txt")
        .read_text(encoding="utf-8")
        .replace("${MODULE_NAME}", module_folder)
    )
    listed = set(re.findall(r"^\s*(\S+\.py)\s*$", text, flags=re.MULTILINE))
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*.py")}
    assert files <= listed, sorted(files - listed)


def test_extension_catalog_links_point_at_files_of_the_repository() -> None:
    """The icon and screenshot URLs of the top-level CMakeLists name files that exist here (no broken
    image in the Extensions catalog); the homepage is an https URL."""
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    values = dict(re.findall(r'set\((EXTENSION_[A-Z]+) "([^"]*)"\)', text))
    assert values["EXTENSION_HOMEPAGE"].startswith("https://")
    prefix = "https://raw.githubusercontent.com/MiniSAM/MiniSAM/main/"
    links = [values["EXTENSION_ICONURL"], *values["EXTENSION_SCREENSHOTURLS"].split()]
    for link in links:
        assert link.startswith(prefix), link
        assert (REPO / link[len(prefix) :]).is_file(), f"{link} names no file of the repository"


def test_effect_choices_are_the_packages() -> None:
    """The effect lists the runtimes and precisions without importing minisam (torch may be missing
    when it loads): its tuples must be minisam's."""
    from minisam.runtime import PRECISIONS, RUNTIMES

    path = REPO / "MiniSAMSegment" / "MiniSAMSegmentLib" / "SegmentEditorEffect.py"
    values = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("RUNTIMES", "PRECISIONS"):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    assert values == {"RUNTIMES": RUNTIMES, "PRECISIONS": PRECISIONS}
