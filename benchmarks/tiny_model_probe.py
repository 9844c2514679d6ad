"""Build the embedded tiny model with given settings and measure its three abilities (DESIGN §6).

    .venv/bin/python benchmarks/tiny_model_probe.py [--hidden 96 --layers 3 --steps 850 ...]

Defaults are the embedded default's settings (config/config.yaml).

Prints the build time and, on fresh ``arith`` questions (a seed apart from every split):
greedy accuracy per level, format adherence and stated confidence of the student; the teacher's
accuracy and stated confidence with a demonstration (SDFT form, ``Confidence: 1.00``); and how
often it states the note's value exactly (CaOPD form).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def main() -> None:
    from caopd.config import load_file

    tiny_default = load_file(Path(__file__).resolve().parent.parent / "config" / "config.yaml")["base"]["model"]["tiny"]
    warm = tiny_default["warmup"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=tiny_default["hidden_size"])
    ap.add_argument("--intermediate", type=int, default=tiny_default["intermediate_size"])
    ap.add_argument("--layers", type=int, default=tiny_default["num_layers"])
    ap.add_argument("--heads", type=int, default=tiny_default["num_heads"])
    ap.add_argument("--kv-heads", type=int, default=tiny_default["num_kv_heads"])
    ap.add_argument("--vocab", type=int, default=tiny_default["vocab_size"])
    ap.add_argument("--steps", type=int, default=warm["steps"])
    ap.add_argument("--batch", type=int, default=warm["batch_size"])
    ap.add_argument("--lr", type=float, default=warm["lr"])
    ap.add_argument("--examples", type=int, default=warm["examples"])
    ap.add_argument("--induction-steps", type=int, default=warm["induction_steps"])
    ap.add_argument("--n-probe", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from caopd.models.base import build_tiny
    from caopd.rollouts.engine import SamplingConfig
    from caopd.rollouts.hf import HFEngine
    from caopd.confidence import parse_confidence
    from caopd.tasks import arith, get_task
    from caopd.tasks.prompts import teacher_messages

    tiny = {
        "vocab_size": args.vocab, "hidden_size": args.hidden,
        "intermediate_size": args.intermediate, "num_layers": args.layers,
        "num_heads": args.heads, "num_kv_heads": args.kv_heads, "max_positions": 512,
        "warmup": {"steps": args.steps, "batch_size": args.batch, "lr": args.lr, "examples": args.examples, "induction_steps": args.induction_steps, "induction_max_steps": warm["induction_max_steps"], "induction_stop_loss": warm["induction_stop_loss"], "induction_lr_warmup": warm["induction_lr_warmup"]},
    }
    out = args.out or Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    summary = build_tiny({"seed": args.seed, "source": "tiny", "tiny": tiny}, out, threads=args.threads)
    build_s = time.perf_counter() - began
    print(f"build: {build_s:.1f} s, {summary}")

    task = get_task("arith")
    probe = arith.generate(args.n_probe, seed=987_654 + args.seed, levels=[1, 2, 3, 4, 5], split="probe")
    engine = HFEngine(str(out / "model"), progress=False)
    greedy = SamplingConfig(n=1, greedy=True, max_new_tokens=40, batch_size=256)
    sampled = SamplingConfig(n=4, temperature=1.0, max_new_tokens=40, batch_size=256)

    def run(prompts, cfg):
        t = time.perf_counter()
        recs = engine.generate(prompts, cfg, seed=1)
        return recs, time.perf_counter() - t

    recs, secs = run([(ex.id, ex.messages) for ex in probe], greedy)
    by_level = defaultdict(list)
    confs = []
    for ex, r in zip(probe, recs):
        by_level[ex.level].append(task.verify(r.text, ex.ground_truth))
        confs.append(parse_confidence(r.text))
    print(f"student greedy ({secs:.1f} s): acc by level " + ", ".join(
        f"L{lv}={sum(v)/len(v):.2f}" for lv, v in sorted(by_level.items())))
    valid = [c for c in confs if c is not None]
    print(f"  format adherence {len(valid)/len(confs):.2f}, mean conf {statistics.mean(valid) if valid else float('nan'):.2f}")
    print("  e.g.", repr(recs[0].text))
    recs, secs = run([(ex.id, ex.messages) for ex in probe], sampled)
    by_level = defaultdict(list)
    for r in recs:
        ex = probe[int(r.prompt_id.rsplit("-", 1)[1])]
        by_level[ex.level].append(task.verify(r.text, ex.ground_truth))
    print(f"student sampled T=1 ({secs:.1f} s): acc by level " + ", ".join(
        f"L{lv}={sum(v)/len(v):.2f}" for lv, v in sorted(by_level.items())))

    sdft = [(ex.id, teacher_messages(ex, mode="demo", p_acc=None)) for ex in probe]
    recs, _ = run(sdft, greedy)
    acc = sum(task.verify(r.text, ex.ground_truth) for ex, r in zip(probe, recs)) / len(probe)
    ones = sum(parse_confidence(r.text) == 1.0 for r in recs) / len(probe)
    print(f"teacher SDFT: acc {acc:.2f}, states 1.00: {ones:.2f}")
    ps = [(i * 37 % 101) / 100 for i in range(len(probe))]
    note = [(ex.id, teacher_messages(ex, mode="demo", p_acc=p)) for ex, p in zip(probe, ps)]
    recs, _ = run(note, greedy)
    acc = sum(task.verify(r.text, ex.ground_truth) for ex, r in zip(probe, recs)) / len(probe)
    exact = sum(parse_confidence(r.text) is not None and abs(parse_confidence(r.text) - p) < 1e-9 for r, p in zip(recs, ps)) / len(probe)
    err = [abs((parse_confidence(r.text) or 0) - p) for r, p in zip(recs, ps)]
    print(f"teacher CaOPD note: acc {acc:.2f}, states the note's value exactly: {exact:.2f}, mean |err| {statistics.mean(err):.3f}")


if __name__ == "__main__":
    main()
