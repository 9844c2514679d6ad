"""Steps/s of one distill optimizer step: today's loop, one prompt pass per group, and TRL's GKD.

One batch of ``--prompts`` prompt groups × ``--k`` rollouts (the default config: 4 × 8 = 32
examples, ``batch_size: 32``) on an untrained model of the default tiny size (vocabulary,
width and depth from ``config/config.yaml``), with prompt and completion lengths like the
default run's (student prompt ≈ 80% and teacher prompt ≈ 87% of each model's tokens; random
token ids, which cost the same as real ones). A step is what ``train_step`` does per micro-batch
and per optimizer step: teacher forward (no grad), student forward, fused divergence, backward,
gradient clipping, AdamW step. Modes:

- ``examples``: today's loop (:func:`caopd.training.data.collate`: every example encoded whole
  in both models);
- ``groups``: ``distill.batching: prompt_groups`` (:mod:`caopd.training.prefix`: each prompt
  encoded once per model, completions on the shared KV cache);
- ``groups, teacher cached``: the same with the frozen teacher's states precomputed
  (:mod:`caopd.training.teacher_states`): a step of the second epoch; a two-epoch round
  averages this and ``groups``;
- ``trl``: TRL's ``GKDTrainer.training_step`` (``lmbda=0``: the batch is given, as ours) on
  the student sequences (TRL's teacher sees the student's prompt, not a privileged one, so it
  runs fewer tokens than ours), then the same clipping and AdamW step. ``beta`` 0 / 1 / 0.5 is
  its forward KL / reverse KL / JSD. Needs ``pip install -e .[bench]``.

Before timing, the loss and every student gradient of ``groups`` are compared with
``examples`` on the same weights (largest difference relative to each tensor's largest entry).
The modes run interleaved, ``--steps`` times each; the table gives medians (the first step of
each mode is a warm-up and not counted) and steps/s ratios.

Run:
    python benchmarks/distill_step_speed.py
    python benchmarks/distill_step_speed.py --kinds forward_kl --steps 10 --no-trl
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import tempfile
import time
from pathlib import Path

KINDS = ("forward_kl", "reverse_kl", "jsd")
TRL_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0, "jsd": 0.5}


def build(args):
    """Tokenizer, student, teacher (a perturbed copy) and the batch's examples."""
    import numpy as np
    import torch
    from transformers import Qwen2ForCausalLM

    from caopd.config import load_file
    from caopd.models.base import tiny_config, tokenizer_corpus
    from caopd.models.tokenizer import train_tokenizer
    from caopd.training.data import DistillExample

    tiny = load_file(Path(__file__).resolve().parent.parent / "config" / "config.yaml")["base"]["model"]["tiny"]
    tokenizer = train_tokenizer(tokenizer_corpus(0, [1, 2, 3, 4, 5]), tiny["vocab_size"])
    torch.manual_seed(0)
    student = Qwen2ForCausalLM(tiny_config(tiny, tokenizer)).train()
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    rng, vocab = random.Random(0), len(tokenizer)
    examples = []
    for p in range(args.prompts):
        s_prompt = [rng.randrange(4, vocab) for _ in range(args.student_prompt + rng.randint(-20, 20))]
        t_prompt = [rng.randrange(4, vocab) for _ in range(args.teacher_prompt + rng.randint(-20, 20))]
        for _ in range(args.k):
            completion = [rng.randrange(4, vocab) for _ in range(args.completion + rng.randint(-10, 8))]
            examples.append(DistillExample(
                student_ids=np.array(s_prompt + completion), teacher_ids=np.array(t_prompt + completion),
                completion_len=len(completion), p_acc=0.5, has_confidence=True, prompt_id=f"q{p}",
            ))
    return tokenizer, student, teacher, examples


def our_step(objective, teacher, batch, optimizer, teacher_hidden=None) -> float:
    """One step as ``train_step`` runs it for a single micro-batch; returns the mean loss."""
    import torch

    from caopd.training.loss import normalise_by_tokens
    from caopd.training.prefix import model_inputs
    from caopd.training.teacher_states import teacher_hidden_states

    student_inputs, teacher_inputs = model_inputs(batch)
    if teacher_hidden is None:
        teacher_hidden = teacher_hidden_states(teacher, teacher_inputs)
    head = teacher.get_output_embeddings()
    loss, _ = objective(student_inputs, teacher_hidden, head.weight, head.bias, batch.weights)
    normalise_by_tokens(loss, batch.n_loss_tokens).backward()
    torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item() / batch.n_loss_tokens


def trl_trainer(student, teacher, tokenizer, kind: str, tmp: str):
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    config = GKDConfig(
        output_dir=tmp, lmbda=0.0, beta=TRL_BETA[kind], seq_kd=False, temperature=1.0,
        per_device_train_batch_size=32, report_to="none", use_cpu=True, bf16=False,
        disable_dropout=True, max_length=1024,
    )
    dataset = Dataset.from_list([{"messages": [{"role": "user", "content": "x"},
                                               {"role": "assistant", "content": "y"}]}])
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=dataset,
                         processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop otherwise
    return trainer


