"""Adapters: only adapter weights train, folders round-trip exactly, hot-swap, peft interop, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from minisam.adapters import (
    AdapterLibrary,
    AdapterSpec,
    AdapterSwitcher,
    adapter_io,
    attach_adapter,
    count_adapter_parameters,
    count_trainable_parameters,
    injection,
    load_adapter,
    read_adapter,
    save_adapter,
)
from minisam.adapters.choice import resolve_adapter
from minisam.adapters.library import BUILTIN_ROOT
from minisam.adapters.lora import adapter_parameters, base_module, target_module_names
from minisam.adapters.metadata import CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE, read_metadata
from minisam.adapters.model_card import model_card
from minisam.checkpoints import weights_hash
from minisam.engine import SamEngine
from minisam.errors import ModelError
from minisam.model_config import build_sam, preset
from minisam.model_loader import load_model

TINY = preset("tiny")
LORA = AdapterSpec(method="lora", rank=4, alpha=8)
LORA_DECODER = AdapterSpec(method="lora", rank=2, alpha=4, include_decoder=True)
ADALORA = AdapterSpec(
    method="adalora", init_r=6, target_r=2, alpha=8, tinit=1, tfinal=1, total_step=5
)


def _base(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_sam(TINY)


BASE_HASH = weights_hash(_base())


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    """Image embedding, mask logits and IoU for a fixed image and point, as one vector."""
    sam = base_module(model)
    generator = torch.Generator().manual_seed(7)
    image = torch.rand(1, 3, TINY.image_size, TINY.image_size, generator=generator) * 255
    points = (torch.tensor([[[40.0, 70.0]]]), torch.tensor([[1]]))
    with torch.inference_mode():
        embedding = sam.image_encoder(sam.preprocess(image))
        sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=None)
        low_res, iou = sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
    return torch.cat([embedding.flatten(), low_res.flatten(), iou.flatten()])


def _randomise(model: torch.nn.Module, name: str, seed: int) -> None:
    """peft starts LoRA with B = 0 (AdaLoRA with E = 0): make the adapter change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter_parameters(model, name).values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def _adapter(spec: AdapterSpec, name: str, seed: int) -> PeftModel:
    model = attach_adapter(_base(), spec, name)
    _randomise(model, name, seed)
    return model


def _save(model: PeftModel, name: str, folder: Path, modality: str = "CT", **extra) -> Path:
    metadata = {"modality": modality, "base_hash": BASE_HASH, "base_model": "random:tiny", **extra}
    return save_adapter(model, name, folder, metadata)


