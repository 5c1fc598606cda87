"""``minisam models``: the models ``--model`` accepts and what is in the cache."""

from __future__ import annotations

import argparse

from minisam import weights
from minisam.model_config import PRESETS, build_sam, count_parameters
from minisam.model_loader import PACKAGED_MODELS, RANDOM_PREFIX


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("models", help="list known models and what is cached")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from minisam.checkpoints import read_safetensors_metadata

    print("Inside the package (offline):")
    for name, path in PACKAGED_MODELS.items():
        if path.is_file():
            card = read_safetensors_metadata(path).get("card", "{}")
            print(f"  {name:<18} {path.stat().st_size / 1e6:.1f} MB  {path}")
            print(f"  {'':<18} card: {card[:200]}")
        else:
            print(f"  {name:<18} missing ({path})")
    print(f"\nOfficial checkpoints (cache: {weights.cache_dir()}):")
    for row in weights.describe_cache():
        state = f"cached at {row['path']}" if row["cached"] else "not cached"
        print(f"  {row['name']:<14} {row['arch']:<13} {row['size']:>9}  {state}")
        print(f"  {'':<14} from {row['source']}")
        if row["card"]:
            print(f"  {'':<14} model card: {row['card']}")
    print("\nUntrained architectures (timing, tests):")
    for name, config in PRESETS.items():
        encoder = (
            count_parameters(build_sam(config).image_encoder)
            if name in ("tiny", "compact")
            else None
        )
        extra = f", encoder {encoder / 1e6:.1f} M params" if encoder else ""
        print(f"  {RANDOM_PREFIX}{name:<13} {config.encoder.describe()}{extra}")
    return 0
