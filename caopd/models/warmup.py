"""The tiny model's warm-up: a seeded ``arith`` mixture that gives it the three abilities a real
instruct model brings to this experiment (DESIGN §6).

=======================  ==============================================  ======================
prompt                   target response                                 ability
=======================  ==============================================  ======================
student prompt           correct work + answer, ``Confidence: c`` with   answers in the task
                         ``c`` drawn from ``BASE_CONFIDENCES``,          format; verbal
                         independent of the question (miscalibrated)     confidence is noise
teacher prompt, demo or  the demonstration's work and answer, then the   uses a demonstration
solution, SDFT form      ``Confidence: 1.00`` the demo states            shown in its context
teacher prompt with a    the demonstration's answer, then the note's     follows the note's
P_acc and the note       value ``Confidence: {p:.2f}``                   stated confidence
=======================  ==============================================  ======================

Before the mixture, ``induction_steps`` steps of a copy task (random token sequences shown
twice, loss on the repeat) stand in for a real model's pretraining: they form the in-context
copying ("induction") heads that the demonstration and the note are used through. Without them a
model this small has not learned to copy from its context after thousands of mixture steps (its
answer letter stays at chance even with the demonstration in view); with them it copies the
demonstration's answer within a few hundred.

The mixture's loss is on response tokens only. The warm-up questions are drawn with their own
seed, apart from the prepared splits (a real base model has also seen arithmetic before).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from caopd.tasks import arith
from caopd.tasks.prompts import teacher_messages

#: Stated confidences of the warmed-up student, drawn uniformly whatever the question: like the
#: verbal confidence of real LLMs, high and uninformative.
BASE_CONFIDENCES: tuple[float, ...] = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95)

#: Share of each kind of warm-up example (student prompt, SDFT teacher, CaOPD teacher with note).
MIXTURE: dict[str, float] = {"student": 0.5, "teacher_sdft": 0.2, "teacher_note": 0.3}

WARMUP_SEED_OFFSET = 7_777_777


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


def train_induction(model, tokenizer, opt, *, steps: int, length: int, batch_size: int, seed: int) -> float:
    """Copy-task pretraining: ``[s, s]`` for random ``s`` of ``length`` ordinary tokens, loss on
    the second ``s``. Returns the last loss."""
    import torch

    special = set(tokenizer.all_special_ids)
    vocab = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    gen = torch.Generator().manual_seed(seed)
    loss_value = float("nan")
    for _ in range(steps):
        seq = vocab[torch.randint(len(vocab), (batch_size, length), generator=gen)]
        ids = torch.cat([seq, seq], dim=1)
        labels = ids.clone()
        labels[:, :length] = -100
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = loss.item()
    return loss_value


def train_warmup(model, tokenizer, examples: Sequence[WarmupExample], cfg: Mapping[str, Any], *,
                 seed: int, log_every: int = 25, tracker=None) -> list[dict[str, float]]:
    """Train ``model`` on the mixture (AdamW, cosine schedule with 5% warmup, loss on responses).

    Returns the training curve rows ``{"step", "loss", "lr"}`` (every ``log_every`` steps).
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
        induction_loss = train_induction(
            model, tokenizer, opt, steps=cfg["induction_steps"], length=24, batch_size=64, seed=seed
        )
        if tracker is not None:
            tracker.log_metrics({"induction_loss": induction_loss}, step=0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(seed)).tolist()
    pad = tokenizer.pad_token_id
    curve, running = [], []
    model.train()
    cursor = 0
    for step in tqdm(range(steps), desc="warm-up", mininterval=5):
        if cursor + batch_size > len(order):
            cursor = 0
        batch = [encoded[i] for i in order[cursor : cursor + batch_size]]
        cursor += batch_size
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, n_prompt) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
            attention[row, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
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
