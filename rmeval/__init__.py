"""rmeval: EasyLM reward-model checkpoints -> HF models -> RewardBench -> regressor table.

This module owns rmeval's version and where its code runs from. The version comes from git:
setuptools-scm computes it when a wheel is built (``0.0.1.devN+g<commit>`` until a release
tag exists; a ``git archive`` tarball carries its commit in ``.git_archival.txt``; anything
else without git gets ``[tool.setuptools_scm] fallback_version``, :data:`UNKNOWN_VERSION`).
A source checkout run in place (``make`` puts it on PYTHONPATH) asks git itself, so the
version always names the commit that runs, never the one some earlier install saw.
"""

from __future__ import annotations

import functools
from pathlib import Path

# pyproject.toml's [tool.setuptools_scm] fallback_version (tests/test_tooling.py checks)
UNKNOWN_VERSION = "0.0.0"


def source_root() -> Path | None:
    """The source tree rmeval is imported from (the directory holding its pyproject.toml),
    or None when it runs from an installed copy."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def _installed_version() -> str | None:
    """The version of the installed distribution, if that distribution is this code (not
    some other copy of rmeval installed beside the checkout that runs)."""
    import json
    from importlib import metadata

    try:
        dist = metadata.distribution("rmeval")
    except metadata.PackageNotFoundError:
        return None
    here = Path(__file__).resolve().parent
    if Path(str(dist.locate_file("rmeval"))).resolve() == here:
        return dist.version
    try:  # an editable install points at its source tree
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    if direct.get("dir_info", {}).get("editable") and direct.get("url") == here.parent.as_uri():
        return dist.version
    return None


@functools.cache
def version() -> str:
    """rmeval's version (see the module doc), computed once, when first asked for."""
    root = source_root()
    if root is not None:
        try:
            from setuptools_scm import get_version
        except ImportError:
            pass
        else:
            try:
                return get_version(root=str(root), fallback_version=UNKNOWN_VERSION)
            except Exception:  # git missing or broken: say unknown, never fail a command
                return UNKNOWN_VERSION
    return _installed_version() or UNKNOWN_VERSION


def __getattr__(name: str) -> str:
    if name == "__version__":  # computed on first use: importing rmeval runs no git
        return version()
    raise AttributeError(f"module 'rmeval' has no attribute {name!r}")


__all__ = ["UNKNOWN_VERSION", "__version__", "source_root", "version"]
