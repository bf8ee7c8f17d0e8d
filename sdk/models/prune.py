"""Layer pruning that keeps the model intact: which decoder layers a student keeps, measured on the domain's text.

Methods (`models.student.prune_method`), all scored on calibration text (chunks of the pack's own corpus,
never the held-out set), with the hidden state h_l entering layer l and h_{l+1} leaving it:

  angular          Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers" (arXiv 2403.17887):
                   drop the contiguous block of n layers [l, l+n) whose input and output are closest,
                       d(l, n) = mean_tokens arccos(cos(h_l, h_{l+n})) / pi,   l* = argmin_l d(l, n)
  block_influence  ShortGPT (arXiv 2403.03853): drop the n layers that change the hidden state least,
                       BI_l = 1 - mean_tokens cos(h_l, h_{l+1})
  every_k          layers 0, k, 2k, ... (kept for comparison)
  keep_layers      an explicit list (overrides the method)

Whatever the method, the first and the last layer are kept unless `keep_layers` says otherwise: on the
medicine corpus SmolLM2's first layer has BI 0.996 and its last 0.28 (0.86 if the final norm is counted in),
against 0.02-0.06 for most middle layers, and a student without its last layer starts worse than a uniform
guess (docs/pruning.md has the measurements).

The hidden states are read with forward hooks on the decoder layers, before the final norm, so the last
layer is scored on its own output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Optional

from sdk.errors import ModelError

METHODS = ("angular", "block_influence", "every_k")
DEFAULT_KEEP_RATIO = (
    0.8  # measured: the smallest SmolLM2 student whose healed KL to the teacher is below 1 (docs/pruning.md)
)


@dataclass
class PruneRecord:
    """What was kept and why: goes into the student's provenance, metrics.json and the report."""

    method: str
    base_layers: int
    kept: list[int]
    block_influence: list[float] = field(default_factory=list)  # one per base layer
    angular_distance: list[float] = field(default_factory=list)  # d(l, n) for each start l of the dropped block
    calibration_chunks: int = 0
    calibration_tokens: int = 0

    @property
    def dropped(self) -> list[int]:
        return [i for i in range(self.base_layers) if i not in self.kept]

    def as_dict(self) -> dict:
        return dict(asdict(self), dropped=self.dropped, num_layers=len(self.kept))


def target_layers(base_layers: int, num_layers: Optional[int] = None, keep_ratio: Optional[float] = None) -> int:
    """How many layers the student keeps: num_layers, else round(keep_ratio * base_layers) (default 0.8); at least 2."""
    n = (
        num_layers
        if num_layers is not None
        else round((keep_ratio if keep_ratio is not None else DEFAULT_KEEP_RATIO) * base_layers)
    )
    if not 2 <= n <= base_layers:
        raise ModelError(
            f"the pruned student must keep between 2 and {base_layers} layers (first and last included), got {n}"
        )
    return n


def every_k_layers(base_layers: int, keep_every: int) -> list[int]:
    """0, k, 2k, ... plus the last layer."""
    return sorted(set(range(0, base_layers, keep_every)) | {base_layers - 1})


def block_influence_layers(scores: Sequence[float], n_keep: int) -> list[int]:
    """Keep the first, the last, and the n_keep - 2 middle layers with the highest block influence."""
    last = len(scores) - 1
    middle = sorted(range(1, last), key=lambda i: (-scores[i], i))[: n_keep - 2]
    return sorted({0, last, *middle})


def angular_layers(distances: Sequence[float], base_layers: int, n_keep: int) -> list[int]:
    """Drop the contiguous block [l, l+n) with the smallest angular distance, l >= 1 and l+n <= last."""
    n_drop = base_layers - n_keep
    if n_drop == 0:
        return list(range(base_layers))
    starts = range(1, base_layers - n_drop)  # keeps layer 0 and layer base_layers-1
    best = min(starts, key=lambda l: (distances[l], l))
    return [i for i in range(base_layers) if not best <= i < best + n_drop]


def check_keep_layers(keep_layers: list[int], base_layers: int) -> list[int]:
    bad = [i for i in keep_layers if i >= base_layers]
    if bad:
        raise ModelError(f"keep_layers {bad} out of range: the base model has {base_layers} layers")
    return sorted(set(keep_layers))


def _decoder_layers(model):
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ModelError(f"cannot prune {type(model).__name__}: no model.layers list (decoder-only models only)")
    return inner, layers


