"""rmeval: EasyLM reward-model checkpoints -> HF models -> RewardBench -> regressor table."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rmeval")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
