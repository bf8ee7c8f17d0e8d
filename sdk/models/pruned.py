"""Layer pruning: the default student is the teacher with most of its decoder layers removed.

Keeping every third layer of SmolLM2-135M (30 -> 10 layers) gives a ~64M-parameter student that
shares the teacher's tokenizer, so white-box KD on logits works (cf. Minitron, DistilBERT).
"""

from __future__ import annotations

from sdk.errors import ModelError


def layers_to_keep(num_layers: int, keep_every: int = 3, keep_layers: list[int] | None = None) -> list[int]:
    """Indices of the decoder layers the pruned model keeps, in order."""
    if keep_layers is not None:
        bad = [i for i in keep_layers if i >= num_layers]
        if bad:
            raise ModelError(f"keep_layers {bad} out of range: the base model has {num_layers} layers")
        return sorted(set(keep_layers))
    return list(range(0, num_layers, keep_every))


def _decoder_layers(model):
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ModelError(f"cannot prune {type(model).__name__}: no model.layers list (decoder-only models only)")
    return inner, layers


def prune_layers(model, keep_every: int = 3, keep_layers: list[int] | None = None):
    """Drop decoder layers in place and return the model, with its config and layer_idx fixed.

    Attention caches index layers by `layer_idx`; after pruning, the kept layers must be renumbered
    0..n-1 or generation with a KV cache reads the wrong slots.
    """
    import torch

    inner, layers = _decoder_layers(model)
    keep = layers_to_keep(len(layers), keep_every, keep_layers)
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
