"""Checking a state dict against a model's before loading it, so a wrong file fails with the names that differ."""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["check_weights"]


def check_weights(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    source: str,
    *,
    target: str = "",
    expects: str = "expected",
) -> None:
    """Raise a ``ValueError`` naming ``source`` unless ``state`` has exactly ``expected``'s keys and shapes.

    Args:
        state: The tensors read from a file.
        expected: The model's own state dict (only names and shapes are used).
        source: The file (or other origin) named in the message.
        target: What the weights are for, as in "do not fit{target}" (e.g. ``" this vocoder"``).
        expects: Words before the wanted shape, as in "has shape (3,), {expects} (4,)".

    Raises:
        ValueError: missing or unexpected keys (all listed), or the first shape mismatch (key and both shapes).
    """
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not fit{target} (missing {missing}, unexpected {unexpected})")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ValueError(f"{source}: {key} has shape {tuple(state[key].shape)}, {expects} {tuple(tensor.shape)}")
