"""What cannot run without the Slicer application: it must at least compile, keep Qt out of the logic, and
call only Slicer API names that exist (checked against the shared API name list)."""

from __future__ import annotations

import ast
import py_compile
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
