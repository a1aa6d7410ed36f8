"""obert: the Optimal BERT Surgeon and well-tuned gradual magnitude pruning for BERT models."""

from obert.errors import ObertError

__version__ = "0.1.0"
__all__ = ["ObertError", "__version__", "pipeline"]


def __getattr__(name: str):
    # obert.pipeline imports transformers' pipelines: only when asked, so `import obert` stays
    # cheap
    if name == "pipeline":
        from obert.deploy.pipeline import pipeline

        return pipeline
    raise AttributeError(f"module 'obert' has no attribute {name!r}")
