"""The dtype a meta-net computes in."""

from __future__ import annotations

import keras


def metanet_dtype() -> str | None:
    """A meta-net's dtype: float32 under a mixed global policy (a float16 meta-net would
    lose the small weight differences the meta step learns), else Keras' default (None:
    floatx)."""
    return "float32" if keras.config.dtype_policy().name.startswith("mixed") else None