def trl_inputs(batch, skip: int):
    """input_ids / attention_mask / labels of the student sequences, labels on the loss tokens."""
    import torch

    labels = torch.full_like(batch.student_ids, -100)
    targets = batch.student_positions[batch.weights != 0] + 1
    labels.view(-1)[targets] = batch.student_ids.view(-1)[targets]
    return {"input_ids": batch.student_ids, "attention_mask": batch.student_mask, "labels": labels}


def trl_step(trainer, inputs, optimizer) -> float:
    import torch

    loss = trainer.training_step(trainer.model, dict(inputs))
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def check(student, teacher, plain, grouped, kind: str) -> tuple[float, float]:
    """(relative loss difference, largest gradient difference relative to each tensor's max)."""
    import torch

    from caopd.training.divergence import DivergenceSpec
    from caopd.training.objective import StudentObjective
    from caopd.training.prefix import model_inputs
    from caopd.training.teacher_states import teacher_hidden_states

    objective = StudentObjective(student, DivergenceSpec(kind, 0.5), chunk_size=256)
    head = teacher.get_output_embeddings()
    params = list(student.parameters())
    out = []
    for batch in (plain, grouped):
        hidden = teacher_hidden_states(teacher, batch)
        loss, _ = objective(model_inputs(batch)[0], hidden, head.weight, head.bias, batch.weights)
        out.append((loss, torch.autograd.grad(loss, params)))
    (a, ga), (b, gb) = out
    grad_diff = max(((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item() for x, y in zip(gb, ga))
    return abs(b.item() - a.item()) / abs(a.item()), grad_diff


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--student-prompt", type=int, default=160, help="mean student prompt tokens")
    parser.add_argument("--teacher-prompt", type=int, default=270, help="mean teacher prompt tokens")
    parser.add_argument("--completion", type=int, default=40, help="mean completion tokens")
    parser.add_argument("--skip-first-tokens", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared machine more threads oversubscribe the "
                        "cores and every small op waits for a descheduled thread)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--no-trl", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from caopd.training.data import collate
    from caopd.training.divergence import DivergenceSpec
    from caopd.training.objective import StudentObjective
    from caopd.training.prefix import collate_groups, model_inputs
    from caopd.training.teacher_states import teacher_hidden_states

    torch.set_num_threads(args.threads)
    use_trl = not args.no_trl
    if use_trl:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("TRL is not installed (pip install -e .[bench]): skipping it")
            use_trl = False
    tokenizer, student, teacher, examples = build(args)
    plain = collate(examples, args.skip_first_tokens)
    grouped = collate_groups(examples, args.skip_first_tokens)
    cached = teacher_hidden_states(teacher, grouped)
    n_params = sum(p.numel() for p in student.parameters())
    print(f"tiny model {n_params:,} params, V={len(tokenizer)}; batch {args.prompts} prompts x "
          f"{args.k} = {len(examples)} examples, student {plain.student_ids.shape[1]} / teacher "
          f"{plain.teacher_ids.shape[1]} padded tokens per row, {plain.n_loss_tokens} loss tokens; "
          f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps per mode (first "
          "is warm-up), modes interleaved; machine shared with other jobs")
    print(f"{'divergence':<11} {'mode':<24} {'median ms':>10} {'steps/s':>8} {'x examples':>11} {'loss':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            loss_diff, grad_diff = check(copy.deepcopy(student), teacher, plain, grouped, kind)
            modes = {}
            for name, batch, hidden in (("examples", plain, None), ("groups", grouped, None),
                                        ("groups, teacher cached", grouped, cached)):
                model = copy.deepcopy(student)
                objective = StudentObjective(model, DivergenceSpec(kind, 0.5), chunk_size=256)
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
                modes[name] = (lambda o=objective, b=batch, h=hidden, opt=optimizer:
                               our_step(o, teacher, b, opt, h))
            if use_trl:
                model = copy.deepcopy(student)
                trainer = trl_trainer(model, copy.deepcopy(teacher), tokenizer, kind, tmp)
                optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=1e-5)
                inputs = trl_inputs(plain, args.skip_first_tokens)
                modes["trl GKDTrainer"] = (lambda t=trainer, i=inputs, opt=optimizer: trl_step(t, i, opt))
            times: dict[str, list[float]] = {name: [] for name in modes}
            losses: dict[str, float] = {}
            for _ in range(args.steps):
                for name, step in modes.items():
                    began = time.perf_counter()
                    losses[name] = step()
                    times[name].append(time.perf_counter() - began)
            medians = {name: statistics.median(t[1:] if len(t) > 1 else t) for name, t in times.items()}
            for name, median in medians.items():
                print(f"{kind:<11} {name:<24} {median * 1000:>10.1f} {1 / median:>8.2f} "
                      f"{medians['examples'] / median:>11.2f} {losses[name]:>10.5f}", flush=True)
            print(f"{kind:<11} groups vs examples on the same weights: loss {loss_diff:.1e} relative, "
                  f"gradients {grad_diff:.1e} of each tensor's largest entry", flush=True)


if __name__ == "__main__":
    main()
