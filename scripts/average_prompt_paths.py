"""Average the prompt paths of two click-trained LiteMedSAM models (a weight average, "model soup").

    python scripts/average_prompt_paths.py BASE OTHER --weight 0.25 --out soup.safetensors

Both models must share the image encoder bit for bit (both fine-tuned from LiteMedSAM's) and the
architecture; every prompt-encoder and mask-decoder weight becomes ``(1 - weight) * BASE + weight *
OTHER``. The result's card is BASE's with a ``weight_average`` record (both files' SHA-256, OTHER's own
training record, the weight). The IoU head of an average ranks candidates it was not trained on, so
tune it afterwards (``scripts/train_click_decoder.py --init soup.safetensors --method iou-head``): how
the embedded default v3 was made (minisam/pretrained/MODEL_CARD.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minisam.checkpoints import save_checkpoint  # noqa: E402
from minisam.model_loader import load_model  # noqa: E402
from minisam.weights import sha256_of  # noqa: E402

PROMPT_PATH = ("prompt_encoder.", "mask_decoder.")


def average_state(base: dict, other: dict, weight: float) -> dict:
    """``base`` with its prompt-path float tensors moved ``weight`` of the way to ``other``'s; the
    image encoder must be identical in both."""
    if base.keys() != other.keys():
        raise SystemExit("the two models do not have the same layers")
    averaged = {}
    for name, tensor in base.items():
        if not name.startswith(PROMPT_PATH):
            if not torch.equal(tensor, other[name]):
                raise SystemExit(f"{name} differs: the image encoders must be the same")
            averaged[name] = tensor
        elif tensor.is_floating_point():
            averaged[name] = ((1 - weight) * tensor + weight * other[name]).contiguous()
        else:
            averaged[name] = tensor
    return averaged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--weight", type=float, required=True, help="OTHER's share, 0..1")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not 0.0 <= args.weight <= 1.0:
        raise SystemExit(f"--weight {args.weight} must be between 0 and 1")
    base, other = load_model(str(args.base)), load_model(str(args.other))
    if base.config != other.config:
        raise SystemExit("the two models have different architectures")
    state = average_state(base.sam.state_dict(), other.sam.state_dict(), args.weight)
    base.sam.load_state_dict(state)
    base_card, other_card = dict(base.card or {}), other.card or {}
    base_head = base_card.pop("iou_head_tuning", None)  # it ranked the base's candidates
    card = {
        **base_card,
        "weight_average": {
            "base": {
                "file": args.base.name,
                "sha256": sha256_of(args.base),
                **({"iou_head_tuning": base_head} if base_head else {}),
            },
            "other": {
                "file": args.other.name,
                "sha256": sha256_of(args.other),
                **{
                    key: other_card[key]
                    for key in ("started_from", "prompt_tuning", "report", "iou_head_tuning")
                    if key in other_card
                },
            },
            "weight_of_other": args.weight,
        },
    }
    save_checkpoint(base.sam, base.config, args.out, card)
    print(
        f"wrote {args.out}: {1 - args.weight:g} x {args.base.name} + {args.weight:g} x {args.other.name}"
    )


if __name__ == "__main__":
    main()
