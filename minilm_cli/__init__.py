"""minilm-cli: batch embeddings with the MiniLM family, from files to Parquet or .npy shards."""

__version__ = "0.2.0"


def __getattr__(name: str):
    # Lazy, so `minilm --help` and `import minilm_cli` do not pay for importing torch.
    if name == "Embedder":
        from .model import Embedder

        return Embedder
    if name in ("run_job", "JobResult"):
        from . import pipeline

        return getattr(pipeline, name)
    if name in ("open_dataset", "finished_files"):
        from . import output

        return getattr(output, name)
    if name == "EmbedConfig":
        from .config import EmbedConfig

        return EmbedConfig
    raise AttributeError(name)


__all__ = ["Embedder", "EmbedConfig", "JobResult", "finished_files", "open_dataset", "run_job", "__version__"]
