"""Render every preset against a fixture listing and show the specs in the job summary.

    preview.py [--presets rmeval/templates/presets] [--listing listing.txt]

The listing's object names become empty files under a scratch directory (``rmeval plan``
only lists them); each preset is planned with ``--output`` into a scratch spec. Every preset
is tried; the exit status is 1 if any failed, each failure being one ``::error::`` line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def materialise(listing: Path, root: Path) -> Path:
    """Empty files named by the listing (comments and blank lines skipped) under root."""
    for line in listing.read_text(encoding="utf-8").splitlines():
        name = line.strip()
        if name and not name.startswith("#"):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    return root


def render(preset: Path, source: Path, work: Path) -> tuple[bool, str, str]:
    """(ok, plan's summary or error line, the spec text) for one preset."""
    spec = work / f"{preset.stem}.yml"
    cmd = [sys.executable, "-m", "rmeval", "plan", "--source", str(source)]
    cmd += ["--preset", str(preset), "--store", str(work / "store"), "--output", str(spec)]
    # plan refuses run-one tasks without a tokenizer; the real one is a repository variable
    cmd += ["--tokenizer", str(source / "tokenizer.model")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    if proc.returncode != 0:
        error = next((ln for ln in reversed(lines) if ln.startswith("rmeval:")), None)
        return False, error or (lines[-1] if lines else f"exit {proc.returncode}"), ""
    found = next((ln for ln in lines if ln.startswith("found ")), lines[-1] if lines else "")
    return True, found, spec.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="rmeval/templates/presets")
    p.add_argument("--listing", default=str(HERE / "listing.txt"))
    args = p.parse_args(argv)
    presets = sorted(Path(args.presets).glob("*.yml"))
    if not presets:
        print(f"::error title=spec preview::no presets under {args.presets}")
        return 1
    out = ["### Spec preview", "", f"Fixture listing: `{Path(args.listing).name}`", ""]
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        source = materialise(Path(args.listing), Path(tmp) / "bucket")
        for preset in presets:
            ok, note, spec = render(preset, source, Path(tmp))
            if ok:
                out += [f"<details><summary>{preset.stem}: {note}</summary>", ""]
                out += ["```yaml", spec.rstrip(), "```", "", "</details>", ""]
                print(f"{preset.stem}: {note}")
            else:
                failed += 1
                out += [f"**{preset.stem}: failed** `{note}`", ""]
                print(f"::error title=spec preview {preset.stem}::{note}", flush=True)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write("\n".join(out) + "\n")
    else:
        print("\n".join(out))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
