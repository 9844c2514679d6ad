"""``science`` and ``tooluse`` through the whole DAG on CPU (issue 15 row 7), on the released eval
rows of ../shared/data, with a tiny random model whose context (8,192 positions) holds their
prompts at real length.

Train = eval for plumbing: the training split is the eval rows put into the paper's training
format (science: ``messages`` + ``output_text`` ending in the row's ``<answer>``; tool use: the
row plus ``golden_response``, its golden calls written as the reference's demonstrations), so
the teacher has a demonstration to follow. After the run, every rewritten teacher prompt is read
back from the examples: the question, the demonstration and the teacher's note are all in it,
and the rewrite truncated no prompt (its counts are 0 at these limits).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from caopd.models.random_model import build_tiny_model
from caopd.store import verify_artifact

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
ROWS = 6

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is missing")]


def science_train(directory: Path) -> Path:
    from datasets import load_from_disk

    rows = load_from_disk(str(SHARED / "science_eval")).select(range(ROWS))
    train = rows.map(lambda r: {"messages": r["prompt"],
                                "output_text": f"Compare the options; the best is {r['answer']}. "
                                               f"<answer>{r['answer']}</answer>"},
                     remove_columns=rows.column_names)
    train.save_to_disk(str(directory))
    return directory


def tooluse_train(directory: Path) -> Path:
    from datasets import load_from_disk

    rows = load_from_disk(str(SHARED / "tooluse_eval")).select(range(ROWS))

    def demo(row):
        calls = row["golden_answer"]
        return {"golden_response": [f"Action: {c['Action']}\nAction Input: {c['Action_Input']}" for c in calls]}

    rows.map(demo).save_to_disk(str(directory))
    return directory


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("long_context_model"), max_positions=8192)


def run_dag(task: str, train: Path, model: Path, workdir: Path) -> Path:
    cfg = {
        "seed": 0,
        "task": {"name": task, "sizes": {"train": ROWS, "val": 0, "eval": ROWS},
                 "paths": {"train": str(train), "eval": str(SHARED / f"{task}_eval")}},
        "model": {"source": str(model)},
        "rollouts": {"k": 2, "temperature": 1.0, "max_new_tokens": 12, "batch_size": 12},
        "rewrite": {"max_prompt_length": 4096, "max_teacher_prompt_length": 8000, "max_completion_length": 20},
        "distill": {"rounds": 1, "teacher": "frozen", "epochs": 1, "batch_size": 4},
        "evaluation": {"max_new_tokens": 12, "batch_size": 6, "bootstrap": 20},
        "tracking": {"experiment": f"{task}_dag"},
        "variants": {"base": {"distill": {"rounds": 0}}, "caopd": {}},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(path), "--cores", "2"],
        capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return workdir


def check_run(workdir: Path, model: Path) -> None:
    from transformers import AutoTokenizer

    from caopd.tasks.prompts import DEMO_CLOSING, note

    for variant in ("base", "caopd"):
        index = json.loads((workdir / "results" / "index" / f"{variant}.json").read_text())
        for entry in index["stages"]:
            assert verify_artifact(workdir / entry["path"])["key"] == entry["key"]
    metrics = (workdir / "results" / "compare" / "metrics.tsv").read_text()
    assert metrics.startswith("variant\t") and "caopd" in metrics
    rewrite = next((workdir / "results" / "rewrite").iterdir())
    result = json.loads((rewrite / "manifest.json").read_text())["result"]
    assert result["n_truncated_prompt"] == result["n_truncated_teacher_prompt"] == 0, result
    examples = pq.read_table(rewrite / "examples.parquet").to_pylist()
    assert len(examples) == ROWS * 2
    tokenizer = AutoTokenizer.from_pretrained(model)
    data = next((workdir / "results" / "prepare_data").iterdir())
    rows = {row["id"]: row for row in map(json.loads, (data / "train.jsonl").read_text().splitlines())}
    for ex in examples:
        teacher = tokenizer.decode(ex["teacher_input_ids"][: ex["teacher_prompt_len"]])
        row = rows[ex["prompt_id"]]
        assert len(tokenizer(row["question"])["input_ids"]) > 250, "not a prompt at real length"
        assert row["question"] in teacher, "question missing from the teacher prompt"
        assert row["demonstration"].strip() in teacher, "demonstration missing from the teacher prompt"
        assert note(ex["p_acc"]) in teacher and DEMO_CLOSING in teacher, teacher[-600:]


def test_science_runs_through_the_dag(long_context_model, tmp_path):
    train = science_train(tmp_path / "science_train")
    workdir = run_dag("science", train, long_context_model, tmp_path / "run")
    check_run(workdir, long_context_model)


def test_tooluse_runs_through_the_dag(long_context_model, tmp_path):
    train = tooluse_train(tmp_path / "tooluse_train")
    workdir = run_dag("tooluse", train, long_context_model, tmp_path / "run")
    check_run(workdir, long_context_model)
