"""The tiny model's warm-up pieces: the copy task, length-bucketed batches, the response loss."""

from __future__ import annotations

import pytest
import torch

from caopd.models.warmup import (
    WarmupExample,
    induction_batch,
    length_bucketed_batches,
    response_loss,
    warmup_mixture,
)


def test_induction_batch_repeats_one_span_at_varying_offsets():
    vocab = torch.arange(10, 60)
    gen = torch.Generator().manual_seed(0)
    ids, labels = induction_batch(vocab, batch_size=64, length=48, min_span=6, generator=gen)
    assert ids.shape == labels.shape == (64, 48)
    spans = set()
    for row in range(64):
        labelled = (labels[row] != -100).nonzero().flatten().tolist()
        n = len(labelled) + 1  # the repeat's first token is not labelled
        assert 6 <= n <= 24 and labelled == list(range(labelled[0], labelled[0] + n - 1))
        start = labelled[0] - 1  # first token of the repeat
        assert torch.equal(ids[row, start : start + n], ids[row, start - n : start])
        assert torch.equal(labels[row, labelled], ids[row, labelled])
        spans.add((start, n))
    assert len(spans) > 20  # offsets and lengths vary, so no fixed distance solves it
    assert set(ids.flatten().tolist()) <= set(vocab.tolist())


def test_length_bucketed_batches_cover_each_epoch_once_with_similar_lengths():
    lengths = [int(x) for x in torch.randint(20, 200, (160,), generator=torch.Generator().manual_seed(1))]
    batches = length_bucketed_batches(lengths, batch_size=8, n_batches=30, seed=0, pool=4)
    assert len(batches) == 30 and all(len(b) == 8 for b in batches)
    first_epoch = [i for b in batches[:20] for i in b]
    assert sorted(first_epoch) == list(range(160))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / 30
    assert spread < 0.5 * (max(lengths) - min(lengths))
    assert batches == length_bucketed_batches(lengths, batch_size=8, n_batches=30, seed=0, pool=4)
    assert batches != length_bucketed_batches(lengths, batch_size=8, n_batches=30, seed=1, pool=4)


def test_response_loss_equals_the_models_own_loss():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=40, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, max_position_embeddings=64))
    ids = torch.randint(0, 40, (3, 12))
    attention = torch.ones_like(ids)
    attention[2, 9:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 5:] = ids[0, 5:]
    labels[1, 8:] = ids[1, 8:]
    labels[2, 4:9] = ids[2, 4:9]
    expected = model(input_ids=ids, attention_mask=attention, labels=labels).loss
    assert torch.allclose(response_loss(model, ids, attention, labels), expected, atol=1e-6)


def test_mixture_uses_the_glued_option_format():
    mixture = warmup_mixture(40, seed=0, levels=[1, 2, 3, 4, 5])
    assert all(isinstance(ex, WarmupExample) for ex in mixture)
    student = [ex for ex in mixture if ex.kind == "student"]
    for ex in student:
        work = ex.response.split("\n")[0]
        letter = ex.response.split("<answer>")[1][0]
        assert work.endswith(f"({letter})") and f"\n{work.split('= ')[1]}\n" in ex.messages[0]["content"] + "\n"



class _ScriptedLoss(torch.nn.Module):
    """A stand-in model whose loss follows a script (the stopping rule is what is tested)."""

    def __init__(self, losses):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.losses = list(losses)

    def forward(self, input_ids, labels):
        value = self.losses.pop(0) if self.losses else 0.0
        return type("Out", (), {"loss": self.w * 0 + value})()


class _Tok:
    all_special_ids = [0]

    def __len__(self):
        return 50


def _run(losses, **kw):
    from caopd.models.warmup import train_induction

    model = _ScriptedLoss(losses)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return train_induction(model, _Tok(), opt, length=16, batch_size=2, seed=0, **kw)


def test_induction_runs_its_steps_then_goes_on_only_while_the_loss_is_high():
    assert _run([0.1] * 50, steps=20, max_steps=40, stop_loss=0.5)[1] == 20
    # loss 4.0 for 30 steps, then 0.1: after k low steps the 10-step mean is
    # ((10 - k) * 4.0 + k * 0.1) / 10 < 0.5  <=>  k > 8.97, so it stops at step 30 + 9
    assert _run([4.0] * 30 + [0.1] * 50, steps=20, max_steps=60, stop_loss=0.5) == (
        pytest.approx((1 * 4.0 + 9 * 0.1) / 10), 39)  # the returned loss is that mean
    assert _run([4.0] * 100, steps=20, max_steps=40, stop_loss=0.5)[1] == 40
    assert _run([4.0] * 100, steps=20, max_steps=40, stop_loss=None)[1] == 20
