"""The tiny model's warm-up: a seeded ``arith`` mixture that gives it the three abilities a real
instruct model brings to this experiment (DESIGN §6).

=======================  ==============================================  ======================
prompt                   target response                                 ability
=======================  ==============================================  ======================
student prompt           correct work + answer, ``Confidence: c`` with   answers in the task
                         ``c`` drawn from ``BASE_CONFIDENCES``,          format; verbal
                         independent of the question (miscalibrated)     confidence is noise
teacher prompt, demo or  correct work + answer (the demonstration       uses a demonstration
solution, SDFT form      shows the work only), ``Confidence: 1.00``      shown in its context
teacher prompt with a    correct work + answer, then the note's          follows the note's
P_acc and the note       value ``Confidence: {p:.2f}``                   stated confidence
=======================  ==============================================  ======================

Before the mixture, ``induction_steps`` steps (more, up to ``induction_max_steps``, while the loss
is above ``induction_stop_loss``) of a copy task (random token sequences with a span
repeated at a random offset, loss on the repeat) stand in for a real model's pretraining: they
form the in-context copying ("induction") heads through which the model reads the letter glued
to the option value it computed, copies the demonstration and states the note's value. Without
them a model this small leaves its answer letter at chance after thousands of mixture steps, even
when its work line has the right value.

The mixture's loss is on response tokens only. The warm-up questions are drawn with their own
seed, apart from the prepared splits (a real base model has also seen arithmetic before).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from caopd.tasks import arith
from caopd.tasks.prompts import teacher_messages

#: Stated confidences of the warmed-up student, drawn uniformly whatever the question: like the
#: verbal confidence of real LLMs, high and uninformative. 1.00 is among them so that the student
#: samples it itself: on-policy distillation trains only prefixes the student samples, and a
#: student that never wrote ``Confidence: 1`` learns SDFT's first digit without the rest (it then
#: writes ``Confidence: 10.00``; measured: format adherence 0.52 after SDFT at lr 3e-4).
BASE_CONFIDENCES: tuple[float, ...] = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)

#: Share of each kind of warm-up example (student prompt, SDFT teacher, CaOPD teacher with note).
MIXTURE: dict[str, float] = {"student": 0.5, "teacher_sdft": 0.2, "teacher_note": 0.3}

WARMUP_SEED_OFFSET = 7_777_777

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmupExample:
    messages: list[dict[str, str]]
    response: str
    kind: str


def warmup_mixture(n: int, *, seed: int, levels: Sequence[int]) -> list[WarmupExample]:
    """``n`` warm-up examples in a seeded order (module docstring for the mixture)."""
    rng = random.Random(seed + WARMUP_SEED_OFFSET)
    questions = arith.generate(n, seed=seed + WARMUP_SEED_OFFSET, levels=levels, split="warmup")
    kinds = list(MIXTURE)
    weights = [MIXTURE[k] for k in kinds]
    out = []
    for ex in questions:
        kind = rng.choices(kinds, weights=weights)[0]
        truth = ex.ground_truth
        if kind == "student":
            conf = rng.choice(BASE_CONFIDENCES)
            out.append(WarmupExample(ex.messages, arith.response(ex, answer_letter=truth, confidence=conf), kind))
            continue
        mode = rng.choice(["demo", "correct_solution"])
        # the solution shown is the demonstration's work line: a letter in the teacher's context
        # would be copied after a student's wrong value (caopd.tasks.arith, "Demonstration")
        solution = ex.demonstration if mode == "correct_solution" else None
        p_acc = None if kind == "teacher_sdft" else rng.randint(0, 100) / 100
        messages = teacher_messages(ex, mode=mode, p_acc=p_acc, solution=solution)
        conf = 1.0 if p_acc is None else p_acc
        out.append(WarmupExample(messages, arith.response(ex, answer_letter=truth, confidence=conf), kind))
    return out


def tokenize_example(tokenizer, ex: WarmupExample) -> tuple[list[int], int]:
    """(ids, n_prompt): chat-templated prompt ids followed by the response and EOS."""
    prompt = tokenizer.apply_chat_template(ex.messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(ex.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + response_ids, len(prompt_ids)


def induction_batch(vocab, *, batch_size: int, length: int, min_span: int, generator):
    """One copy-task batch: ``(input_ids, labels)``, both ``(batch_size, length)``.

    Row ``r`` is random ``vocab`` tokens in which a span ``s`` of random length ``n`` in
    ``[min_span, length // 2]`` starts at a random offset ``p`` and is repeated right after itself
    (positions ``p + n .. p + 2n - 1``). Labels are the repeat's tokens after its first (the
    first is unpredictable), ``-100`` elsewhere. Because ``n`` and ``p`` vary by row, the repeat
    can only be predicted by matching content (an induction head), not a fixed offset.
    """
    import torch

    ids = vocab[torch.randint(len(vocab), (batch_size, length), generator=generator)]
    labels = torch.full_like(ids, -100)
    for row in range(batch_size):
        n = int(torch.randint(min_span, length // 2 + 1, (1,), generator=generator))
        p = int(torch.randint(0, length - 2 * n + 1, (1,), generator=generator))
        ids[row, p + n : p + 2 * n] = ids[row, p : p + n]
        labels[row, p + n + 1 : p + 2 * n] = ids[row, p + n + 1 : p + 2 * n]
    return ids, labels


def train_induction(model, tokenizer, opt, *, steps: int, length: int, batch_size: int, seed: int,
                    min_span: int = 6, max_steps: int | None = None,
                    stop_loss: float | None = None, lr_warmup: int = 0) -> tuple[float, int]:
    """Copy-task pretraining on :func:`induction_batch` batches. Returns (mean loss of the last 10
    steps, steps run).

    Runs ``steps`` steps; then, while the mean loss of the last 10 steps is still ``>=
    stop_loss``, goes on up to ``max_steps`` in all (``None``: stop at ``steps``). The learning
    rate of ``opt`` rises linearly over the first ``lr_warmup`` steps (step ``s`` at
    ``(s + 1) / lr_warmup`` of it; 0: none) and is restored when the copy task ends.

    A fixed-length copy task (``[s, s]``) is solved by a head that looks a fixed distance back
    and forms no induction head; with random span lengths and offsets the loss stays near
    ``log(vocab)`` for a few hundred steps, then drops as induction heads form (a phase change:
    about 550 steps at batch 64, length 48 for the default tiny model at seeds 0 and 1, later at
    seed 2, whose loss was still 3.2 at step 600 and whose model then answered at 0.30 instead of
    0.54-0.56; it was still at 1.35 at step 1000: hence the extension). Without a learning-rate
    warm-up, seeds 2-4 of the default stalled on a plateau near 1.3 after the change (1.25 at step
    2,250 for seeds 2 and 3); a 50-step linear warm-up brought the loss below 0.5 at every seed 0-4
    within 274-351 steps (docs/tiny_model.md §1).
    """
    import torch

    special = set(tokenizer.all_special_ids)
    vocab = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    gen = torch.Generator().manual_seed(seed)
    base_lrs = [group["lr"] for group in opt.param_groups]
    recent: list[float] = []
    limit = steps if max_steps is None or stop_loss is None else max(steps, max_steps)
    step = 0
    while step < limit:
        ids, labels = induction_batch(vocab, batch_size=batch_size, length=length,
                                      min_span=min_span, generator=gen)
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * min(1.0, (step + 1) / lr_warmup) if lr_warmup else base
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-10:]
        step += 1
        if step >= steps and (stop_loss is None or sum(recent) / len(recent) < stop_loss):
            break
    for group, base in zip(opt.param_groups, base_lrs):
        group["lr"] = base
    return (sum(recent) / len(recent) if recent else float("nan")), step


def length_bucketed_batches(lengths: Sequence[int], *, batch_size: int, n_batches: int, seed: int,
                            pool: int = 8) -> list[list[int]]:
    """``n_batches`` batches of example indices, few pad tokens, order still random.

    Each epoch shuffles the indices, sorts every run of ``pool * batch_size`` of them by length,
    cuts the runs into batches and shuffles the batches; epochs repeat until ``n_batches``.
    A batch thus holds examples of similar length drawn at random from a pool of ``pool``
    batches' worth, which cuts the padding the mixture's spread of prompt lengths would cost.
    """
    rng = random.Random(seed)
    batches: list[list[int]] = []
    while len(batches) < n_batches:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        epoch = []
        span = pool * batch_size
        for start in range(0, len(order) - batch_size + 1, span):
            run = sorted(order[start : start + span], key=lambda i: lengths[i])
            epoch.extend(run[b : b + batch_size] for b in range(0, len(run) - batch_size + 1, batch_size))
        if not epoch:
            raise ValueError(f"warm-up: {len(lengths)} examples are fewer than one batch of {batch_size}")
        rng.shuffle(epoch)
        batches.extend(epoch)
    return batches[:n_batches]


def response_loss(model, input_ids, attention_mask, labels):
    """Mean next-token cross-entropy over the positions whose ``labels`` are not ``-100``.

    The same value as ``model(..., labels=labels).loss``, but the LM head and the softmax run on
    the labelled positions only (a warm-up batch is mostly prompt). Shapes: ``(batch, seq)``.
    """
    import torch

    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def train_warmup(model, tokenizer, examples: Sequence[WarmupExample], cfg: Mapping[str, Any], *,
                 seed: int, log_every: int = 25, tracker=None,
                 stats: dict[str, Any] | None = None) -> list[dict[str, float]]:
    """Train ``model`` on the mixture (AdamW, cosine schedule with 5% warmup, loss on responses).

    Returns the training curve rows ``{"step", "loss", "lr"}`` (every ``log_every`` steps). Into
    ``stats``, when given, goes what the copy task did: ``induction_steps_run``,
    ``induction_loss`` (mean of its last 10 steps) and ``induction_converged`` (that loss below
    ``induction_stop_loss``, ``None`` without one; a model whose copy task did not converge reads
    option letters poorly, docs/tiny_model.md §1).
    """
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    encoded = [tokenize_example(tokenizer, ex) for ex in examples]
    steps, batch_size = cfg["steps"], cfg["batch_size"]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.98), weight_decay=0.01)
    warm = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    if cfg["induction_steps"]:
        induction_loss, induction_run = train_induction(
            model, tokenizer, opt, steps=cfg["induction_steps"], length=48, batch_size=64, seed=seed,
            max_steps=cfg["induction_max_steps"], stop_loss=cfg["induction_stop_loss"],
            lr_warmup=cfg.get("induction_lr_warmup", 0),  # absent from the params when 0 (caopd.key_neutral.KEY_NEUTRAL)
        )
        if tracker is not None:
            tracker.log_metrics({"induction_loss": induction_loss, "induction_steps_run": induction_run}, step=0)
        stop_loss = cfg["induction_stop_loss"]
        converged = None if stop_loss is None else bool(induction_loss < stop_loss)
        if converged is False:
            log.warning("copy task: loss %.3f after %d steps, still above %.3f: the induction heads may "
                        "not have formed, and the model may read option letters poorly",
                        induction_loss, induction_run, stop_loss)
        if stats is not None:
            stats.update(induction_steps_run=induction_run, induction_loss=induction_loss,
                         induction_converged=converged)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    batches = length_bucketed_batches([len(ids) for ids, _ in encoded], batch_size=batch_size,
                                      n_batches=steps, seed=seed)
    pad = tokenizer.pad_token_id
    curve, running = [], []
    model.train()
    for step in tqdm(range(steps), desc="warm-up", mininterval=5):
        batch = [encoded[i] for i in batches[step]]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, n_prompt) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
            attention[row, : len(ids)] = 1
        loss = response_loss(model, input_ids, attention, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            row = {"step": step + 1, "loss": sum(running) / len(running), "lr": sched.get_last_lr()[0]}
            curve.append(row)
            running = []
            if tracker is not None:
                tracker.log_metrics({"warmup_loss": row["loss"], "warmup_lr": row["lr"]}, step=step + 1)
    model.eval()
    return curve
