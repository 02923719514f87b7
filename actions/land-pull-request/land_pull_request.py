"""Land a results dataset by pull request (``land: pull-request`` in eval-schedule.yml).

    land_pull_request.py --path results/D --base main [--remote origin]

When something under --path changed: one commit (commit-results' message) on top of the
checked-out base, force-pushed to the dataset's own branch (``rmeval/results-<dataset>``,
:func:`rmeval.naming.results_branch`; the branch belongs to this workflow, each run
replaces it with the base plus the newest results), then the one pull request of that
branch into --base is opened, or updated if it is open already (rmeval/github.py, at
``$GITHUB_API_URL`` with the job's token). Its title is the commit subject; its body the
diff of the newest version, with links to the folder, README and figures on the branch.
Writes ``committed``, ``sha``, ``branch``, ``pull`` (number) to ``$GITHUB_OUTPUT`` and the
same markdown to the job summary. Failures: one ``::error::`` line, exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "commit-results"))
sys.path.insert(0, str(HERE.parent / "results-summary"))

import commit_results  # noqa: E402
import results_summary  # noqa: E402

from rmeval import naming  # noqa: E402
from rmeval.errors import RmevalError  # noqa: E402
from rmeval.github import Client  # noqa: E402

git = commit_results.git
# A force push that meets another push of the same branch (two fetch-results racing) is
# refused by the remote's ref lock; the branch is ours to replace, so try again, a few times.
PUSH_ATTEMPTS = 3


def land(path: Path, base: str, remote: str = "origin") -> dict[str, str]:
    branch = naming.results_branch(path.name)
    if not commit_results.stage(path):
        results_summary.write_summary(f"### {path.as_posix()}: unchanged, no pull request")
        return {"committed": "false", "sha": "", "branch": branch, "pull": ""}
    client = Client.from_env()  # checked before anything is pushed
    git("checkout", "-q", "-B", branch)
    subject = commit_results.commit(path)
    sha = git("rev-parse", "HEAD").stdout.strip()
    _force_push(remote, branch)
    body = results_summary.markdown(path, branch, subject)
    body += f"\n_Opened by fetch-results: `{path.as_posix()}` at {sha[:12]} on `{branch}`._\n"
    done, pull = client.upsert_pull(branch, base, subject, body)
    results_summary.write_summary(body + f"\nPull request #{pull['number']} {done}.")
    print(f"pull request #{pull['number']} {done}: {subject}", flush=True)
    return {"committed": "true", "sha": sha, "branch": branch, "pull": str(pull["number"])}


def _force_push(remote: str, branch: str) -> None:
    for attempt in range(1, PUSH_ATTEMPTS):
        proc = git("push", "-q", "--force", remote, f"HEAD:refs/heads/{branch}", check=False)
        if proc.returncode == 0:
            return
        print(f"push of {branch} refused (attempt {attempt}); trying again", flush=True)
        time.sleep(attempt)
    git("push", "-q", "--force", remote, f"HEAD:refs/heads/{branch}")  # the last: git's line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", required=True, type=Path)
    p.add_argument("--base", required=True)
    p.add_argument("--remote", default="origin")
    args = p.parse_args(argv)
    try:
        out = land(args.path, args.base, args.remote)
    except (RmevalError, commit_results.CommitFailed) as exc:
        print(f"::error title=land pull request::{exc}", flush=True)
        return 1
    commit_results.write_outputs(out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GIT_TERMINAL_PROMPT", "0")
    sys.exit(main())
