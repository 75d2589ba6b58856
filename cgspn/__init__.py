"""C-GSPN: Compact Generalized Spatial Propagation Network for Hugging Face transformers."""

from .propagation import BackendUnavailableError, available_backends, propagate, use_backend
from .propagation_reference import propagate_ref

__all__ = ["BackendUnavailableError", "available_backends", "propagate", "propagate_ref", "use_backend"]
