"""Markdown about a results dataset for GitHub: the job summary, a pull request's body, a
pull request's diff comment.

    results_summary.py summary --path results/D [--ref SHA] [--subject LINE]
    results_summary.py comment --base SHA --pr N         (ci.yml, on a pull request)

``summary`` appends to ``$GITHUB_STEP_SUMMARY``: the subject (what was committed), a link to
the folder at ``--ref`` (``$GITHUB_SERVER_URL/$GITHUB_REPOSITORY/tree/REF/results/D``),
``rmeval diff --last`` of the dataset (its newest HISTORY version against the one before)
and links to its README and figures at that ref. Without ``--ref`` (nothing committed) it
says the results are unchanged.

``comment`` diffs each results dataset the pull request changes (``DIR@BASE`` against the
checkout; ``v0`` for a dataset new in the pull request) and posts it as one comment, edited
in place on later pushes (rmeval/github.py). A token that may not comment (a fork's) gives
a warning and the diff in the job summary only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from rmeval import diff, results
from rmeval.errors import RmevalError
from rmeval.github import Client, GitHubError


def _url(kind: str, ref: str, rel: str) -> str:
    server = os.environ.get("GITHUB_SERVER_URL", "").rstrip("/")
    repo = os.environ.get("GITHUB_REPOSITORY", "")
    return f"{server}/{repo}/{kind}/{ref}/{rel}"


def figure_links(path: Path, ref: str) -> list[str]:
    """Markdown links to the dataset's README and report figures at ``ref``."""
    csv = results.dataset_table(path)
    paths = results.table_paths(path.parent, path.name, csv.stem)
    links = []
    if paths.readme.is_file():
        links.append(f"[README]({_url('blob', ref, paths.readme.as_posix())})")
    if paths.figures.is_dir():
        for png in sorted(paths.figures.glob("*.png")):
            links.append(f"[{png.stem.replace('_', ' ')}]({_url('blob', ref, png.as_posix())})")
    return links


def markdown(path: Path, ref: str, subject: str = "") -> str:
    """What a job summary and a pull request's body say about ``path`` at ``ref``."""
    short = ref[:12] if len(ref) == 40 else ref
    lines = [f"### {subject or path.as_posix()}", ""]
    lines.append(f"[`{path.as_posix()}` at `{short}`]({_url('tree', ref, path.as_posix())})")
    lines.append("")
    old, new = diff.last_versions(str(path))
    lines.append(diff.markdown(diff.diff(old, new, dataset_dir=str(path))))
    links = figure_links(path, ref)
    if links:
        lines += ["", "Report: " + " · ".join(links)]
    return "\n".join(lines).rstrip() + "\n"


def write_summary(text: str) -> None:
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text, flush=True)


def changed_datasets(base: str) -> list[Path]:
    """The results/<dataset> directories (with a HISTORY) the checkout changes since base."""
    proc = subprocess.run(
        ["git", "diff", "--name-only", base, "HEAD", "--", "results/"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["git diff failed"])[-1]
        raise RmevalError(f"git diff {base}..HEAD: {err} (check out with fetch-depth: 0)")
    dirs = sorted({Path(*Path(p).parts[:2]) for p in proc.stdout.split() if len(Path(p).parts) > 2})
    return [d for d in dirs if (d / results.HISTORY_FILE).is_file()]


def comment_text(base: str) -> str:
    parts = []
    for d in changed_datasets(base):
        csv = results.dataset_table(d)
        at_base = subprocess.run(
            ["git", "cat-file", "-e", f"{base}:{csv.as_posix()}"], capture_output=True, check=False
        )
        old = f"{d.as_posix()}@{base}" if at_base.returncode == 0 else f"{d.as_posix()}@v0"
        parts.append(f"### {d.as_posix()}\n\n" + diff.markdown(diff.diff(old, d.as_posix())))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("summary")
    s.add_argument("--path", required=True, type=Path)
    s.add_argument("--ref", default="")
    s.add_argument("--subject", default="")
    c = sub.add_parser("comment")
    c.add_argument("--base", required=True)
    c.add_argument("--pr", required=True, type=int)
    args = p.parse_args(argv)
    try:
        if args.mode == "summary":
            if not args.ref:
                write_summary(f"### {args.path.as_posix()}: unchanged, nothing committed")
            else:
                write_summary(markdown(args.path, args.ref, args.subject))
            return 0
        text = comment_text(args.base)
        if not text:
            print("no results dataset changed", flush=True)
            return 0
        write_summary(text)
        try:
            done = Client.from_env().upsert_comment(args.pr, text)
            print(f"diff comment {done} on pull request #{args.pr}", flush=True)
        except GitHubError as exc:
            print(f"::warning title=results diff::not commented: {exc}", flush=True)
        return 0
    except RmevalError as exc:
        print(f"::error title=results summary::{exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
