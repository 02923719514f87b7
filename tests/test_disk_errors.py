"""A read-only or full disk under any of the ten writing commands: one error line naming
the path and what the errno means, exit 1, no traceback, nothing half-written.

The faulty directories are real file systems (tests/disk_fixtures.py): a read-only tmpfs
and a 256 KiB tmpfs filled to its last block."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rmeval import cli, storage
from tests.collect_fixtures import make_metrics
from tests.disk_fixtures import expected_error, faulty_dir, files_in
from tests.fit_helpers import synthetic_table, write_table
from tests.rewardbench_helpers import make_reward_model
from tests.run_fixtures import HEADS, make_material

KINDS = ("ro", "full")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    material = make_material(root)
    model = make_reward_model(root / "model", layers=1)
    store = root / "store"
    for i in range(3):
        run = f"rm_{i}_ID__{i:032x}__SWAPS_{100 + i}"
        storage.write_text(
            storage.join(str(store), run, "metrics.json"), json.dumps(make_metrics(i))
        )
    csv = write_table(synthetic_table(n=30), root / "table.csv")
    spec = root / "spec.yml"
    argv = ["plan", "--source", str(root / "ckpts"), "--store", str(root / "s2")]
    argv += ["--tokenizer", material.tokenizer, "--eval-data", material.dataset]
    assert cli.main([*argv, "--output", str(spec), "--set", f"num_heads={HEADS}"]) == 0
    return {"m": material, "model": model, "store": store, "csv": csv, "spec": spec}


def _argv(command: str, bad: Path, x: dict, good: Path) -> list[str]:
    m = x["m"]
    data = m.dataset
    return {
        "convert": ["convert", m.checkpoints[0], str(bad / "hf"), "--num-heads", str(HEADS)],
        "evaluate": [
            *("evaluate", str(x["model"]), "--eval-data", data),
            *("--out", str(bad / "metrics.json"), "--device", "cpu"),
        ],
        "evaluate --save-scores": [
            *("evaluate", str(x["model"]), "--eval-data", data, "--device", "cpu"),
            *("--out", str(good / "metrics.json"), "--save-scores", str(bad / "scores.jsonl")),
        ],
        "collect": [
            *("collect", "--source", str(x["store"]), "--results-dir", str(bad)),
            *("--results-dataset", "d", "--table", "t"),
        ],
        "collect --output": [
            "collect",
            "--source",
            str(x["store"]),
            "--output",
            str(bad / "t.csv"),
        ],
        "rewardbench-sample": ["rewardbench-sample", str(bad / "rb.jsonl")],
        "plan --output": [
            *("plan", "--source", str(Path(m.checkpoints[0]).parents[1])),
            *("--store", str(good / "store"), "--output", str(bad / "spec.yml")),
            *("--tokenizer", m.tokenizer),
        ],
        "fit --out": ["fit", x["csv"], "--out", str(bad / "fit")],
        "run-one --store": [
            *("run-one", m.checkpoints[0], "--store", str(bad / "store")),
            *("--tokenizer", m.tokenizer, "--eval-data", data, "--num-heads", str(HEADS)),
            *("--work-dir", str(good / "work")),
        ],
        "launch --log-dir": ["launch", str(x["spec"]), "--log-dir", str(bad / "logs")],
    }[command]


COMMANDS = (
    "convert",
    "evaluate",
    "evaluate --save-scores",
    "collect",
    "collect --output",
    "rewardbench-sample",
    "plan --output",
    "fit --out",
    "run-one --store",
    "launch --log-dir",
)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", COMMANDS)
def test_write_to_a_faulty_disk_is_one_line(command, kind, inputs, tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    with faulty_dir(kind, tmp_path) as bad:
        argv = _argv(command, bad, inputs, good)
        capsys.readouterr()
        rc = cli.main(argv)
        out, err = capsys.readouterr()
        left = files_in(bad)
    errors = [ln for ln in err.splitlines() if ln.startswith("rmeval: error: ")]
    assert rc == 1, (out, err)
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert "Traceback" not in err
    assert str(bad) in errors[0] and expected_error(kind) in errors[0], errors[0]
    assert left == [], left
    # the --save-scores case: the good metrics file is not written without its scores
    assert files_in(good) == [] or command != "evaluate --save-scores", files_in(good)
    with capsys.disabled():  # shown with -s: the lines the integration report quotes
        print(f"\n{command:<24} {kind:<5} {errors[0]}")


def test_tokenizers_library_full_disk_error_is_one_line(inputs, tmp_path):
    """The tokenizers library (Rust) reports ENOSPC as a plain Exception "... (os error
    28)": with room for the two small files transformers writes itself but not for
    tokenizer.json, that is the error the save meets."""
    from rmeval.errors import StoreError
    from rmeval.tokenizer import prepare_tokenizer
    from tests.disk_fixtures import FILLER

    with faulty_dir("full", tmp_path) as bad:
        filler = bad / FILLER
        os.truncate(filler, filler.stat().st_size - 2 * 4096)  # two free pages
        with pytest.raises(StoreError) as e:
            prepare_tokenizer(inputs["m"].tokenizer, bad / "tok")
        written = sorted(p.name for p in (bad / "tok").iterdir())
    assert "tokenizer_config.json" in written  # transformers' own write fit
    assert str(e.value) == (
        f"{bad / 'tok'}: cannot save the tokenizer: no space left on device (ENOSPC); "
        "free some space there or write elsewhere"
    )
