"""The OpenVINO INT8 image encoder: `minisam calibrate-int8`, then `--precision int8` (NNCF is in the
test extra, so nothing here is skipped). Mechanics on the small test model, real slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_files import SMALL_MODEL

from minisam.cli.calibrate_command import volume_slices
from minisam.cli.main import main
from minisam.engine import SamEngine
from minisam.errors import ModelError, PromptError
from minisam.metrics import dice
from minisam.model_loader import load_model
from minisam.prompts import Prompt
from minisam.runtime.export_cache import exports_dir
from minisam.runtime.int8_encoder import CALIBRATION_FILE, int8_key

HC18 = ("hc18_fetal_head_us/images/000_HC.png", "hc18_fetal_head_us/images/002_HC.png")
CT = "totalsegmentator_example/example_ct_sm.nii.gz"
BOX = [85, 55, 260, 370]


@pytest.fixture(scope="module")
def model():
    return load_model(SMALL_MODEL)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_volume_slices_are_even_and_skip_blank_ones() -> None:
    volume = np.zeros((20, 4, 4), dtype=np.float32)
    volume[5:15, 1, 1] = 1.0  # slices 5..14 hold something
    assert volume_slices(volume, 3) == [5, 9, 14]
    assert volume_slices(volume, 50) == list(range(5, 15))
    assert volume_slices(np.zeros((3, 4, 4)), 2) == []


def test_int8_before_calibration_fails_with_one_line(
    runtime_cache, model, shared_data: Path, tmp_path: Path, capsys
) -> None:
    with pytest.raises(ModelError, match="calibrate-int8"):
        SamEngine(model.sam, model.config, runtime="auto", precision="int8")
    out = tmp_path / "mask.png"
    argv = ["segment", str(shared_data / HC18[0]), "--box", "100", "100", "400", "300"]
    assert main([*argv, "--model", SMALL_MODEL, "--precision", "int8", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no INT8 encoder has been calibrated" in err
    assert not out.exists()
    with pytest.raises(PromptError, match="int8 applies to the openvino runtime"):
        SamEngine(model.sam, model.config, runtime="torch", precision="int8")


def test_calibrate_then_int8_runs_quantized_near_f32(
    runtime_cache, model, shared_data: Path, cxr_rgb, capsys
) -> None:
    images = [str(shared_data / name) for name in (*HC18, CT)]
    argv = ["calibrate-int8", *images, "--model", SMALL_MODEL, "--slices-per-volume", "2"]
    assert main([*argv, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "calibrated on 4 slices" in captured.out
    # NNCF's rich progress bars obey --quiet (they went to stdout before)
    assert "Statistics collection" not in captured.out + captured.err
    folder = exports_dir() / int8_key(model.sam.image_encoder, model.config.image_size).folder_name
    record = json.loads((folder / CALIBRATION_FILE).read_text())
    assert record["slices"] == 4 and record["names"][:2] == ["000_HC.png", "002_HC.png"]
    assert record["names"][2].startswith("example_ct_sm.nii.gz[")
    assert (
        "FakeQuantize" in (folder / "model.xml").read_text()
    )  # NNCF's INT8 nodes are in the graph

    f32 = SamEngine(model.sam, model.config, runtime="openvino", precision="f32")
    int8 = SamEngine(model.sam, model.config, runtime="openvino", precision="int8")
    assert int8.encoder.describe() == "openvino (int8)"
    assert int8.encoder.export_folder == folder
    assert int8.decoder.precision in ("f32", "bf16")  # the decoder keeps its auto precision
    reference, quantized = f32.embed(cxr_rgb), int8.embed(cxr_rgb)
    error = _relative_error(quantized.features, reference.features)
    assert 0.0 < error < 0.5  # quantized (not f32's numbers), yet the same embedding
    prompt = Prompt(box=np.array(BOX, dtype=np.float32))
    a, b = f32.predict(reference, prompt).mask, int8.predict(quantized, prompt).mask
    assert dice(a, b) > 0.9


def test_an_edited_int8_export_is_never_used(runtime_cache, model, shared_data: Path) -> None:
    argv = ["calibrate-int8", str(shared_data / HC18[0]), "--model", SMALL_MODEL, "--quiet"]
    assert main(argv) == 0
    folder = exports_dir() / int8_key(model.sam.image_encoder, model.config.image_size).folder_name
    (folder / CALIBRATION_FILE).write_text("{}")
    with pytest.raises(ModelError, match="no INT8 encoder"):
        SamEngine(model.sam, model.config, runtime="openvino", precision="int8")


def test_an_int8_export_that_will_not_load_fails_even_under_auto(
    runtime_cache, model, monkeypatch
) -> None:
    """`--runtime auto` falls back to torch when an export fails, but torch has no INT8 encoder: the user
    asked for int8 and gets one line, not f32 in torch."""
    import minisam.runtime.int8_encoder as int8_encoder

    def broken(*args, **kwargs):
        raise RuntimeError("compile failed\nsecond line")

    monkeypatch.setattr(int8_encoder, "load_int8_encoder", broken)
    with pytest.raises(ModelError) as error:
        SamEngine(model.sam, model.config, runtime="auto", precision="int8")
    assert "compile failed" in str(error.value) and "\n" not in str(error.value)


def test_calibrate_bad_input_gives_one_line(
    runtime_cache, shared_data: Path, tmp_path: Path, capsys
) -> None:
    missing = tmp_path / "nope.png"
    assert main(["calibrate-int8", str(missing), "--model", SMALL_MODEL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"image {missing} does not exist" in err
    image = str(shared_data / HC18[0])
    assert main(["calibrate-int8", image, "--slices-per-volume", "0"]) == 2
    assert "--slices-per-volume 0 must be at least 1" in capsys.readouterr().err


def test_nncf_progress_goes_to_stderr_or_nowhere(capfd) -> None:
    """NNCF's rich bars: on the process's stderr (past a native-output capture) or, quiet, nowhere;
    rich's console follows sys.stdout again afterwards."""
    from rich import get_console

    from minisam.library_noise import native_output_captured, rich_progress_to_stderr

    with rich_progress_to_stderr(quiet=False), native_output_captured():
        get_console().print("shown bar")
    with rich_progress_to_stderr(quiet=True), native_output_captured():
        get_console().print("hidden bar")
    get_console().print("a result")
    captured = capfd.readouterr()
    assert "shown bar" in captured.err and "shown bar" not in captured.out
    assert "hidden bar" not in captured.out + captured.err
    assert "a result" in captured.out
