"""Encoder runtimes (minisam.runtime): numerics against torch, the export cache, adapters, choices.

openvino, onnx and onnxruntime are installed with the test extra, so nothing here is skipped. The
mechanics run on the small test model (exports in seconds); the embedded default's own export is checked
against torch once.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from model_files import SMALL_MODEL

from minisam.adapters import AdapterSwitcher
from minisam.adapters.choice import resolve_adapter
from minisam.cli.main import main
from minisam.engine import SamEngine
from minisam.errors import MiniSAMError, ModelError, PromptError
from minisam.model_loader import load_model
from minisam.runtime import encoder_runtime, onnxruntime_backend, openvino_backend, resolve_runtime
from minisam.runtime.adapter_state import export_hash
from minisam.runtime.export_cache import MANIFEST, ExportKey, is_valid


@pytest.fixture(scope="module")
def model():
    return load_model(SMALL_MODEL)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    ("runtime", "precision", "tolerance"),
    [("openvino", "f32", 1e-4), ("openvino", "bf16", 0.02), ("onnxruntime", "auto", 1e-4)],
)
def test_runtime_matches_torch(
    runtime_cache, model, cxr_rgb, runtime, precision, tolerance
) -> None:
    reference = SamEngine(model.sam, model.config)
    engine = SamEngine(model.sam, model.config, runtime=runtime, precision=precision)
    assert engine.encoder.describe() == f"{runtime} ({'f32' if precision == 'auto' else precision})"
    expected, got = reference.embed(cxr_rgb), engine.embed(cxr_rgb)
    assert got.features.shape == expected.features.shape
    assert _relative_error(got.features, expected.features) < tolerance
    box = np.array([85, 55, 260, 370], dtype=np.float32)
    from minisam.prompts import Prompt

    prompt = Prompt(box=box)
    a, b = reference.predict(expected, prompt).mask, engine.predict(got, prompt).mask
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.99


def test_the_defaults_openvino_export_matches_torch(runtime_cache, cxr_rgb) -> None:
    """What ``--runtime auto`` runs on a CPU for the embedded default: f32, exact to 1e-4."""
    default = load_model("default")
    reference = SamEngine(default.sam, default.config)
    engine = SamEngine(default.sam, default.config, runtime="auto")
    assert engine.encoder.describe() == "openvino (f32)"
    expected, got = reference.embed(cxr_rgb), engine.embed(cxr_rgb)
    assert _relative_error(got.features, expected.features) < 1e-4


def test_export_is_cached_and_a_corrupt_one_rebuilt(
    count_exports, runtime_cache, model, cxr_rgb, monkeypatch
) -> None:
    calls = count_exports(openvino_backend)
    first = SamEngine(model.sam, model.config, runtime="openvino", precision="f32")
    folder = first.encoder.export_folder
    assert (
        folder.parent.parent == runtime_cache and len(calls) <= 1
    )  # made now or by the test above
    # a second engine (another process, another precision) loads the cached export
    SamEngine(model.sam, model.config, runtime="openvino", precision="bf16")
    made = len(calls)
    again = SamEngine(model.sam, model.config, runtime="openvino", precision="f32")
    assert len(calls) == made and not again.encoder.built
    expected = first.embed(cxr_rgb).features

    weights = folder / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # same size, other bytes
    weights.write_bytes(bytes(data))
    rebuilt = SamEngine(model.sam, model.config, runtime="openvino", precision="f32")
    assert len(calls) == made + 1 and rebuilt.encoder.built
    assert torch.equal(rebuilt.embed(cxr_rgb).features, expected)

    # every other damage makes the folder invalid as well (then rebuilt the same way)
    key = ExportKey("openvino", export_hash(model.sam.image_encoder), model.config.image_size)
    assert is_valid(folder, key)
    manifest = (folder / MANIFEST).read_text()
    stale = replace(key, module_hash="0" * 16)
    assert not is_valid(folder, stale) and not is_valid(folder, replace(key, input_size=1024))
    (folder / MANIFEST).write_text(manifest.replace(key.module_hash, stale.module_hash))
    assert not is_valid(folder, key)  # a manifest written for other weights
    (folder / MANIFEST).write_text(manifest[:-10])
    assert not is_valid(folder, key)  # a truncated manifest
    (folder / MANIFEST).write_text(manifest)
    assert is_valid(folder, key)
    (folder / "model.xml").unlink()
    assert not is_valid(folder, key)  # a file missing
    assert json.loads((folder / MANIFEST).read_text())["key"]["runtime"] == "openvino"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no leftovers


def test_onnxruntime_export_is_cached(count_exports, runtime_cache, model, monkeypatch) -> None:
    calls = count_exports(onnxruntime_backend)
    SamEngine(model.sam, model.config, runtime="onnxruntime")
    SamEngine(model.sam, model.config, runtime="onnxruntime")
    assert len(calls) <= 1


def test_encoder_adapter_runs_in_torch(
    random_adapter, runtime_cache, cxr_rgb, tmp_path: Path
) -> None:
    loaded = load_model(SMALL_MODEL)
    base_hash = export_hash(loaded.sam.image_encoder)
    switcher = AdapterSwitcher(loaded)
    engine = SamEngine(loaded.sam, loaded.config, runtime="openvino", precision="f32")
    torch_engine = SamEngine(loaded.sam, loaded.config)
    base = engine.embed(cxr_rgb).features
    assert engine.encoder.torch_calls == 0

    from minisam.adapters import AdapterSpec

    folder = random_adapter(tmp_path / "enc", AdapterSpec(rank=2, alpha=4), "enc")
    switcher.use(resolve_adapter(str(folder), loaded.base_hash()))  # LoRA on the encoder
    assert export_hash(loaded.sam.image_encoder) != base_hash  # it computes something else now
    adapted = engine.embed(cxr_rgb).features
    assert engine.encoder.torch_calls == 1
    assert torch.equal(adapted, torch_engine.embed(cxr_rgb).features)
    assert _relative_error(adapted, base) > 1e-3

    switcher.use(None)  # back to the base model: the export again
    assert (
        export_hash(loaded.sam.image_encoder) == base_hash
    )  # a loaded, inactive adapter is not in it
    assert _relative_error(engine.embed(cxr_rgb).features, base) < 1e-6
    assert engine.encoder.torch_calls == 1


def test_decoder_only_adapter_keeps_the_export(runtime_cache, cxr_rgb) -> None:
    from minisam.adapters import AdapterSpec, attach_adapter

    loaded = load_model(SMALL_MODEL)
    attach_adapter(loaded.sam, AdapterSpec(target_modules=(), include_decoder=True), "decoder")
    engine = SamEngine(loaded.sam, loaded.config, runtime="openvino", precision="f32")
    engine.embed(cxr_rgb)
    assert engine.encoder.torch_calls == 0 and engine.encoder.describe() == "openvino (f32)"


def test_auto_choice(runtime_cache, model, monkeypatch) -> None:
    assert resolve_runtime("auto", "cpu", model.sam.image_encoder) == ("openvino", None)
    runtime, note = resolve_runtime("AUTO", "cuda", model.sam.image_encoder)
    assert runtime == "torch" and "device is cuda" in note
    assert resolve_runtime("torch", "cpu", model.sam.image_encoder) == ("torch", None)
    with pytest.raises(PromptError, match="--runtime openvino cannot run"):
        resolve_runtime("openvino", "cuda", model.sam.image_encoder)

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded\nsecond line")

    monkeypatch.setattr(openvino_backend, "build", broken)
    monkeypatch.setenv("MINISAM_CACHE", str(runtime_cache / "empty"))
    encoder = encoder_runtime("auto", model.sam, model.config.image_size)
    assert encoder.describe() == "torch (openvino failed: exporter exploded)"
    with pytest.raises(ModelError) as error:
        encoder_runtime("openvino", model.sam, model.config.image_size)
    assert str(error.value) == (
        "--runtime openvino: the image encoder could not be exported or loaded (exporter exploded)"
    )
    assert not (runtime_cache / "empty").exists()  # a failed export leaves no cache folder


def test_bad_runtime_values_give_one_line(capsys, tmp_path: Path) -> None:
    argv = ["segment", "in.png", "--box", "1", "1", "5", "5", "--runtime", "fast"]
    with pytest.raises(SystemExit) as stop:  # argparse's choices, one line
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--runtime: invalid choice: 'fast'" in err
    argv = ["segment", "in.png", "--box", "1", "1", "5", "5", "--runtime", "torch"]
    assert main([*argv, "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "minisam segment: error: --precision bf16 applies to the openvino runtime; torch runs f32\n"
    )
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label\n")
    out = tmp_path / "out"
    argv = ["evaluate", "--manifest", str(manifest), "--out", str(out)]
    assert main([*argv, "--config", "a=default,runtime=fast"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "runtime= 'fast': choose one of auto, torch" in err
    assert main([*argv, "--runtime", "gpu"]) == 2
    assert "--runtime/--precision: runtime= 'gpu'" in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_configuration_carries_the_runtime() -> None:
    from minisam.evaluation.configs import build_configurations

    (config,) = build_configurations(["ov=default,runtime=OpenVINO,precision=f32"], [], [], [])
    assert (config.runtime, config.precision) == ("openvino", "f32")
    (plain,) = build_configurations([], ["default"], [], [])
    assert "runtime" not in plain.as_dict()  # older run.json files still resume
    with pytest.raises(MiniSAMError, match="bf16 applies to the openvino runtime"):
        build_configurations([], ["default"], [], [], runtime="onnxruntime", precision="bf16")


def test_evaluate_configuration_carries_the_lone_click_mode() -> None:
    from minisam.evaluation.configs import build_configurations
    from minisam.evaluation.runner import load_configuration

    raw, refine = build_configurations(["raw=default,lone_click=raw", "refine=default"], [], [], [])
    # recorded only where it changes masks (--multimask auto), so that older runs resume exactly when
    # their answers would be the same
    assert raw.as_dict(lone_clicks_answered=True)["lone_click"] == "raw"
    assert refine.as_dict(lone_clicks_answered=True)["lone_click"] == "refine"
    assert "lone_click" not in raw.as_dict() and "lone_click" not in refine.as_dict()
    assert load_configuration(raw).engine.engine.lone_click == "raw"
    assert load_configuration(refine).engine.engine.lone_click == "refine"
    with pytest.raises(MiniSAMError, match=r"lone_click= 'box': expected refine or raw") as error:
        build_configurations(["x=default,lone_click=box"], [], [], [])
    assert "\n" not in str(error.value)


def test_an_older_multimask_auto_run_does_not_resume_with_refined_answers(
    tmp_path: Path, capsys
) -> None:
    """A --multimask auto run recorded before lone clicks were refined (no lone_click in run.json)
    answered them raw: resuming it with today's default would mix raw and refined rows."""
    from minisam.evaluation.configs import build_configurations
    from minisam.evaluation.outputs import CASE_COLUMNS
    from minisam.evaluation.pipeline import _resume_rows, _run_info
    from minisam.evaluation.prompting import parse_prompt_mode
    from minisam.evaluation.runner import EvaluationSettings

    (config,) = build_configurations(["v3=default"], [], [], [])
    auto = EvaluationSettings(prompt=parse_prompt_mode("clicks:1"), multimask=None)
    never = EvaluationSettings(prompt=parse_prompt_mode("clicks:1"), multimask=False)
    (tmp_path / "cases.csv").write_text(",".join(CASE_COLUMNS) + "\n")
    for settings, resumes in ((auto, False), (never, True)):
        old = _run_info(settings, [config])
        old["configs"][0].pop("lone_click", None)  # as written before the option existed
        (tmp_path / "run.json").write_text(json.dumps(old))
        if resumes:
            assert _resume_rows(tmp_path, _run_info(settings, [config]), fresh=False) == {}
        else:
            with pytest.raises(MiniSAMError, match="configuration v3 was defined differently"):
                _resume_rows(tmp_path, _run_info(settings, [config]), fresh=False)
