"""Stage rewrite(r): the round's training examples as token ids (DESIGN §1 step 3).

One training example per rollout. With ``calibration: true`` (CaOPD) the confidence is replaced
in three places:

- the student's completion: its LAST confidence label (the one the parser reads) and what
  follows are replaced by ``Confidence: {P_acc:.2f}`` plus EOS (:mod:`caopd.completion`);
  everything before that label is kept, an earlier mention of confidence included (the
  reference cut at the first match and so deleted the work and the answer). The kept prefix is
  the sampled ids themselves, never decoded and re-encoded (the reference's token drift,
  DESIGN §2);
- the teacher's demonstration (or verified solution): its ``Confidence: 1.00`` becomes
  ``Confidence: {P_acc:.2f}``;
- the note before the teacher's closing instruction
  (:func:`caopd.tasks.prompts.teacher_messages` builds both teacher replacements).

With ``calibration: false`` (plain SDFT) the completion is the sampled ids untouched, EOS
included, and the teacher shows ``Confidence: 1.00`` with no note.

The completions are the student's rollouts (``rollouts.prefix_source: student``) or, with
``prefix_source: teacher``, the teacher's samples from its own prompt (the ``prefixes`` input,
:mod:`caopd.rollouts.teacher`): one example per teacher sample, rewritten the same way, while
P_acc still comes from the student's rollouts (their targets).

The teacher sees the student's completion after its own (privileged) prompt: the SAME completion
ids follow both prompts. Prompts are truncated from the left to their own limits
(``max_prompt_length`` for the student, ``max_teacher_prompt_length`` for the teacher: the
reference cut the teacher's prompt to the student's limit, DESIGN §2); completions to
``max_completion_length``: an SDFT completion from the right, a CaOPD completion by shortening
its kept prefix, so that the ``Confidence:`` suffix and EOS always survive.

The package: :mod:`~caopd.rewrite.config` (:class:`RewriteConfig`), :mod:`~caopd.rewrite.cut`
(the token-level cuts of one example), :mod:`~caopd.rewrite.examples` (one prompt's examples,
:func:`prompt_examples`; the round's, :func:`build_examples`), :mod:`~caopd.rewrite.files`
(Parquet and preview I/O) and :mod:`~caopd.rewrite.stage` (:func:`run_rewrite`, :func:`run`).

Output directory of :func:`run_rewrite`: ``examples.parquet``
(:data:`caopd.artifacts.EXAMPLE_COLUMNS`, sorted by
``(prompt_id, sample_index)``, byte-deterministic) and ``preview.jsonl`` (the first
:data:`PREVIEW_ROWS` examples decoded, for reading).
"""

from caopd.rewrite.config import RewriteConfig
from caopd.rewrite.examples import build_examples, prompt_examples
from caopd.rewrite.files import PREVIEW_ROWS, preview_rows, read_examples, write_examples
from caopd.rewrite.stage import run, run_rewrite

__all__ = [
    "PREVIEW_ROWS",
    "RewriteConfig",
    "build_examples",
    "preview_rows",
    "prompt_examples",
    "read_examples",
    "run",
    "run_rewrite",
    "write_examples",
]
