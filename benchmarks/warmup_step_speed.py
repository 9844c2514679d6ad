"""Cost of a warm-up step: plain batches + full LM loss vs length-bucketed batches + response loss.

    .venv/bin/python benchmarks/warmup_step_speed.py [--batches 40 --batch-size 16]

Builds the default tiny model's tokenizer and an untrained model of the default size, then times
forward + backward + optimizer step on the same warm-up examples, the variants interleaved in one
run so that machine noise hits both. Prints the median step time of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    import torch
    from transformers import Qwen2ForCausalLM

    from caopd.config import load_file
    from caopd.models.base import tiny_config, tokenizer_corpus
    from caopd.models.tokenizer import train_tokenizer
    from caopd.models.warmup import length_bucketed_batches, response_loss, tokenize_example, warmup_mixture

    tiny = load_file(Path(__file__).resolve().parent.parent / "config" / "config.yaml")["base"]["model"]["tiny"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=tiny["warmup"]["batch_size"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    levels = [1, 2, 3, 4, 5]
    tokenizer = train_tokenizer(tokenizer_corpus(0, levels), tiny["vocab_size"])
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_config(tiny, tokenizer))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    n = args.batches * args.batch_size
    encoded = [tokenize_example(tokenizer, ex) for ex in warmup_mixture(n, seed=0, levels=levels)]

    def tensors(rows):
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels, attention = torch.full_like(ids, -100), torch.zeros_like(ids)
        for r, (seq, n_prompt) in enumerate(rows):
            ids[r, : len(seq)] = torch.tensor(seq)
            labels[r, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
            attention[r, : len(seq)] = 1
        return ids, attention, labels

    plain = [list(range(i * args.batch_size, (i + 1) * args.batch_size)) for i in range(args.batches)]
    bucketed = length_bucketed_batches([len(ids) for ids, _ in encoded], batch_size=args.batch_size,
                                       n_batches=args.batches, seed=0)
    times: dict[str, list[float]] = {"plain batches, full loss": [], "bucketed batches, response loss": []}
    pads: dict[str, int] = dict.fromkeys(times, 0)
    for i in range(args.batches):
        for name, batches in (("plain batches, full loss", plain), ("bucketed batches, response loss", bucketed)):
            ids, attention, labels = tensors([encoded[j] for j in batches[i]])
            pads[name] += int((attention == 0).sum())
            began = time.perf_counter()
            if name.startswith("plain"):
                loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
            else:
                loss = response_loss(model, ids, attention, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times[name].append(time.perf_counter() - began)
    medians = {name: statistics.median(t[1:]) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name:<34} median step {median * 1000:7.1f} ms   pad tokens {pads[name]}")
    a, b = medians.values()
    print(f"ratio bucketed/plain: {b / a:.2f}")


if __name__ == "__main__":
    main()
