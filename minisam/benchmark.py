"""``minisam bench``: speed and size of SAM configurations side by side, measured in one run.

Every configuration runs in its own subprocess, so its peak RSS is its own and no configuration warms the
caches of the next. Timings are medians over repeats after a warm-up pass (one pass only for encoders over
200 M parameters on a CPU, where a single forward takes tens of seconds; a GPU warms every encoder up).
With real images (``images``) each image is one new slice and its ground truth's box gives the mask
compared across rows (:mod:`minisam.bench_images`). Upstream rows run upstream's own code in a subprocess of
:mod:`minisam.upstream_worker`; this module never imports it.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minisam.upstream_code import UpstreamFolder

LARGE_ENCODER_PARAMS = 200_000_000
# Presets measured with random weights (the same compute as trained ones): ViT and TinyViT families.
RANDOM_MODELS = (
    "vit_h", "vit_l", "vit_b", "compact", "small", "student", "tiny",
    "mobilesam", "litemedsam", "tiny_vit",
)  # fmt: skip


@dataclass(frozen=True)
class BenchCase:
    """One row: a model ("default" or a preset measured with random weights), quantization, adapter."""

    model: str
    quant: str = "fp32"
    adapter: bool = False
    input_size: int | None = None  # None: the model's own
    repeats: int = 3
    clicks: int = 20
    device: str = "cpu"
    runtime: str = "torch"  # where the image encoder runs (minisam.runtime)
    precision: str = "auto"
    lone_click: str = "refine"  # how a click is answered (minisam.engine.SamEngine)
    implementation: str = "minisam"  # or "upstream": upstream's own code (minisam.upstream_worker)
    official: bool = False  # a preset name with its official trained weights instead of random ones
    images: tuple = ()  # real images with prompts (minisam.bench_images.bench_images); () = random
    masks_path: str | None = None  # where the images' box masks go


def _load(case: BenchCase):
    from minisam.checkpoints import LoadedModel
    from minisam.model_config import build_sam, preset
    from minisam.model_loader import load_model

    if case.model not in RANDOM_MODELS or case.official:
        return load_model(case.model)
    config = preset(case.model)
    if case.input_size:
        config = config.replace_encoder(image_size=case.input_size)
    torch.manual_seed(0)
    return LoadedModel(sam=build_sam(config), config=config, name=f"random:{case.model}")


def _state_bytes(module: torch.nn.Module) -> int:
    return sum(
        t.numel() * t.element_size() for t in module.state_dict().values() if torch.is_tensor(t)
    )


def _file_mb(loaded, quantized: bool, folder: Path) -> tuple[float, float | None]:
    """(file MB, file MB with the non-quantized tensors in fp16, or None for an fp32 model)."""
    from minisam.checkpoints import save_checkpoint
    from minisam.quantized_checkpoint import save_quantized_checkpoint

    path = folder / "model.safetensors"
    if not quantized:
        save_checkpoint(loaded.sam, loaded.config, path)
        size = path.stat().st_size / 1e6
        path.unlink()
        return size, None
    sizes = []
    for rest_dtype in ("float32", "float16"):
        save_quantized_checkpoint(loaded.sam, loaded.config, path, rest_dtype=rest_dtype)
        sizes.append(path.stat().st_size / 1e6)
        path.unlink()
    return sizes[0], sizes[1]


def _attach_adapter(loaded, folder: Path) -> float:
    """Attach a rank-8 LoRA (non-zero B) to the encoder's attention; return its saved folder size, MB."""
    from minisam.adapters import AdapterSpec, attach_adapter, save_adapter

    model = attach_adapter(loaded.sam, AdapterSpec(rank=8), "bench")
    for key, parameter in model.named_parameters():
        if "lora_B" in key:
            parameter.data.normal_(0, 0.01)
    meta = {"modality": "CT", "base_hash": loaded.base_hash(), "base_model": loaded.name}
    saved = save_adapter(model, "bench", folder / "bench_adapter", meta)
    return sum(p.stat().st_size for p in saved.iterdir()) / 1e6


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(case: BenchCase) -> dict[str, Any]:
    """Measure one configuration in this process (call through :func:`run_case` for a clean RSS)."""
    from minisam.engine import SamEngine
    from minisam.model_config import count_parameters
    from minisam.quantization import quantize_model

    device = torch.device(case.device)
    loaded = _load(case)
    loaded.base_hash()  # of the fp32 weights, before quantization or adapters change the state dict
    encoder_params = count_parameters(loaded.sam.image_encoder)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if case.quant != "fp32":
            quantize_model(loaded, case.quant, device=device)
        file_mb, file_half_rest_mb = _file_mb(loaded, case.quant != "fp32", folder)
        adapter_mb = _attach_adapter(loaded, folder) if case.adapter else 0.0
    start = time.perf_counter()
    engine = SamEngine(
        loaded.sam, loaded.config, device, case.runtime, case.precision, case.lone_click
    )
    setup_s = time.perf_counter() - start
    export_s = load_s = None
    if case.runtime != "torch":
        # the first engine exported the encoder and decoder when their exports were not cached yet;
        # a second one only loads (compiles) the cached exports
        if getattr(engine.encoder, "built", False) or getattr(engine.decoder, "built", False):
            export_s = setup_s
            start = time.perf_counter()
            SamEngine(loaded.sam, loaded.config, device, case.runtime, case.precision)
            load_s = time.perf_counter() - start
        else:
            load_s = setup_s
    size = loaded.config.image_size
    # one pass of a large encoder on a CPU; on a GPU the first pass (kernel selection) is warm-up for all
    large = encoder_params > LARGE_ENCODER_PARAMS and device.type != "cuda"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if case.images:
        encoder_median, decoder_median = _measure_images(case, engine, device)
    else:
        encoder_median, decoder_median = _measure_random(case, engine, device, size, large)
    row = {
        **asdict(case),
        "name": loaded.name,
        "input_size": size,
        "encoder_params": encoder_params,
        "encoder_ms": encoder_median,
        "decoder_ms": decoder_median,
        "weights_mb": _state_bytes(loaded.sam) / 1e6,
        "encoder_weights_mb": _state_bytes(loaded.sam.image_encoder) / 1e6,
        "file_mb": file_mb,
        "file_half_rest_mb": file_half_rest_mb,
        "adapter_mb": adapter_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "encoder_runtime": engine.encoder.describe(),
        "decoder_runtime": engine.decoder.describe(),
        "runtime_export_s": export_s,
        "runtime_load_s": load_s,
    }
    if device.type == "cuda":
        row["slices_per_s"] = 1e3 / (row["encoder_ms"] + row["decoder_ms"])
        row["peak_vram_mb"] = torch.cuda.max_memory_allocated() / 1e6
    return row


