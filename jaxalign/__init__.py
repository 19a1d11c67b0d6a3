"""jaxalign: exact and Monte Carlo theory of LM alignment for memoryless models."""

__version__ = "0.1.0"

from jaxalign import theory as theory
from jaxalign.models import LinearReward as LinearReward
from jaxalign.models import MemorylessLM as MemorylessLM

__all__ = ["LinearReward", "MemorylessLM", "theory", "__version__"]
