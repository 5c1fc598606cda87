"""The shared training loop: losses fall, cancel + resume continue exactly, torchrun agrees with one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minisam.cli.main import main as cli_main
from minisam.errors import InputError
from minisam.model_loader import load_model
from minisam.training.base_trainer import TrainSettings, resume_file, train_base
from minisam.training.distributed import World, shard
from minisam.training.manifest import write_manifest
from minisam.training.model_inputs import to_model_inputs
from minisam.training.slice_samples import samples_from_pairs

CXR = "cxr_lung_montgomery_shenzhen"


def _cxr_pairs(shared_data: Path, count: int) -> list[tuple[Path, Path]]:
    root = shared_data / CXR
    images = sorted((root / "images").glob("MCUCXR_*.png"))[:count]
    return [(image, root / "masks" / image.name) for image in images]


@pytest.fixture(scope="module")
def tiny_data(shared_data: Path):
    config = load_model("random:tiny").config
    samples = samples_from_pairs(_cxr_pairs(shared_data, 5), "cxr", "xray")
    return to_model_inputs(samples[:4], config), to_model_inputs(samples[4:], config)


def _fresh_tiny():
    return load_model("random:tiny", seed=3)


def test_losses_fall_on_a_fixed_batch(tiny_data, tmp_path: Path) -> None:
    train, _ = tiny_data
    loaded = _fresh_tiny()
    # A fixed batch: no geometric augmentation (intensity jitter and corrective clicks stay).
    settings = TrainSettings(
        epochs=30,
        batch_size=4,
        learning_rate=3e-3,
        box_probability=1.0,
        warmup_fraction=0.1,
        geometric_augmentation=0.0,
    )
    report = train_base(
        loaded.sam, loaded.config, train, train, tmp_path / "m.safetensors", settings
    )
    losses = [row["train_loss"] for row in report.history]
    assert losses[-1] < 0.6 * losses[0], losses
    assert report.history[-1]["val_dice"] > report.history[0]["val_dice"] + 0.2
    assert (tmp_path / "m.safetensors").is_file() and not resume_file(
        tmp_path / "m.safetensors"
    ).exists()


def test_cancel_then_resume_continues_where_it_stopped(tiny_data, tmp_path: Path) -> None:
    train, val = tiny_data
    settings = TrainSettings(epochs=3, batch_size=2, learning_rate=2e-3)  # 2 steps per epoch
    straight = _fresh_tiny()
    train_base(straight.sam, straight.config, train, val, tmp_path / "a.safetensors", settings)

    calls: list[dict] = []

    def cancel_at_third_step(info: dict) -> bool:
        calls.append(info)
        return not ("step" in info and sum("step" in c for c in calls) == 3)

    out = tmp_path / "b.safetensors"
    first = _fresh_tiny()
    report = train_base(
        first.sam, first.config, train, val, out, settings, progress=cancel_at_third_step
    )
    assert report.cancelled and resume_file(out).is_file()
    assert [r.get("partial", False) for r in report.history] == [False, True]

    second = _fresh_tiny()  # a new process would start from the same fresh model
    resumed = train_base(
        second.sam, second.config, train, val, out, settings, resume_from=resume_file(out)
    )
    assert resumed.resumed and not resumed.cancelled
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]
    for key, value in straight.sam.state_dict().items():
        torch.testing.assert_close(second.sam.state_dict()[key], value, rtol=0, atol=1e-6)
    assert not resume_file(out).exists()  # finished: the resume file is gone


def test_resume_refuses_other_settings_and_broken_files(tiny_data, tmp_path: Path) -> None:
    train, val = tiny_data
    out = tmp_path / "c.safetensors"
    loaded = _fresh_tiny()
    settings = TrainSettings(epochs=2, batch_size=2)
    train_base(loaded.sam, loaded.config, train, val, out, settings, progress=lambda info: False)
    with pytest.raises(InputError, match="batch_size 2 != 4"):
        train_base(loaded.sam, loaded.config, train, val, out, TrainSettings(epochs=2, batch_size=4),
                   resume_from=resume_file(out))  # fmt: skip
    broken = tmp_path / "broken.resume.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable resume file"):
        train_base(loaded.sam, loaded.config, train, val, out, settings, resume_from=broken)


def test_shard_weights_make_the_ddp_average_the_global_mean() -> None:
    batch = torch.arange(5)
    parts = [shard(batch, World(rank, 2)) for rank in range(2)]
    assert [p.tolist() for p, _ in parts] == [[0, 2, 4], [1, 3]]
    assert all(w == pytest.approx(2 / 5) for _, w in parts)
    lonely = [shard(torch.arange(1), World(rank, 2)) for rank in range(2)]
    assert lonely[0] == (torch.tensor([0]), 2.0) and lonely[1][1] == 0.0


def _train_base_args(manifest: Path, out: Path) -> list[str]:
    return ["train-base", "--manifest", str(manifest), "--arch", "tiny", "--epochs", "1",
            "--batch-size", "3", "--lr", "2e-3", "--val-fraction", "0.2", "--seed", "1",
            "--out", str(out), "--quiet"]  # fmt: skip


def test_torchrun_two_processes_agree_with_one(shared_data: Path, tmp_path: Path) -> None:
    rows = [
        {"image": str(i), "label": str(m), "modality": "xray"}
        for i, m in _cxr_pairs(shared_data, 5)
    ]
    manifest = write_manifest(tmp_path / "cxr.csv", rows)
    single = tmp_path / "single.safetensors"
    assert cli_main(_train_base_args(manifest, single)) == 0  # 4 train slices: steps of 3 and 1

    double = tmp_path / "double.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    done = subprocess.run(
        [*launcher, "-m", "minisam", *_train_base_args(manifest, double)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = load_file(str(single)), load_file(str(double))
    start = load_model("random:tiny", seed=1).sam.state_dict()  # train-base's init for --seed 1
    assert one.keys() == two.keys() == start.keys()
    update = torch.cat([(one[k] - start[k]).flatten() for k in one]).norm()
    apart = torch.cat([(two[k] - one[k]).flatten() for k in one]).norm()
    # Same global batches, prompts and augmentation: the runs differ only by float summation order.
    assert update > 0 and apart < 0.01 * update, (float(apart), float(update))
    history = [json.loads(p.with_suffix(".history.json").read_text()) for p in (single, double)]
    assert history[0]["history"][0]["train_loss"] == pytest.approx(
        history[1]["history"][0]["train_loss"], rel=0.5
    )  # rank 0's loss is its own share's, so only roughly the same
    assert history[0]["history"][0]["val_dice"] == pytest.approx(
        history[1]["history"][0]["val_dice"], abs=1e-4
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--arch", "tiny", "--out", "x.pt"], "must end in .safetensors"),
        (["--arch", "tiny", "--out", "nope/x.safetensors"], "does not exist"),
        (["--arch", "nosuch", "--out", "x.safetensors"], "unknown architecture"),
        (["--arch", "tiny", "--out", "x.safetensors", "--resume"], "no resume file"),
        (["--arch", "tiny", "--out", "exists.safetensors"], "exists; choose another"),
        (["--arch", "tiny", "--out", "x.safetensors", "--max-slices", "99"], "more than the"),
    ],
)
def test_train_base_bad_input_exits_2(
    shared_data: Path, tmp_path: Path, monkeypatch, capsys, extra: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    rows = [{"image": str(i), "label": str(m)} for i, m in _cxr_pairs(shared_data, 3)]
    write_manifest(tmp_path / "m.csv", rows)
    (tmp_path / "exists.safetensors").write_bytes(b"keep me")
    code = cli_main(["train-base", "--manifest", "m.csv", "--epochs", "1", "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert (tmp_path / "exists.safetensors").read_bytes() == b"keep me"
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "x.pt").exists()
