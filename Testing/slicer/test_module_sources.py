"""What cannot run without the Slicer application: it must at least compile, keep Qt out of the logic, and
call only Slicer API names that exist (checked against the shared API name list); and the extension's
CMakeLists.txt must copy every file of the core package that the modules use."""

from __future__ import annotations

import ast
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
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
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
    assert len(logic_files) == 8
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
    for node in ast.walk(ast.parse(path.read_text())):
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
    known = set(names_file.read_text().split())
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
    text = (REPO / "CMakeLists.txt").read_text()
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