def _measure_images(case: BenchCase, engine, device: torch.device) -> tuple[float, float]:
    """Median ms per new slice and per click over the case's real images; saves the box masks."""
    from minisam.bench_images import save_masks, time_images
    from minisam.prompts import Prompt

    encoder_ms, decoder_ms, masks = time_images(
        list(case.images),
        lambda rgb: engine.embed(rgb.astype(np.float32)),
        lambda embedding, point: engine.predict(embedding, Prompt.create(positive=[point])).mask,
        lambda embedding, box: engine.predict(embedding, Prompt.create(box=box)).mask,
        case.clicks,
        lambda: _sync(device),
    )
    if case.masks_path:
        save_masks(case.masks_path, masks)
    return encoder_ms, decoder_ms


def _measure_random(
    case: BenchCase, engine, device: torch.device, size: int, large: bool
) -> tuple[float, float]:
    """Median ms per encoder pass over a random image and per click at random points."""
    from minisam.prompts import Prompt

    rgb = np.random.default_rng(0).uniform(0, 255, (size, size, 3)).astype(np.float32)
    encoder_ms = []
    for index in range(1 if large else case.repeats + 1):
        _sync(device)
        start = time.perf_counter()
        embedding = engine.embed(rgb)
        _sync(device)
        if large or index > 0:  # the first pass of a small model is warm-up
            encoder_ms.append((time.perf_counter() - start) * 1e3)
    decoder_ms = []
    rng = np.random.default_rng(1)
    for index in range(case.clicks + 1):
        prompt = Prompt.create(positive=[rng.uniform(0, size - 1, 2).tolist()])
        _sync(device)
        start = time.perf_counter()
        _ = engine.predict(embedding, prompt).mask  # a click's result: the best mask on the slice
        _sync(device)
        if index > 0:
            decoder_ms.append((time.perf_counter() - start) * 1e3)
    return statistics.median(encoder_ms), statistics.median(decoder_ms)