def _grad_names(model: torch.nn.Module) -> set[str]:
    return {k for k, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------ training


def test_default_targets_are_the_encoder_attention_only() -> None:
    sam = _base()
    expected = [
        f"image_encoder.blocks.{i}.attn.{leaf}" for i in range(2) for leaf in ("qkv", "proj")
    ]
    assert target_module_names(sam, LORA) == expected  # not patch_embed.proj, not the decoder
    with_decoder = target_module_names(sam, LORA_DECODER)
    decoder = [n for n in with_decoder if n.startswith("mask_decoder.")]
    assert with_decoder[:4] == expected and len(decoder) == 16  # 4 attention blocks x q/k/v/out


def test_decoder_heads_target_the_output_hypernetworks_and_iou_head_and_change_the_mask() -> None:
    sam = _base()
    heads = AdapterSpec(
        rank=2, alpha=4, target_modules=(), include_decoder=True, decoder_target_modules=("heads",)
    )
    names = target_module_names(sam, heads)
    layers = sam.mask_decoder.num_mask_tokens * 3 + sam.mask_decoder.iou_prediction_head.num_layers
    assert len(names) == layers and all(
        n.startswith(
            ("mask_decoder.output_hypernetworks_mlps.", "mask_decoder.iou_prediction_head.")
        )
        for n in names
    )
    both = replace(heads, decoder_target_modules=("q_proj", "heads"))
    assert set(names) < set(target_module_names(sam, both))
    before = _outputs(sam)
    model = _adapter(heads, "us", seed=1)
    after = _outputs(model)
    with torch.inference_mode():
        size = sam.image_encoder(torch.zeros(1, 3, TINY.image_size, TINY.image_size)).numel()
    assert torch.equal(before[:size], after[:size])  # the encoder is untouched
    assert not torch.allclose(before[size:], after[size:])  # the mask and IoU change


@pytest.mark.parametrize("spec", [LORA, LORA_DECODER, ADALORA], ids=["lora", "lora+dec", "adalora"])
def test_gradients_reach_only_adapter_parameters(spec: AdapterSpec) -> None:
    model = attach_adapter(_base(), spec, "ct")
    adapter = adapter_parameters(model, "ct")
    assert adapter and count_trainable_parameters(model) == count_adapter_parameters(model, "ct")
    sam = base_module(model).train()
    image = torch.rand(1, 3, TINY.image_size, TINY.image_size) * 255
    sam.image_encoder(sam.preprocess(image)).square().mean().backward()
    encoder_adapter = {k for k in adapter if ".image_encoder." in k}
    assert (
        _grad_names(model) == encoder_adapter
    )  # nothing of the base model, all of the encoder's adapter
    # LoRA's B and AdaLoRA's E receive a non-zero gradient even while the adapter is still the identity.
    assert any(float(adapter[k].grad.abs().sum()) > 0 for k in encoder_adapter)
    total = sum(p.numel() for p in model.parameters())
    print(f"{spec.method}: {count_adapter_parameters(model, 'ct')} adapter params of {total}")


# ------------------------------------------------------------------------------------------ save/load


@pytest.mark.parametrize("spec", [LORA, LORA_DECODER, ADALORA], ids=["lora", "lora+dec", "adalora"])
def test_save_then_load_reproduces_the_outputs_exactly(spec: AdapterSpec, tmp_path: Path) -> None:
    trained = _adapter(spec, "ct", seed=11)
    expected = _outputs(trained)
    assert not torch.equal(expected, _outputs(_base())), "the adapter must change the outputs"
    folder = _save(trained, "ct", tmp_path / "ct", metrics={"dice": 0.5})
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE, "README.md"]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["ct"], "temporary folders left behind"
    card = (folder / "README.md").read_text()
    assert "[More Information Needed]" not in card  # peft's boilerplate is replaced by our card
    assert "Modality: CT" in card and BASE_HASH in card and "--adapter ct" in card
    assert "dice: 0.5" in card
    meta = json.loads((folder / METADATA_FILE).read_text())
    assert meta["base_hash"] == BASE_HASH and meta["spec"]["method"] == spec.method
    assert meta["trainable_params"] == count_adapter_parameters(trained, "ct")
    loaded = load_adapter(_base(), folder, BASE_HASH)
    assert torch.equal(_outputs(loaded), expected)
    assert count_trainable_parameters(loaded) == 0  # loaded for inference: frozen
    # Saving the loaded adapter again gives the same tensors.
    again = read_adapter(_save(loaded, "ct", tmp_path / "again"))
    for key, tensor in read_adapter(folder).tensors.items():
        assert torch.equal(tensor, again.tensors[key]), key


