"""Cross-key checks of the distill objective's issue-18 options, run at config load.

``distill.estimator`` and ``distill.vopd_top_k`` (:mod:`caopd.training.estimators`) and
``distill.length_curriculum`` (:mod:`caopd.training.curriculum`) combine with other keys in ways
the schema cannot express; :func:`objective_problem` names the keys of the first conflict.
Imported by :mod:`caopd.config` at parse time: standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def objective_problem(cfg: Mapping[str, Any]) -> str | None:
    """Why a resolved variant's ``distill.estimator``, ``vopd_top_k`` or ``length_curriculum``
    cannot run, or None (issue 18; :mod:`caopd.training.estimators`, :mod:`caopd.training.curriculum`)."""
    distill, rollouts = cfg["distill"], cfg["rollouts"]
    estimator, top_k = distill.get("estimator", "full_vocab"), distill.get("vopd_top_k", 0)
    if estimator != "full_vocab" and distill["divergence"] != "reverse_kl":
        return (f"key 'distill.estimator' is {estimator!r} but 'distill.divergence' is "
                f"{distill['divergence']!r}: the sampled-token estimators are unbiased for the reverse "
                "KL only; set divergence: reverse_kl, or estimator: full_vocab")
    if top_k and estimator != "vopd":
        return (f"key 'distill.vopd_top_k' is {top_k} but 'distill.estimator' is {estimator!r}: the "
                "top-k control variate is vOPD's; set estimator: vopd, or vopd_top_k: 0")
    prefix = rollouts.get("prefix_source", "student")
    if estimator != "full_vocab" and prefix != "student":
        return (f"key 'distill.estimator' is {estimator!r} but 'rollouts.prefix_source' is {prefix!r}: "
                "the sampled-token estimators need tokens the student sampled (E_q), not the "
                "teacher's; set prefix_source: student, or estimator: full_vocab")
    if distill.get("length_curriculum") is not None and prefix != "student":
        return (f"key 'distill.length_curriculum' is set but 'rollouts.prefix_source' is {prefix!r}: "
                "the curriculum's rung budgets the student's rollouts, and the teacher_rollouts stage "
                "does not read it; set prefix_source: student, or length_curriculum: null")
    tiny = cfg.get("model", {}).get("tiny") if cfg.get("model", {}).get("source") == "tiny" else None
    if top_k and tiny and top_k > tiny["vocab_size"]:
        return (f"key 'distill.vopd_top_k' ({top_k}) exceeds the vocabulary "
                f"'model.tiny.vocab_size' ({tiny['vocab_size']})")
    ladder = distill.get("length_curriculum")
    if ladder is None:
        return None
    lengths = ladder["lengths"]
    if any(b <= a for a, b in zip(lengths, lengths[1:])):
        return f"key 'distill.length_curriculum.lengths' {lengths} must be strictly increasing"
    if lengths[-1] > rollouts["max_new_tokens"]:
        return (f"key 'distill.length_curriculum.lengths' ends at {lengths[-1]}, above "
                f"'rollouts.max_new_tokens' ({rollouts['max_new_tokens']}): the ladder climbs to the "
                "configured budget, raise max_new_tokens (and rewrite.max_completion_length) to it")
    val = cfg.get("task", {}).get("sizes", {}).get("val")
    if val is not None and val < ladder["n_prompts"]:
        return (f"key 'distill.length_curriculum.n_prompts' ({ladder['n_prompts']}) exceeds "
                f"'task.sizes.val' ({val}): the entropy is measured on that many val prompts")
    return None
