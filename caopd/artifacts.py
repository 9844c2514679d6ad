"""The files every artifact holds, named once (DESIGN §4), with the functions that write and read them.

An artifact is a directory ``results/<stage>/<key>/``; besides its stage's files it holds
:data:`SPEC`, :data:`MANIFEST` and :data:`RECORD_FILE` (written by :mod:`caopd.store` and
:mod:`caopd.job`). Per stage:

- ``prepare_data``: :func:`split_file` (``train.jsonl``, ...), by ``caopd.data.write_split`` /
  ``read_split``;
- ``base_model``: :data:`MODEL_SUBDIR` or :data:`MODEL_REF`, :data:`WARMUP_CURVE`, by
  ``caopd.models.base`` / ``model_dir``;
- ``rollouts``, ``eval_rollouts``: :data:`ROLLOUTS_FILE` (``caopd.rollouts.files.write_rollouts`` /
  ``read_rollouts``), a greedy evaluation also :data:`EXPECTED_FILE` (``caopd.rollouts.stage``);
- ``teacher_rollouts`` (``rollouts.prefix_source: teacher``): :data:`ROLLOUTS_FILE` holding the
  teacher's samples from the teacher prompt (``caopd.rollouts.teacher``; the student's own
  rollouts of the round stay in its ``rollouts`` artifact);
- ``targets``: :data:`SCORED_ROLLOUTS_FILE`, :data:`TARGETS_FILE`, by ``caopd.targets.write_targets``
  / ``read_targets``;
- ``rewrite``: :data:`EXAMPLES_FILE`, :data:`PREVIEW_FILE`, by ``caopd.rewrite.write_examples`` /
  ``read_examples``;
- ``distill``: the student, :data:`CURVES_FILE`, :data:`STATE_DIR` (what the next round resumes
  from), :data:`ONLINE_DIR` (online rounds), by ``caopd.training``;
- ``evaluate``: :data:`METRICS_FILE`, :data:`SCORED_FILE`, by ``caopd.evaluation.stage`` /
  :func:`read_metrics_file`, :func:`read_scored`.

Every Parquet file is written by :func:`caopd.parquet.write_table`. Standard library only at import
(pandas is imported inside :func:`read_scored`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

# every artifact
SPEC = "spec.json"
MANIFEST = "manifest.json"
RECORD_FILE = "tracking.json"
#: a sealed checkpoint's file table (:func:`caopd.store.seal`)
CHECKSUMS = "checksums.json"

# base_model
MODEL_SUBDIR = "model"
MODEL_REF = "model_ref.json"
WARMUP_CURVE = "warmup_curve.json"

# rollouts, eval_rollouts
ROLLOUTS_FILE = "rollouts.parquet"
#: greedy evaluation only; :mod:`caopd.evaluation.stage` reads it
EXPECTED_FILE = "expected_confidence.parquet"

#: training rollouts under ``distill.length_curriculum`` only: the round's rung, length in force
#: and the entropy that decided it (:mod:`caopd.training.curriculum`)
CURRICULUM_FILE = "curriculum.json"

# targets
SCORED_ROLLOUTS_FILE = "rollouts_scored.parquet"
TARGETS_FILE = "targets.parquet"

# rewrite
EXAMPLES_FILE = "examples.parquet"
PREVIEW_FILE = "preview.jsonl"
#: The columns of :data:`EXAMPLES_FILE`, in order (one row per rewritten rollout).
EXAMPLE_COLUMNS = (
    "prompt_id",
    "sample_index",
    "student_input_ids",
    "student_prompt_len",
    "teacher_input_ids",
    "teacher_prompt_len",
    "completion_len",
    "p_acc",
    "stated_confidence",
    "correct",
    "rewritten",
)
#: What the distill loop reads of them (:func:`caopd.training.data.load_examples`).
TRAINING_COLUMNS = EXAMPLE_COLUMNS[:9]
#: An optional last column of :data:`EXAMPLES_FILE`, written only when a sampled-token
#: estimator (``distill.estimator``) will read it: how many leading completion ids the student
#: sampled (the rest the rewrite wrote). Absent otherwise, so the default file is unchanged.
SAMPLED_LEN = "sampled_len"

# distill
CURVES_FILE = "curves.parquet"
#: the trainer state a later round resumes from
STATE_DIR = "state"
#: an online round's refresh windows, ``online/refresh-<w>/``
ONLINE_DIR = "online"

# evaluate
METRICS_FILE = "metrics.json"
SCORED_FILE = "scored.parquet"


def split_file(split: str) -> str:
    """The file of one split of a ``prepare_data`` artifact: ``<split>.jsonl``."""
    return f"{split}.jsonl"


def read_metrics_file(evaluate_dir: str | Path) -> dict[str, Any]:
    """The ``metrics.json`` of an evaluate artifact (unverified; :mod:`caopd.index` verifies)."""
    return json.loads((Path(evaluate_dir) / METRICS_FILE).read_text())


def read_scored(evaluate_dir: str | Path) -> pd.DataFrame:
    """The ``scored.parquet`` of an evaluate artifact: one row per evaluated answer."""
    import pandas as pd

    return pd.read_parquet(Path(evaluate_dir) / SCORED_FILE)
