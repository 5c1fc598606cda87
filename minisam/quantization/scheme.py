"""Quantization schemes: which precision each group of linears gets, as data and as text.

Layer groups: "attn" (the image encoder's attention linears), "mlp" (its MLP linears) and "decoder"
(every linear of the mask decoder). Which encoder layers belong to a group is the encoder family's
knowledge (``QUANTIZABLE_LINEAR`` in :mod:`minisam.encoders`). Specs: ``"nf4"`` (a bare kind means the
encoder groups), ``"int8:attn"``, ``"nf4:attn,mlp"``, ``"nf4:all"`` (aliases "encoder" and "all" name
group sets and contain no comma, so they fit in ``--config`` strings), or mixed precision per group
(AdaLoRA-QAT style selective quantization) ``"nf4:mlp+int8:attn"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from minisam.errors import ModelError

GROUPS: tuple[str, ...] = ("attn", "mlp", "decoder")
ENCODER_GROUPS: tuple[str, ...] = ("attn", "mlp")  # what a bare kind ("nf4") quantizes
GROUP_ALIASES: dict[str, tuple[str, ...]] = {"encoder": ENCODER_GROUPS, "all": GROUPS}
KINDS: tuple[str, ...] = ("fp32", "nf4", "int8")


@dataclass(frozen=True)
class QuantScheme:
    """Which precision each layer group gets: the encoder's "attn" and "mlp", and the "decoder".

    Arguments:
      assignments: (group, kind) for every group of :data:`GROUPS`, in that order; kind is one of
        :data:`KINDS` ("fp32" = left alone).
    """

    assignments: tuple[tuple[str, str], ...]

    @classmethod
    def uniform(cls, kind: str, groups: Iterable[str] = ENCODER_GROUPS) -> QuantScheme:
        """``kind`` for ``groups``, fp32 for the other groups."""
        chosen = set(groups)
        return cls(tuple((g, kind if g in chosen else "fp32") for g in GROUPS))

    def kind_for(self, group: str) -> str:
        """The precision of ``group`` ("fp32" when not quantized)."""
        return dict(self.assignments).get(group, "fp32")

    @property
    def groups(self) -> tuple[str, ...]:
        """The quantized groups."""
        return tuple(g for g, k in self.assignments if k != "fp32")

    @property
    def kind(self) -> str:
        """ "fp32" (nothing quantized), the single quantized kind, or "mixed"."""
        kinds = {k for _, k in self.assignments if k != "fp32"}
        if not kinds:
            return "fp32"
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def __str__(self) -> str:
        """The canonical spec, e.g. "nf4:attn,mlp" or "int8:attn+nf4:mlp"."""
        by_kind: dict[str, list[str]] = {}
        for group, kind in self.assignments:
            if kind != "fp32":
                by_kind.setdefault(kind, []).append(group)
        if not by_kind:
            return "fp32"
        return "+".join(f"{k}:{','.join(gs)}" for k, gs in sorted(by_kind.items()))


def parse_scheme(spec: str | QuantScheme) -> QuantScheme:
    """Parse "nf4", "int8:attn", "nf4:attn,mlp", "nf4:all" or "nf4:mlp+int8:attn".

    Returns:
      the scheme; groups not named in any part stay fp32, a bare kind applies to the encoder
      groups (:data:`ENCODER_GROUPS`); "encoder" and "all" expand as in :data:`GROUP_ALIASES`.

    Raises:
      ModelError: unknown kind or group, a group named twice, or an empty spec.
    """
    if isinstance(spec, QuantScheme):
        return spec
    text = str(spec).strip().lower()
    if not text:
        raise ModelError(
            "empty quantization scheme; use e.g. 'nf4', 'int8:attn' or 'nf4:mlp+int8:attn'"
        )
    chosen: dict[str, str] = {}
    for part in text.split("+"):
        kind, _, group_text = part.strip().partition(":")
        kind = kind.strip()
        if kind not in KINDS:
            raise ModelError(
                f"quantization scheme {spec!r}: unknown kind {kind!r}; known: {', '.join(KINDS)}"
            )
        named = [g.strip() for g in group_text.split(",")] if group_text.strip() else ["encoder"]
        groups = [g for name in named for g in GROUP_ALIASES.get(name, (name,))]
        for group in groups:
            if group not in GROUPS:
                raise ModelError(
                    f"quantization scheme {spec!r}: unknown layer group {group!r}; "
                    f"known: {', '.join((*GROUPS, *GROUP_ALIASES))}"
                )
            if group in chosen:
                raise ModelError(f"quantization scheme {spec!r}: group {group!r} is given twice")
            chosen[group] = kind
    return QuantScheme(tuple((g, chosen.get(g, "fp32")) for g in GROUPS))
