"""Model code of ACE-Step v1, written for this toolkit, loading the published checkpoint unchanged."""

from .transformer import ACEStepTransformer2DModel, Transformer2DModelOutput

__all__ = ["ACEStepTransformer2DModel", "Transformer2DModelOutput"]
