"""segment-anything is imported deliberately: modeling only without torchvision, the full package with it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def _run(code: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    prefix = f"import sys; sys.path.insert(0, {str(extra_path)!r})\n" if extra_path else ""
    return subprocess.run(
        [sys.executable, "-c", prefix + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_torchvision_modeling_imports_and_the_predictor_does_not() -> None:
    result = _run("""
        import sys
        sys.modules["torchvision"] = None  # make `import torchvision` fail, as on a CPU-only install
        from minisam.sam_import import import_modeling, full_package_loaded, torchvision_available
        assert not torchvision_available()
        modeling = import_modeling()
        assert modeling.Sam.__name__ == "Sam"
        assert not full_package_loaded()
        from minisam.model_config import build_sam, preset
        build_sam(preset("tiny"))
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_with_torchvision_the_full_package_is_imported(tmp_path: Path) -> None:
    # A stand-in torchvision exposing exactly what segment_anything's __init__ imports.
    fake = tmp_path / "torchvision"
    (fake / "transforms").mkdir(parents=True)
    (fake / "ops").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "transforms" / "__init__.py").write_text("")
    (fake / "transforms" / "functional.py").write_text(
        "def resize(*a): pass\ndef to_pil_image(*a): pass\n"
    )
    (fake / "ops" / "__init__.py").write_text("")
    (fake / "ops" / "boxes.py").write_text("def batched_nms(*a): pass\ndef box_area(*a): pass\n")
    result = _run(
        """
        from minisam.sam_import import import_modeling, full_package_loaded
        import_modeling()
        assert full_package_loaded()
        import segment_anything
        print(segment_anything.SamPredictor.__name__)
    """,
        extra_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SamPredictor"
