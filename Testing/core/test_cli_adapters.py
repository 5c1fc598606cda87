"""``minisam segment --adapter`` and ``minisam adapters``: an adapter changes the mask, a foreign one is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from minisam.adapters import AdapterSpec, attach_adapter, save_adapter
from minisam.cli.main import main
from minisam.imageio import read_image
from minisam.model_loader import load_model

CXR = "cxr_lung_montgomery_shenzhen/images/MCUCXR_0001_0.png"
BOX = ["--box", "85", "55", "260", "370"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    """A strong random LoRA adapter for the default model, and one made for another base model."""
    folder = tmp_path_factory.mktemp("adapters")
    made = {}
    for name, spec in (("xray_test", "default"), ("foreign", "random:tiny")):
        loaded = load_model(spec)
        base_hash = loaded.base_hash()  # of the plain model, before peft wraps its layers
        model = attach_adapter(loaded.sam, AdapterSpec(rank=4), name)
        torch.manual_seed(0)
        for key, parameter in model.named_parameters():
            if "lora_B" in key:
                parameter.data.normal_(0, 0.5)  # peft starts B at zero: make the adapter matter
        meta = {"modality": "DX", "base_hash": base_hash, "base_model": loaded.name}
        made[name] = save_adapter(model, name, folder / name, meta)
    return made


def _mask(tmp_path: Path, name: str, extra: list[str], shared_data: Path) -> np.ndarray:
    out = tmp_path / name
    assert main(["segment", str(shared_data / CXR), *BOX, "--output", str(out), *extra]) == 0
    return read_image(out).array > 127


def test_adapter_by_path_changes_the_mask(
    shared_data: Path, tmp_path: Path, adapters, capsys
) -> None:
    base = _mask(tmp_path, "base.png", [], shared_data)
    adapted = _mask(tmp_path, "adapted.png", ["--adapter", str(adapters["xray_test"])], shared_data)
    assert "+ adapter xray_test" in capsys.readouterr().out
    assert (base != adapted).sum() > 100


def test_library_install_auto_choice_and_remove(
    shared_data: Path, tmp_path: Path, adapters, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("MINISAM_ADAPTERS", str(tmp_path / "library"))
    assert main(["adapters", "install", str(adapters["xray_test"])]) == 0
    assert main(["adapters", "list"]) == 0
    assert "xray_test" in capsys.readouterr().out
    # The PNG has no DICOM modality; --modality auto guesses "xray", which maps to the XRAY adapter.
    _mask(tmp_path, "auto.png", ["--adapter", "auto"], shared_data)
    assert "+ adapter xray_test" in capsys.readouterr().out
    assert main(["adapters", "remove", "xray_test"]) == 0
    _mask(tmp_path, "auto2.png", ["--adapter", "auto"], shared_data)
    assert "adapter" not in capsys.readouterr().out.splitlines()[0]


def test_adapter_for_another_base_is_refused(
    shared_data: Path, tmp_path: Path, adapters, capsys
) -> None:
    out = tmp_path / "m.png"
    code = main(
        [
            "segment",
            str(shared_data / CXR),
            *BOX,
            "--output",
            str(out),
            "--adapter",
            str(adapters["foreign"]),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "base" in err
    assert not out.exists()


def test_unknown_adapter_name(shared_data: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MINISAM_ADAPTERS", str(tmp_path / "library"))
    code = main(
        [
            "segment",
            str(shared_data / CXR),
            *BOX,
            "--output",
            str(tmp_path / "m.png"),
            "--adapter",
            "nosuch",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nosuch" in err and len(err.splitlines()) == 1


HC18 = "hc18_fetal_head_us/images/000_HC.png"
CT = "totalsegmentator_example/example_ct_sm.nii.gz"  # no DICOM tag: the preset decides


@pytest.mark.parametrize(
    ("preset", "adapter"), [("ct-lung", "ct_test"), ("ct", "ct_test"), ("raw", None)]
)
def test_auto_adapter_follows_the_family_of_the_preset(
    preset: str,
    adapter: str | None,
    shared_data: Path,
    tmp_path: Path,
    ct_adapter_library,
    capsys,
    monkeypatch,
) -> None:
    """``--modality ct-lung --adapter auto`` applies the CT adapter, as the Slicer effect does.

    (Before minisam.modality the CLI looked "ct-lung" up as a DICOM code and applied no adapter.)
    """
    monkeypatch.setenv("MINISAM_ADAPTERS", str(ct_adapter_library))
    out = tmp_path / "m.nii.gz"
    prompt = ["--slice", "24", "--box", "44", "27", "104", "81", "--output", str(out)]
    command = ["segment", str(shared_data / CT), *prompt, "--modality", preset, "--adapter", "auto"]
    assert main(command) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith(f" + adapter {adapter}") if adapter else "adapter" not in first


def test_builtin_adapter_works_on_a_fresh_install(
    shared_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The packaged ultrasound adapter is listed, usable by name and by auto, and not removable."""
    monkeypatch.setenv("MINISAM_ADAPTERS", str(tmp_path / "empty-library"))
    assert main(["adapters", "list"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if "us_hc18" in line]
    assert "built-in" in row and " US " in row
    image = str(shared_data / HC18)
    box = ["--box", "150", "80", "650", "460"]
    for extra in (["--adapter", "us_hc18"], ["--modality", "us", "--adapter", "auto"]):
        out = tmp_path / "m.png"
        assert main(["segment", image, *box, "--output", str(out), *extra]) == 0
        assert "+ adapter us_hc18" in capsys.readouterr().out.splitlines()[0]
        assert read_image(out).array.any()
    assert main(["adapters", "remove", "us_hc18"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "built into the package" in err
