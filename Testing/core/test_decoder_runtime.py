"""The mask decoder's runtime (minisam.runtime.decoder): torch's masks, every prompt shape, adapters, cache.

The decoder follows the encoder's runtime. The mechanics run on the small test model (exports in
seconds); numerics are compared with the torch decoder on the same embedding, prompt by prompt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_files import SMALL_MODEL

from minisam.adapters import AdapterSpec, AdapterSwitcher, attach_adapter
from minisam.adapters.choice import resolve_adapter
from minisam.adapters.lora import adapter_parameters
from minisam.engine import SamEngine
from minisam.errors import ModelError
from minisam.model_loader import load_model
from minisam.prompts import Prompt
from minisam.runtime import openvino_backend
from minisam.runtime.adapter_state import adapter_signature, export_hash
from minisam.runtime.decoder import CompiledDecoder, DecoderGraph, TorchDecoder

DECODER_ONLY = AdapterSpec(target_modules=(), include_decoder=True, rank=2, alpha=4)


def _prompts(previous: np.ndarray) -> dict[str, Prompt]:
    """Prompts with 1 to 4 sparse tokens and with a dense (mask) input."""
    return {
        "one click": Prompt.create(positive=[[150, 200]]),
        "box": Prompt.create(box=[85, 55, 260, 370]),
        "box and clicks": Prompt.create(
            box=[85, 55, 260, 370], positive=[[150, 200]], negative=[[60, 40]]
        ),
        "three clicks": Prompt.create(positive=[[150, 200], [170, 260]], negative=[[60, 40]]),
        "click and previous mask": Prompt.create(box=[85, 55, 260, 370]).with_point(
            np.array([150, 200]), 1, mask_logits=previous
        ),
    }


@pytest.mark.parametrize(("runtime", "precision"), [("openvino", "f32"), ("onnxruntime", "auto")])
def test_exported_decoder_gives_torchs_masks(runtime_cache, cxr_rgb, runtime, precision) -> None:
    loaded = load_model(SMALL_MODEL)
    reference = SamEngine(loaded.sam, loaded.config)
    engine = SamEngine(loaded.sam, loaded.config, runtime=runtime, precision=precision)
    assert isinstance(reference.decoder, TorchDecoder) and reference.decoder.describe() == "torch"
    assert engine.decoder.describe() == f"{runtime} (f32)"
    embedding = reference.embed(
        cxr_rgb
    )  # the same features for both: the decoder alone is compared
    previous = reference.predict(embedding, Prompt.create(box=[85, 55, 260, 370])).low_res_logits
    for name, prompt in _prompts(previous[0]).items():
        for multimask in (False, True):
            expected = reference.predict(embedding, prompt, multimask=multimask)
            got = engine.predict(embedding, prompt, multimask=multimask)
            assert got.masks.shape == expected.masks.shape, name
            np.testing.assert_allclose(
                got.low_res_logits, expected.low_res_logits, atol=2e-3, rtol=0, err_msg=name
            )
            np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4, err_msg=name)
            disagree = (got.masks != expected.masks).mean()
            assert disagree < 1e-4, (name, multimask, disagree)
    assert engine.decoder.torch_calls == 0


def test_bf16_decoder_is_close(runtime_cache, cxr_rgb) -> None:
    loaded = load_model(SMALL_MODEL)
    reference = SamEngine(loaded.sam, loaded.config)
    engine = SamEngine(loaded.sam, loaded.config, runtime="openvino", precision="bf16")
    assert engine.decoder.describe() == "openvino (bf16)"
    embedding = reference.embed(cxr_rgb)
    prompt = Prompt.create(box=[85, 55, 260, 370])
    a, b = reference.predict(embedding, prompt).mask, engine.predict(embedding, prompt).mask
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.99


def test_decoder_adapter_gets_its_own_export(
    random_adapter, count_exports, runtime_cache, cxr_rgb, tmp_path: Path, monkeypatch
) -> None:
    loaded = load_model(SMALL_MODEL)
    switcher = AdapterSwitcher(loaded)
    engine = SamEngine(loaded.sam, loaded.config, runtime="openvino", precision="f32")
    torch_engine = SamEngine(loaded.sam, loaded.config)
    embedding = torch_engine.embed(cxr_rgb)
    prompt = Prompt.create(positive=[[150, 200]])
    base = engine.predict(embedding, prompt)
    base_hash = export_hash(DecoderGraph(loaded.sam))
    calls = count_exports(openvino_backend, "decoder")
    loaded_states = engine.decoder.exports_loaded

    switcher.use(
        resolve_adapter(
            str(random_adapter(tmp_path / "dec", DECODER_ONLY, "dec")), loaded.base_hash()
        )
    )
    assert export_hash(DecoderGraph(loaded.sam)) != base_hash
    adapted = engine.predict(embedding, prompt)
    expected = torch_engine.predict(embedding, prompt)
    assert len(calls) == 1 and engine.decoder.exports_loaded == loaded_states + 1
    assert engine.decoder.torch_calls == 0  # the adapter runs inside the export
    np.testing.assert_allclose(adapted.low_res_logits, expected.low_res_logits, atol=2e-3)
    assert np.abs(adapted.low_res_logits - base.low_res_logits).max() > 0.05  # it did change

    switcher.use(None)  # back to the base model: its compiled decoder, no new export
    assert (
        export_hash(DecoderGraph(loaded.sam)) == base_hash
    )  # a loaded, inactive adapter is not in it
    np.testing.assert_array_equal(
        engine.predict(embedding, prompt).low_res_logits, base.low_res_logits
    )
    assert len(calls) == 1 and engine.decoder.exports_loaded == loaded_states + 1


def test_decoder_export_is_cached_across_engines(count_exports, runtime_cache, monkeypatch) -> None:
    loaded = load_model(SMALL_MODEL)
    SamEngine(loaded.sam, loaded.config, runtime="openvino", precision="f32")
    calls = count_exports(openvino_backend, "decoder")
    again = SamEngine(loaded.sam, loaded.config, runtime="openvino", precision="bf16")
    assert calls == [] and not again.decoder.built
    assert again.decoder.export_folder.name.startswith("decoder-openvino-")


def test_a_failed_decoder_export(runtime_cache, cxr_rgb, monkeypatch) -> None:
    """auto: the decoder falls back to torch and says why (the encoder keeps its export); by name:
    one line."""
    loaded = load_model(SMALL_MODEL)
    original = openvino_backend.build

    def broken(module, spec, folder):
        if "masks" in spec.outputs:
            raise RuntimeError("exporter exploded\nsecond line")
        return original(module, spec, folder)

    monkeypatch.setattr(openvino_backend, "build", broken)
    monkeypatch.setenv("MINISAM_CACHE", str(runtime_cache / "empty"))
    engine = SamEngine(loaded.sam, loaded.config, runtime="auto")
    assert engine.encoder.describe() == "openvino (f32)"
    assert engine.decoder.describe() == "torch (openvino failed: exporter exploded)"
    embedding = engine.embed(cxr_rgb)
    reference = SamEngine(loaded.sam, loaded.config)
    prompt = Prompt.create(box=[85, 55, 260, 370])
    np.testing.assert_array_equal(
        engine.predict(embedding, prompt).mask, reference.predict(embedding, prompt).mask
    )
    assert engine.decoder.torch_calls == 1
    with pytest.raises(ModelError) as error:
        CompiledDecoder(loaded.sam, "openvino").prepare()
    assert str(error.value) == (
        "--runtime openvino: the mask decoder could not be exported or loaded (exporter exploded)"
    )


def test_adapter_signature_sees_new_weights_under_the_same_name() -> None:
    """A compiled decoder is looked up by the adapter state's signature: an adapter reloaded under
    the same name with other weights (its file retrained) must not find the old one."""
    loaded = load_model(SMALL_MODEL)
    graph = DecoderGraph(loaded.sam)
    base = adapter_signature(graph)
    peft_model = attach_adapter(loaded.sam, DECODER_ONLY, "dec")
    first = adapter_signature(graph)
    assert first != base
    with torch.no_grad():
        next(iter(adapter_parameters(peft_model, "dec").values())).add_(0.1)
    assert adapter_signature(graph) not in (first, base)
    peft_model.base_model.disable_adapter_layers()
    assert adapter_signature(graph) == base


def test_auto_precision_runs_openvinos_decoder_in_bf16_where_the_cpu_has_it(
    runtime_cache, monkeypatch
) -> None:
    """--precision auto: the encoder f32 (exact), the decoder bf16 (Dice >= 0.998 against torch's
    masks on average, docs/bench/encoder_runtimes.md); on a CPU without bf16, f32."""
    import openvino as ov

    loaded = load_model(SMALL_MODEL)
    engine = SamEngine(loaded.sam, loaded.config, runtime="openvino")
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert engine.encoder.describe() == "openvino (f32)"
    assert engine.decoder.describe() == f"openvino ({'bf16' if has_bf16 else 'f32'})"
    exact = SamEngine(loaded.sam, loaded.config, runtime="openvino", precision="F32")
    assert exact.decoder.describe() == "openvino (f32)"
    assert SamEngine(loaded.sam, loaded.config, runtime="onnxruntime").decoder.precision == "f32"

    monkeypatch.setattr(ov.Core, "get_property", lambda self, device, name: ["FP32", "INT8"])
    without = SamEngine(loaded.sam, loaded.config, runtime="openvino", precision="bf16")
    assert without.encoder.describe() == "openvino (f32)"
    assert without.decoder.describe() == "openvino (f32)"
