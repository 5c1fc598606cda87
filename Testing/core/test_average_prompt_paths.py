"""scripts/average_prompt_paths.py, which made the default v3: prompt paths averaged, encoders kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from model_files import SMALL_MODEL

from minisam.checkpoints import save_checkpoint
from minisam.model_loader import load_model

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "average_prompt_paths.py"


def _variant(path: Path, change) -> Path:
    loaded = load_model(SMALL_MODEL)
    with torch.no_grad():
        change(loaded.sam)
    save_checkpoint(loaded.sam, loaded.config, path, {"name": path.stem, "report": {"x": 1}})
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )


def test_prompt_path_is_averaged_and_the_encoder_kept(tmp_path: Path) -> None:
    other = _variant(
        tmp_path / "other.safetensors",
        lambda sam: [p.add_(1.0) for p in sam.mask_decoder.parameters()],
    )
    out = tmp_path / "soup.safetensors"
    done = _run(SMALL_MODEL, str(other), "--weight", "0.25", "--out", str(out))
    assert done.returncode == 0, done.stderr
    base, soup = load_model(SMALL_MODEL), load_model(str(out))
    for name, value in base.sam.mask_decoder.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(soup.sam.mask_decoder.state_dict()[name], value + 0.25), name
    for name, value in base.sam.image_encoder.state_dict().items():
        assert torch.equal(soup.sam.image_encoder.state_dict()[name], value), name
    record = soup.card["weight_average"]
    assert record["weight_of_other"] == 0.25 and record["other"]["report"] == {"x": 1}
    assert len(record["base"]["sha256"]) == 64 and len(record["other"]["sha256"]) == 64


def test_different_encoders_are_refused(tmp_path: Path) -> None:
    other = _variant(
        tmp_path / "other.safetensors",
        lambda sam: next(sam.image_encoder.parameters()).add_(1.0),
    )
    out = tmp_path / "soup.safetensors"
    done = _run(SMALL_MODEL, str(other), "--weight", "0.5", "--out", str(out))
    assert done.returncode != 0 and "the image encoders must be the same" in done.stderr
    assert not out.exists()
