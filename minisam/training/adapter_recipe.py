"""What ``train-adapter`` adapts, and on which frozen base precision, when the user leaves it to the model.

The right few-shot recipe depends on the base's image encoder family, as measured here:

* ViT bases (MiniSAM v3, SAM): QLoRA — LoRA on the encoder's attention over the NF4-quantized
  encoder. NF4 left v3's masks as they were (held-out CXR Dice 0.948 fp32 and NF4, docs/eval).
* TinyViT bases (LiteMedSAM, the embedded default): the encoder stays frozen in fp32 and is run once
  per slice, so a 50-slice adapter trains in minutes on a CPU (chosen when NF4 seemed to damage this
  encoder, box / one click 0.952 / 0.726 → 0.842 / 0.473 on 8 HC18 slices: that was bitsandbytes'
  CPU NF4 decoding bug, see ``minisam.quantization.layers.dequantize_nf4``; NF4 is within 0.01 box Dice
  on 5 of 7 held-out sets now, docs/eval); a LoRA adapts the mask decoder's attention and its output heads
  (the hypernetworks and IoU head that turn a click into a mask: on the default v1, HC18 one click
  0.711 → 0.869 with the heads, 0.758 without; on v2, whose IoU head was tuned, neither raises one
  click any more, 0.888 → 0.875 with the heads, 0.881 without, both box 0.962 → 0.967), and the epoch
  is chosen on the mean of box and one-click Dice, so a click-trained adapter must improve clicks too.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

AUTO = "auto"
DECODER_ATTENTION = "q_proj,k_proj,v_proj,out_proj"


@dataclass(frozen=True)
class AdapterRecipe:
    """``train-adapter``'s values for the options left at ``auto``."""

    quant: str
    targets: str  # encoder linears, "none" = a decoder-only adapter
    decoder_targets: str
    validate_with: str

    @property
    def decoder_only(self) -> bool:
        return self.targets == "none"


RECIPES = {
    "vit": AdapterRecipe("nf4", "qkv,proj", DECODER_ATTENTION, "box"),
    "tiny_vit": AdapterRecipe("fp32", "none", f"{DECODER_ATTENTION},heads", "both"),
}


def recipe_for(family: str) -> AdapterRecipe:
    """The recipe of an encoder family (a family without its own gets the ViT one)."""
    return RECIPES.get(family, RECIPES["vit"])


def resolve_auto(args: argparse.Namespace, family: str) -> list[str]:
    """Replace every ``auto`` option of ``args`` by ``family``'s recipe; returns what was chosen,
    as ``--option value`` texts for the log. A decoder-only recipe also turns ``include_decoder`` on."""
    recipe = recipe_for(family)
    chosen = []
    for option, value in (
        ("quant", recipe.quant),
        ("targets", recipe.targets),
        ("decoder_targets", recipe.decoder_targets),
        ("validate_with", recipe.validate_with),
    ):
        if getattr(args, option) == AUTO:
            setattr(args, option, value)
            chosen.append(f"--{option.replace('_', '-')} {value}")
            if option == "targets" and recipe.decoder_only:
                args.include_decoder = True
                chosen.append("--include-decoder")
    return chosen
