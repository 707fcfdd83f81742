"""Dataset readers, Ray preprocessing tasks, the shard writer and training-set statistics."""

from convplat.pipeline.prepare import prepare

__all__ = ["prepare"]
