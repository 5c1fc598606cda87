"""The browser app's suite needs trame-slicer (with slicer-core) and Playwright; one clear failure if not."""

from __future__ import annotations

import importlib.util


def test_web_packages_present() -> None:
    for module, package in (
        ("trame_slicer", "trame-slicer[standalone]==2.0.*"),
        ("slicer", "slicer-core==5.11.*"),
        ("playwright", "playwright"),
    ):
        assert importlib.util.find_spec(module) is not None, (
            f"the Testing/web suite needs {package}: pip install -e '.[test]'"
        )