@pytest.mark.filterwarnings(
    "ignore:The following rank_pattern keys:RuntimeWarning"
)  # peft's own load
def test_adalora_after_rank_allocation_round_trips(tmp_path: Path) -> None:
    model = _adapter(ADALORA, "mr", seed=5)
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    image = torch.rand(1, 3, TINY.image_size, TINY.image_size) * 255
    sam = base_module(model)
    for step in range(ADALORA.total_step):
        sam.image_encoder(sam.preprocess(image)).square().mean().backward()
        optimiser.step()
        model.base_model.update_and_allocate(step)  # AdaLoRA's budget: prunes singular values
        optimiser.zero_grad()
    pattern = model.peft_config["mr"].rank_pattern
    assert pattern and sum(sum(mask) for mask in pattern.values()) < 6 * len(pattern)
    expected = _outputs(model)
    folder = _save(model, "mr", tmp_path / "mr", modality="MR")
    assert (
        model.peft_config["mr"].rank_pattern == pattern
    )  # peft's save hook must not alter the live config
    contents = read_adapter(folder)
    assert {rank for _, _, rank in contents.layers.values()} != {6}  # stored at the allocated ranks
    # "enc" occurs inside "image_encoder...lora_E": peft's resize would cut the layer path wrongly.
    ours = load_adapter(_base(), folder, BASE_HASH, name="enc")
    theirs = PeftModel.from_pretrained(_base(), str(folder))
    assert torch.equal(_outputs(ours), _outputs(theirs))
    # Pruned ranks are zeros in the trained model but absent after loading: equal up to summation order.
    torch.testing.assert_close(_outputs(ours), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings(
    "ignore:The following rank_pattern keys:RuntimeWarning"
)  # peft's own load
def test_adalora_with_a_rank_0_layer_saves_quietly_and_round_trips(tmp_path: Path) -> None:
    """AdaLoRA may prune a layer to rank 0; peft then warns of unsynchronised ZeRO-3 / FSDP shards (its
    check of empty lora_A / lora_B), which is wrong here: the save must be silent and still load back."""
    import warnings

    model = _adapter(ADALORA, "mr", seed=5)
    pattern = model.peft_config["mr"].rank_pattern = {}
    for module_name, module in model.base_model.model.named_modules():
        if hasattr(module, "lora_E") and "mr" in module.lora_E:
            key = f"{module_name}.lora_E.mr"  # as AdaLoRA's budget names them
            ranks = module.lora_E["mr"].shape[0]
            pattern[key] = [False] * ranks if not pattern else [True] * ranks
            if not any(pattern[key]):
                with torch.no_grad():
                    module.lora_E["mr"].zero_()  # what AdaLoRA's budget does to pruned ranks
    assert any(not any(mask) for mask in pattern.values())
    expected = _outputs(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = _save(model, "mr", tmp_path / "mr", modality="MR")
    noise = [str(w.message) for w in caught if "invalid shape" in str(w.message)]
    assert noise == []
    assert 0 in {rank for _, _, rank in read_adapter(folder).layers.values()}
    loaded = load_adapter(_base(), folder, BASE_HASH)
    torch.testing.assert_close(_outputs(loaded), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", [LORA_DECODER, ADALORA], ids=["lora+dec", "adalora"])
def test_peft_loads_our_folder_with_its_own_api(spec: AdapterSpec, tmp_path: Path) -> None:
    folder = _save(_adapter(spec, "ct", seed=3), "ct", tmp_path / "ct")
    theirs = PeftModel.from_pretrained(_base(), str(folder))  # peft alone, adapter named "default"
    ours = load_adapter(_base(), folder, BASE_HASH)
    assert torch.equal(_outputs(theirs), _outputs(ours))
    assert not torch.equal(_outputs(theirs), _outputs(_base()))


def test_save_is_atomic_when_it_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _adapter(LORA, "ct", seed=1)
    folder = _save(first, "ct", tmp_path / "ct")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fail(_folder: Path) -> None:
        raise ModelError("simulated failure after writing")

    monkeypatch.setattr(adapter_io, "read_adapter", fail)
    with pytest.raises(ModelError, match="simulated"):
        _save(_adapter(LORA, "ct", seed=2), "ct", folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ct"], "temporary folders left behind"
    with pytest.raises(ModelError, match="unknown modality"):
        _save(first, "ct", tmp_path / "other", modality="FOO")


# ------------------------------------------------------------------------------------------ hot swap


def test_hot_swap_gives_each_adapters_own_outputs(tmp_path: Path) -> None:
    references = {None: _outputs(_base())}
    for name, spec, seed in (("ct", LORA, 1), ("mr", LORA_DECODER, 2)):
        model = _adapter(spec, name, seed)
        references[name] = _outputs(model)
        _save(model, name, tmp_path / name)
    assert not torch.equal(references["ct"], references["mr"])

    loaded = _base()
    switcher = AdapterSwitcher(loaded, base_hash=BASE_HASH)
    # A copy of "ct" as "ct2" first: loading "ct" next must not mistake ct2's tensors for its own.
    assert switcher.add(tmp_path / "ct", name="ct2") == "ct2"
    assert switcher.add(tmp_path / "ct") == "ct" and switcher.add(tmp_path / "mr") == "mr"
    assert switcher.names == ["ct2", "ct", "mr"] and switcher.active is None
    assert torch.equal(_outputs(loaded), references[None])  # adding does not activate
    times = []
    for name in ("ct", "mr", None, "mr", "ct", None, "ct2", "ct"):
        times.append(switcher.activate(name))
        assert switcher.active == name and switcher.state_key.endswith(name or "base")
        assert torch.equal(_outputs(loaded), references[name and name[:2]]), name
    assert count_trainable_parameters(loaded) == 0
    print(f"switch time: max {max(times) * 1e3:.2f} ms, mean {np.mean(times) * 1e3:.2f} ms")
    assert max(times) <= 0.1
    # The engine runs on the same module, so it follows the switch.
    engine = SamEngine(switcher.sam, TINY)
    rgb = np.random.default_rng(0).uniform(0, 255, (96, 80, 3))
    switcher.activate("mr")
    with_mr = engine.embed(rgb).features
    switcher.activate(None)
    assert not torch.equal(with_mr, engine.embed(rgb).features)
    switcher.remove("ct2")
    switcher.remove("mr")  # the decoder layers only "mr" adapted get their original layers back
    assert set(switcher.sam.state_dict()) == set(
        base_module(attach_adapter(_base(), LORA, "ct")).state_dict()
    )
    assert torch.equal(_outputs(loaded), references[None])
    switcher.activate("ct")
    assert torch.equal(_outputs(loaded), references["ct"])
    switcher.remove("ct")
    assert switcher.names == [] and torch.equal(_outputs(loaded), references[None])
    assert set(loaded.state_dict()) == set(_base().state_dict())  # original layers are back
    with pytest.raises(ModelError, match="not loaded"):
        switcher.activate("ct")


# ------------------------------------------------------------------------------------------ bad input


def _truncate(folder: Path) -> None:
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text())
    config.update(changes)
    (folder / CONFIG_FILE).write_text(json.dumps(config))


def _move_block(folder: Path) -> None:
    """Tensors of block 1 renamed to a block 7 that the tiny encoder does not have."""
    tensors = load_file(str(folder / WEIGHTS_FILE))
    moved = {k.replace(".blocks.1.", ".blocks.7."): v for k, v in tensors.items()}
    save_file(moved, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})


BAD: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "missing folder": (lambda f: f.rename(f.with_name("gone")), BASE_HASH, "does not exist"),
    "missing weights": (lambda f: (f / WEIGHTS_FILE).unlink(), BASE_HASH, f"lacks {WEIGHTS_FILE}"),
    "missing config": (lambda f: (f / CONFIG_FILE).unlink(), BASE_HASH, f"lacks {CONFIG_FILE}"),
    "truncated weights": (_truncate, BASE_HASH, "truncated or corrupt"),
    "invalid metadata json": (
        lambda f: (f / METADATA_FILE).write_text("{nope"),
        BASE_HASH,
        "not valid JSON",
    ),
    "invalid config json": (
        lambda f: (f / CONFIG_FILE).write_text("[1, "),
        BASE_HASH,
        "not valid JSON",
    ),
    "wrong base hash": (lambda f: None, "0123456789abcdef", "was trained for base"),
    "rank mismatch": (lambda f: _edit_config(f, r=2), BASE_HASH, "rank mismatch"),
    "target mismatch": (
        lambda f: _edit_config(f, target_modules=r"image_encoder\.blocks\.\d+\.mlp\.lin1"),
        BASE_HASH,
        "target mismatch",
    ),
    "layer the model lacks": (_move_block, BASE_HASH, "target mismatch"),
}


@pytest.mark.parametrize("into_peft_model", [False, True], ids=["into-sam", "into-peft-model"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_adapter_fails_with_one_line_and_leaves_the_model_unchanged(
    case: str, into_peft_model: bool, tmp_path: Path
) -> None:
    corrupt, expected_hash, message = BAD[case]
    folder = _save(_adapter(LORA, "ct", seed=4), "ct", tmp_path / "ct")
    corrupt(folder)
    model = _adapter(LORA_DECODER, "other", seed=9) if into_peft_model else _base()
    before = _outputs(model)
    keys = set(model.state_dict())
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    with pytest.raises(ModelError) as error:
        load_adapter(model, folder, expected_hash)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert torch.equal(_outputs(model), before)
    assert set(model.state_dict()) == keys
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    if into_peft_model:
        assert list(model.peft_config) == ["other"] and model.active_adapter == "other"
    else:
        assert not isinstance(model, PeftModel) and "peft_config" not in vars(model)


@pytest.mark.parametrize("into_peft_model", [False, True], ids=["into-sam", "into-peft-model"])
def test_failure_while_peft_applies_the_adapter_is_rolled_back(
    into_peft_model: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _save(_adapter(LORA_DECODER, "ct", seed=4), "ct", tmp_path / "ct")
    model = _adapter(LORA, "other", seed=9) if into_peft_model else _base()
    before, keys = _outputs(model), set(model.state_dict())
    flags = {k: p.requires_grad for k, p in model.named_parameters()}

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated failure inside peft")

    # After validation, when the layers are already injected: the hardest moment to undo.
    monkeypatch.setattr(injection, "set_peft_model_state_dict", fail)
    with pytest.raises(ModelError, match="could not be applied"):
        load_adapter(model, folder, BASE_HASH)
    assert torch.equal(_outputs(model), before) and set(model.state_dict()) == keys
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    if into_peft_model:
        assert list(model.peft_config) == ["other"] and model.active_adapter == "other"
    else:
        assert "peft_config" not in vars(model)


def test_mixing_lora_and_adalora_in_one_model_is_refused(tmp_path: Path) -> None:
    folder = _save(_adapter(ADALORA, "mr", seed=1), "mr", tmp_path / "mr")
    model = _adapter(LORA, "ct", seed=2)
    before = _outputs(model)
    with pytest.raises(ModelError, match="cannot mix"):
        load_adapter(model, folder, BASE_HASH)
    assert torch.equal(_outputs(model), before)


# ------------------------------------------------------------------------------------------ library


def test_library_install_list_remove_and_modality_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINISAM_ADAPTERS", str(tmp_path / "lib"))
    library = AdapterLibrary(builtin=None)  # the user library alone; built-ins: see below
    assert library.root == tmp_path / "lib" and library.list() == []
    sources = {}
    for name, modality, spec in (
        ("ct", "CT", LORA),
        ("mr", "MR", LORA_DECODER),
        ("chest", "DX", LORA),
    ):
        model = _adapter(spec, name, seed=len(name))
        sources[name] = (_save(model, name, tmp_path / "src" / name, modality=modality), model)
        info = library.install(sources[name][0])
        assert info.name == name and info.path == library.root / name
    listed = {info.name: info for info in library.list()}
    assert sorted(listed) == ["chest", "ct", "mr"]
    assert listed["chest"].modality == "XRAY" and listed["mr"].modality == "MR"
    for name, (_, model) in sources.items():
        info = listed[name]
        assert info.base_hash == BASE_HASH and info.method == "lora"
        assert info.trainable_params == count_adapter_parameters(model, name)
        assert info.rank == (2 if name == "mr" else 4)
        assert info.size_bytes == sum(p.stat().st_size for p in info.path.iterdir())
    assert library.for_modality("CT", BASE_HASH).name == "ct"
    assert library.for_modality("mr", BASE_HASH).name == "mr"
    assert library.for_modality("MG", BASE_HASH).name == "chest"  # mammography -> X-ray family
    assert library.for_modality("US", BASE_HASH) is None  # no ultrasound adapter: the base model
    assert library.for_modality("CT", "0" * 16) is None  # no adapter for another base
    # A choice by name or "none" (resolve_adapter) overrides the modality.
    assert resolve_adapter("mr", BASE_HASH, "CT", library).name == "mr"
    assert resolve_adapter("mr", BASE_HASH, "CT", library).folder == library.root / "mr"
    assert resolve_adapter("none", BASE_HASH, "CT", library) is None
    assert resolve_adapter(" Base ", BASE_HASH, "CT", library) is None
    assert resolve_adapter("auto", BASE_HASH, "CT", library).name == "ct"
    assert resolve_adapter("auto", BASE_HASH, None, library) is None
    with pytest.raises(ModelError, match="was trained for base"):
        resolve_adapter("ct", "0" * 16, "CT", library)
    with pytest.raises(ModelError, match="not installed"):
        resolve_adapter("nosuch", BASE_HASH, "CT", library)
    with pytest.raises(ModelError, match="does not exist"):
        resolve_adapter(str(tmp_path / "missing"), BASE_HASH, "CT", library)
    with pytest.raises(ModelError, match="already installed"):
        library.install(sources["ct"][0])
    assert library.install(sources["ct"][0], replace=True).name == "ct"
    library.remove("ct")
    assert [info.name for info in library.list()] == ["chest", "mr"]
    assert library.for_modality("CT", BASE_HASH) is None
    with pytest.raises(ModelError, match="not installed"):
        library.remove("ct")
    assert not [p for p in library.root.iterdir() if p.name.startswith(".")], (
        "temporary folders left"
    )
    # An installed adapter loads by name into a switcher.
    switcher = AdapterSwitcher(_base(), base_hash=BASE_HASH, library=library)
    switcher.activate(switcher.add("mr"))
    assert torch.equal(_outputs(switcher.sam), _outputs(sources["mr"][1]))


def test_builtin_adapters_are_listed_chosen_and_shadowed_but_not_removed(tmp_path: Path) -> None:
    library = AdapterLibrary(tmp_path / "lib")  # empty user library: the packaged adapters show
    assert library.builtin == BUILTIN_ROOT
    (shipped,) = [info for info in library.list() if info.name == "us_hc18"]
    assert shipped.builtin and shipped.modality == "US" and shipped.path == BUILTIN_ROOT / "us_hc18"
    assert library.path("us_hc18") == shipped.path
    hc18_base = shipped.base_hash
    assert library.for_modality("US", hc18_base) == shipped  # --adapter auto on an ultrasound
    assert resolve_adapter("us_hc18", hc18_base, "CT", library).folder == shipped.path
    assert library.for_modality("US", BASE_HASH) is None  # built for another base
    with pytest.raises(ModelError, match="built into the package") as error:
        library.remove("us_hc18")
    assert len(str(error.value).splitlines()) == 1 and "shadow" in str(error.value)
    assert (BUILTIN_ROOT / "us_hc18").is_dir()
    assert AdapterLibrary(tmp_path / "lib", builtin=None).list() == []
    # A user adapter wins over a built-in one: by name (shadowing) and by modality (even if older).
    for name, created in (("us_hc18", "2020-01-01T00:00:00+00:00"), ("us_mine", "2000-01-01")):
        model = _adapter(LORA, name, seed=3)
        meta = {"base_hash": hc18_base, "created": created}
        library.install(_save(model, name, tmp_path / "src" / name, "US", **meta))
    listed = {info.name: info for info in library.list()}
    assert sorted(listed) == ["us_hc18", "us_mine", "xray_cxr"]
    assert not listed["us_hc18"].builtin and library.path("us_hc18") == library.root / "us_hc18"
    assert listed["xray_cxr"].builtin and library.for_modality("DX", hc18_base).name == "xray_cxr"
    assert library.for_modality("US", hc18_base).name == "us_hc18"
    assert library.for_modality("US", hc18_base).builtin is False
    library.remove("us_hc18")  # the user's copy goes; the built-in one is back
    assert library.path("us_hc18") == shipped.path
    assert library.for_modality("US", hc18_base).name == "us_mine"  # user-installed beats newer
    library.remove("us_mine")
    assert library.for_modality("US", hc18_base) == shipped


def test_shipped_adapter_readme_is_our_model_card() -> None:
    card = (BUILTIN_ROOT / "us_hc18" / "README.md").read_text()
    assert card == model_card(read_metadata(BUILTIN_ROOT / "us_hc18")), "regenerate it"
    meta = read_metadata(BUILTIN_ROOT / "us_hc18")
    assert "[More Information Needed]" not in card and meta.base_hash in card
    assert meta.base_hash == load_model("default").base_hash()  # made for the shipped default
    click = meta.metrics["heldout_eval"]["lora on fp32 base"]["click"]
    assert "HC18" in card and "CC BY 4.0" in card and f"click {click}" in card


def test_bad_names_and_specs_are_refused() -> None:
    with pytest.raises(ModelError, match="invalid"):
        attach_adapter(_base(), LORA, "a.b")
    with pytest.raises(ModelError, match="clashes"):
        attach_adapter(_base(), LORA, "blocks")  # peft's AdaLoRA key handling would mangle it
    with pytest.raises(ModelError, match="total_step"):
        AdapterSpec(method="adalora")
    with pytest.raises(ModelError, match="method"):
        AdapterSpec(method="dora")


# ------------------------------------------------------------------------------------------ quantized


def _quantize_encoder_attention(sam: torch.nn.Module, bits: int) -> None:
    """Swap the encoder's qkv / proj for bitsandbytes layers, as minisam.quantization does."""
    import bitsandbytes as bnb

    for block in sam.image_encoder.blocks:
        for attr in ("qkv", "proj"):
            linear = getattr(block.attn, attr)
            weight = linear.weight.data.clone()
            if bits == 4:
                layer = bnb.nn.Linear4bit(
                    linear.in_features, linear.out_features, compute_dtype=torch.float32
                )
                layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
            else:
                layer = bnb.nn.Linear8bitLt(
                    linear.in_features, linear.out_features, has_fp16_weights=False
                )
                layer.weight = bnb.nn.Int8Params(
                    weight, requires_grad=False, has_fp16_weights=False
                )
            layer.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
            setattr(block.attn, attr, layer.to("cpu"))  # .to() quantizes


@pytest.mark.parametrize("bits", [4, 8])
def test_adapter_applies_to_a_bitsandbytes_quantized_base(bits: int, tmp_path: Path) -> None:
    trained = _adapter(LORA, "ct", seed=6)
    folder = _save(trained, "ct", tmp_path / "ct")
    results = []
    for _ in range(2):
        quantized = _base()
        _quantize_encoder_attention(quantized, bits)
        base_output = _outputs(quantized)
        load_adapter(quantized, folder, BASE_HASH)  # the hash is the full-precision base's
        layer = quantized.image_encoder.blocks[0].attn.qkv
        assert type(layer).__module__ == "peft.tuners.lora.bnb"  # peft's bnb-aware LoRA layer
        results.append(_outputs(quantized))
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], base_output)
    # Closer to the full-precision adapted model than the quantized base is.
    reference = _outputs(trained)
    assert (results[0] - reference).abs().max() < (base_output - reference).abs().max()


# ------------------------------------------------------------------------------------------ size


def test_small_preset_rank_8_adapter_size(tmp_path: Path) -> None:
    config = preset("small")
    torch.manual_seed(0)
    sam = build_sam(config)
    model = attach_adapter(sam, AdapterSpec(rank=8), "ct")
    params = count_adapter_parameters(model, "ct")
    width, depth = config.encoder.embed_dim, config.encoder.depth
    # Per block: qkv (d -> 3d) and proj (d -> d), each r x in + out x r.
    assert params == depth * 8 * ((width + 3 * width) + (width + width)) == 73_728
    assert count_trainable_parameters(model) == params < 5_000_000
    metadata = {"modality": "CT", "base_hash": "0" * 16}
    folder = save_adapter(model, "ct", tmp_path / "ct", metadata)
    weights = (folder / WEIGHTS_FILE).stat().st_size
    total = sum(p.stat().st_size for p in folder.iterdir())
    print(f"small rank 8: {params} params, weights {weights} bytes, folder {total} bytes")
    assert params * 4 <= weights <= params * 4 + 16_384  # fp32 tensors plus a small header
    assert total <= 5 * 1024**2