def layer_hidden_states(model, tokenizer, texts: Sequence[str], max_tokens: int = 256, batch_size: int = 4):
    """Yield (hidden_states, mask) per batch: hidden_states[l] is what enters decoder layer l, the last
    entry what leaves the last layer (before the final norm); each (B, T, H), mask (B, T)."""
    import torch

    _, layers = _decoder_layers(model)
    captured: list = []

    def hook(module, args, kwargs, output):
        if not captured:
            captured.append(kwargs.get("hidden_states", args[0] if args else None))
        captured.append(output[0] if isinstance(output, tuple) else output)

    handles = [layer.register_forward_hook(hook, with_kwargs=True) for layer in layers]
    device = next(model.parameters()).device
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(
                list(texts[start : start + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_tokens,
            ).to(device)
            captured.clear()
            with torch.inference_mode():
                model(**enc)
            yield [h.float() for h in captured], enc["attention_mask"]
    finally:
        for h in handles:
            h.remove()


def layer_scores(
    model, tokenizer, texts: Sequence[str], n_drop: int, max_tokens: int = 256
) -> tuple[list[float], list[float], int]:
    """(block influence per layer, angular distance d(l, n_drop) per start l, tokens scored), token-averaged."""
    import torch

    L = len(_decoder_layers(model)[1])
    bi, ang, tokens = torch.zeros(L), torch.zeros(max(L - n_drop + 1, 1)), 0
    for hidden, mask in layer_hidden_states(model, tokenizer, texts, max_tokens):
        m = mask.bool()
        for l in range(L):
            cos = torch.nn.functional.cosine_similarity(hidden[l], hidden[l + 1], dim=-1)[m]  # (tokens,)
            bi[l] += (1 - cos).sum().item()  # the hidden states live on the model's device, bi on the CPU
        if n_drop > 0:
            for l in range(L - n_drop + 1):
                cos = torch.nn.functional.cosine_similarity(hidden[l], hidden[l + n_drop], dim=-1)[m].clamp(-1, 1)
                ang[l] += (torch.arccos(cos) / math.pi).sum().item()
        tokens += int(m.sum())
    if tokens == 0:
        raise ModelError("pruning needs calibration text: the corpus gave no tokens to score the layers on")
    return [round(float(x) / tokens, 5) for x in bi], [round(float(x) / tokens, 5) for x in ang], tokens


@dataclass(frozen=True)
class PrunePlan:
    """How to choose the layers: a method and a target count, or an explicit list."""

    method: str  # angular | block_influence | every_k
    n_keep: int = 0
    keep_every: Optional[int] = None  # every_k
    keep_layers: Optional[list[int]] = None  # explicit: overrides the method
    max_tokens: int = 256  # calibration tokens per text


def choose_layers(model, tokenizer, plan: PrunePlan, calibration: Sequence[str]) -> PruneRecord:
    """Score the layers on the calibration text and pick the ones to keep."""
    method, n_keep, keep_every, keep_layers, max_tokens = (
        plan.method,
        plan.n_keep,
        plan.keep_every,
        plan.keep_layers,
        plan.max_tokens,
    )
    L = len(_decoder_layers(model)[1])
    if keep_layers is not None:
        return PruneRecord("keep_layers", L, check_keep_layers(keep_layers, L))
    if method == "every_k":
        if not keep_every:
            raise ModelError("prune_method every_k needs keep_every")
        kept = every_k_layers(L, keep_every)
        return PruneRecord("every_k", L, kept)
    if method not in METHODS:
        raise ModelError(f"unknown prune_method '{method}' (allowed: {', '.join(METHODS)})")
    if not calibration:
        raise ModelError(
            f"prune_method {method} scores the layers on calibration text (corpus chunks), and none was given"
        )
    bi, ang, tokens = layer_scores(model, tokenizer, calibration, L - n_keep, max_tokens)
    kept = block_influence_layers(bi, n_keep) if method == "block_influence" else angular_layers(ang, L, n_keep)
    return PruneRecord(method, L, kept, bi, ang, len(calibration), tokens)


def prune_layers(model, keep: list[int]):
    """Drop decoder layers in place and return the model, with its config and layer_idx fixed.

    Attention caches index layers by `layer_idx`; after pruning, the kept layers must be renumbered
    0..n-1 or generation with a KV cache reads the wrong slots.
    """
    import torch

    inner, layers = _decoder_layers(model)
    keep = check_keep_layers(keep, len(layers))
    inner.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(inner.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    config = model.config
    old_types = getattr(config, "layer_types", None)
    config.num_hidden_layers = len(keep)
    if isinstance(old_types, list) and len(old_types) > max(keep):
        config.layer_types = [old_types[i] for i in keep]
    return model
