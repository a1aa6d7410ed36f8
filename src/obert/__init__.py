"""obert: the Optimal BERT Surgeon and well-tuned gradual magnitude pruning for BERT models."""

from obert.errors import ObertError

__version__ = "0.1.0"
__all__ = ["ObertError", "__version__"]