def run_case(
    case: BenchCase,
    timeout_s: float = 1800,
    env: dict[str, str] | None = None,
    upstream: UpstreamFolder | None = None,
) -> dict[str, Any]:
    """Measure ``case`` in a fresh Python process (environment ``env``, default this one's); returns
    its row (or an ``error`` row). An upstream case runs upstream's code from the folder ``upstream``,
    which goes on that process's path only."""
    env = dict(env or os.environ)
    command = [sys.executable, "-m", "minisam.benchmark", json.dumps(asdict(case))]
    if case.implementation == "upstream":
        if upstream is None:
            return {**asdict(case), "error": "no upstream folder prepared"}
        folder = {k: str(v) for k, v in asdict(upstream).items()}
        command = [sys.executable, "-m", "minisam.upstream_worker", command[-1], json.dumps(folder)]
        path = [*upstream.pythonpath(), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {**asdict(case), "error": f"no result in {timeout_s:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {**asdict(case), "error": reason}
    return json.loads(lines[-1])


def _same_work(row: dict[str, Any]) -> tuple:
    """What a row computes, whatever runtime runs it."""
    official = bool(row.get("official")) or row.get("implementation") == "upstream"
    return (row["model"], official, row["quant"], row["adapter"], row.get("input_size"))


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add encoder speed-up and weight share relative to the fp32 vit_h row of the same run, and the
    encoder speed-up relative to torch's row for the same model, quantization and adapter."""
    reference = next(
        (
            r
            for r in rows
            if r["model"] == "vit_h"
            and r["quant"] == "fp32"
            and not r["adapter"]
            and "error" not in r
        ),
        None,
    )
    torch_rows = {
        _same_work(r): r
        for r in rows
        if r.get("runtime", "torch") == "torch"
        and r.get("implementation", "minisam") == "minisam"
        and "error" not in r
    }
    upstream_lite = next(
        (
            r
            for r in rows
            if r.get("implementation") == "upstream"
            and r["model"] == "litemedsam"
            and "error" not in r
        ),
        None,
    )
    for row in rows:
        if upstream_lite is not None and "error" not in row:
            row["encoder_speedup_vs_upstream_litemedsam"] = (
                upstream_lite["encoder_ms"] / row["encoder_ms"]
            )
        base = torch_rows.get(_same_work(row))
        if base is not None and "error" not in row:
            row["encoder_speedup_vs_torch"] = base["encoder_ms"] / row["encoder_ms"]
        if reference is not None and "error" not in row:
            row["encoder_speedup_vs_vit_h"] = reference["encoder_ms"] / row["encoder_ms"]
            row["encoder_weights_pct_of_vit_h"] = (
                100 * row["encoder_weights_mb"] / reference["encoder_weights_mb"]
            )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (ratios to vit_h when it was measured; GPU columns when a row
    has them)."""
    gpu = any("slices_per_s" in r for r in rows)
    header = (
        "| model | quant | encoder runtime | adapter | input | encoder ms | decoder ms | weights MB "
        "| encoder MB | file MB | file MB, fp16 rest | peak RSS MB | encoder × faster than vit_h "
        "| encoder weights % of vit_h | encoder × faster than torch |"
    )
    if gpu:
        header += " slices/s | peak VRAM MB |"
    columns = header.count("|") - 1
    lines = [header, "|" + "---|" * columns]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['quant']} | {_runtime_cell(r)} | "
                f"{'yes' if r['adapter'] else 'no'} | – | error: {r['error']} |"
                + " |"
                * (columns - 6)
            )
            continue
        speed = r.get("encoder_speedup_vs_vit_h")
        share = r.get("encoder_weights_pct_of_vit_h")
        half = r.get("file_half_rest_mb")
        lines.append(
            f"| {r['name']} | {r['quant']} | {_runtime_cell(r)} | {'LoRA r8' if r['adapter'] else 'no'} "
            f"| {r['input_size']} "
            f"| {r['encoder_ms']:.0f} | {r['decoder_ms']:.1f} | {r['weights_mb']:.1f} "
            f"| {r['encoder_weights_mb']:.1f} | {r['file_mb']:.1f} "
            f"| {'–' if half is None else f'{half:.1f}'} | {r['peak_rss_mb']:.0f} "
            f"| {'–' if speed is None else f'{speed:.1f}'} | {'–' if share is None else f'{share:.2f}'} "
            f"| {_ratio(r.get('encoder_speedup_vs_torch'))} |"
            + (f" {_gpu_cells(r)} |" if gpu else "")
        )
    return "\n".join(lines)


def side_by_side_table(rows: list[dict[str, Any]]) -> str:
    """Upstream and MiniSAM rows as a Markdown table: new slice, click, memory, file, ratios and mask
    agreement (GPU columns when a row has them)."""
    gpu = any("slices_per_s" in r for r in rows)
    header = (
        "| implementation | model | encoder runtime | input | new slice ms | click ms | peak RSS MB "
        "| file MB | × faster than upstream LiteMedSAM | × faster than vit_h "
        "| mask Dice vs MiniSAM torch, mean (min) | vs upstream, mean (min) |"
    )
    if gpu:
        header += " slices/s | peak VRAM MB |"
    columns = header.count("|") - 1
    lines = [header, "|" + "---|" * columns]
    for r in rows:
        kind = r.get("implementation", "minisam")
        if "error" in r:
            cells = [kind, r["model"], _runtime_cell(r), "–", f"error: {r['error']}"]
            lines.append("| " + " | ".join(cells) + " |" + " |" * (columns - len(cells)))
            continue
        cells = [
            kind,
            r["name"],
            _runtime_cell(r),
            str(r["input_size"]),
            f"{r['encoder_ms']:.0f}",
            f"{r['decoder_ms']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['file_mb']:.1f}",
            _ratio(r.get("encoder_speedup_vs_upstream_litemedsam")),
            _ratio(r.get("encoder_speedup_vs_vit_h")),
            _dice_cell(r.get("dice_vs_torch")),
            _dice_cell(r.get("dice_vs_upstream")),
        ]
        if gpu:
            cells.append(_gpu_cells(r))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _gpu_cells(row: dict[str, Any]) -> str:
    """The slices/s and peak VRAM MB cells of a GPU row ("–" for a row without them)."""
    rate, vram = row.get("slices_per_s"), row.get("peak_vram_mb")
    return f"{'–' if rate is None else f'{rate:.1f}'} | {'–' if vram is None else f'{vram:.0f}'}"


def _dice_cell(value: tuple[float, float] | list[float] | None) -> str:
    return "–" if value is None else f"{value[0]:.4f} ({value[1]:.4f})"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _runtime_cell(row: dict[str, Any]) -> str:
    """The runtime that ran (``encoder_runtime``, else the one asked for; the decoder's when it
    differs), a lone click's mode when not the default, and the setup times."""
    text = row.get("encoder_runtime") or row.get("runtime", "torch")
    decoder = row.get("decoder_runtime")
    if decoder and decoder != text:
        text += f", decoder {decoder}"
    if row.get("lone_click", "refine") != "refine":
        text += f" (lone click {row['lone_click']})"
    times = [
        f"{label} {row[key]:.1f} s"
        for label, key in (("export", "runtime_export_s"), ("load", "runtime_load_s"))
        if row.get(key) is not None
    ]
    return text + (f"; {', '.join(times)}" if times else "")


if __name__ == "__main__":
    print(json.dumps(measure(BenchCase(**json.loads(sys.argv[1])))))
