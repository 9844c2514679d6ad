"""Stage base_model: the starting student (DESIGN §6).

- ``source: tiny`` builds the embedded model: a tokenizer trained locally, a Qwen2-architecture
  config of a few hundred thousand parameters, warm-up training on the ``arith`` mixture
  (:mod:`caopd.models.warmup`), saved with ``save_pretrained`` under ``model/``.
- any other ``source`` is a Hugging Face id or a local path, resolved OFFLINE (no download at run
  time): the artifact holds ``model_ref.json`` with the resolved directory, the revision and the
  sha256 of every file, and :func:`model_dir` hands that directory to the later stages after
  checking every file against those digests (a changed file is an error naming it). A local
  directory's digests are also in the key (:func:`caopd.sources.model_fingerprint`), and the job
  refuses a directory that changed between planning and running. The same code path loads
  ``Qwen/Qwen3-8B`` on a cluster whose cache or shared disk holds it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caopd.artifacts import MODEL_REF, MODEL_SUBDIR, WARMUP_CURVE
from caopd.store import read_json, write_json

log = logging.getLogger(__name__)



def model_dir(artifact: str | Path) -> Path:
    """The model directory of a base_model or distill artifact (``student/`` for distill).

    A model outside the artifact (``model_ref.json``: a hub snapshot or a local directory) is
    verified first: every file's sha256 against the digests recorded there.

    Raises:
        FileNotFoundError: the artifact holds no model.
        caopd.sources.SourceError: a referenced model file is missing, changed or new (named).
    """
    from caopd.sources import verify_digests

    artifact = Path(artifact)
    for sub in (MODEL_SUBDIR, "student"):
        if (artifact / sub / "config.json").is_file():
            return artifact / sub
    ref = artifact / MODEL_REF
    if ref.is_file():
        recorded = read_json(ref)
        directory = Path(recorded["directory"])
        verify_digests(directory, recorded["files"], str(ref))
        return directory
    raise FileNotFoundError(f"{artifact}: holds no model (no model/, student/ or {MODEL_REF})")


def tiny_config(cfg: Mapping[str, Any], tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=cfg["num_heads"],
        num_key_value_heads=cfg["num_kv_heads"],
        max_position_embeddings=cfg["max_positions"],
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )


def tokenizer_corpus(seed: int, levels, n: int = 3000) -> list[str]:
    """Texts the tokenizer is trained on: rendered warm-up prompts and responses."""
    from caopd.models.warmup import warmup_mixture

    texts = []
    for ex in warmup_mixture(n, seed=seed + 1, levels=levels):
        texts.extend(m["content"] for m in ex.messages)
        texts.append(ex.response)
    return texts


def build_tiny(params: Mapping[str, Any], out: Path, *, threads: int, tracker=None) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

    from caopd.models.tokenizer import check_roundtrip, save_tokenizer, train_tokenizer
    from caopd.models.warmup import train_warmup, warmup_mixture

    torch.set_num_threads(max(1, threads))
    seed = params["seed"]
    cfg = params["tiny"]
    levels = [1, 2, 3, 4, 5]
    corpus = tokenizer_corpus(seed, levels)
    tokenizer = train_tokenizer(corpus, cfg["vocab_size"])
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(cfg, tokenizer))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("tiny model: %d parameters, vocab %d", n_params, len(tokenizer))
    examples = warmup_mixture(cfg["warmup"]["examples"], seed=seed, levels=levels)
    induction: dict[str, Any] = {}
    curve = train_warmup(model, tokenizer, examples, cfg["warmup"], seed=seed, tracker=tracker, stats=induction)

    target = out / MODEL_SUBDIR
    model.save_pretrained(target, safe_serialization=True)
    save_tokenizer(tokenizer, target)
    samples = corpus[:50] + ["Level 3. What is 47 + 38?", "Confidence: 0.62", "<answer>B</answer>"]
    check_roundtrip(tokenizer, target, samples)
    reloaded = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    probe = torch.tensor([tokenizer(samples[0], add_special_tokens=False)["input_ids"][:32]])
    with torch.no_grad():
        if not torch.equal(model(probe).logits, reloaded(probe).logits):
            raise RuntimeError(f"{target}: the reloaded model computes different logits")
    write_json(out / WARMUP_CURVE, curve)
    return {
        "n_parameters": n_params,
        "vocab_size": len(tokenizer),
        "final_warmup_loss": curve[-1]["loss"] if curve else None,
        "tokenizer_roundtrip": "ok",
        **induction,
    }


def resolve_pretrained(params: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """Resolve a hub id or local path offline; record directory, revision and file hashes."""
    source, revision = params["source"], params.get("origin", {}).get("revision")
    path = Path(source)
    if path.is_dir():
        directory = path.resolve()
    else:
        from huggingface_hub import snapshot_download

        directory = Path(snapshot_download(source, revision=revision, local_files_only=True))
    from transformers import AutoConfig, AutoTokenizer

    from caopd.sources import directory_digests, verify_digests

    planned = params.get("origin", {}).get("files")
    if planned is not None:  # a local directory: its digests are in the key
        verify_digests(directory, planned, f"the plan of this key (model.source {source!r})")
    AutoConfig.from_pretrained(directory, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if tokenizer.chat_template is None:
        raise ValueError(f"{directory}: the tokenizer has no chat template; CaOPD prompts need one")
    files = directory_digests(directory)
    ref = {"source": source, "revision": revision, "directory": str(directory), "files": files}
    write_json(out / MODEL_REF, ref)
    return {"directory": str(directory), "n_files": len(files)}


def build_base_model(params: Mapping[str, Any], out: str | Path, *, threads: int = 1, tracker=None) -> dict[str, Any]:
    """Entry point of the base_model stage (workflow/scripts/base_model.py)."""
    out = Path(out)
    if params["source"] == "tiny":
        return build_tiny(params, out, threads=threads, tracker=tracker)
    return resolve_pretrained(params, out)


def run(job: Any) -> dict[str, Any]:
    """Stage ``base_model`` (the stage contract, :func:`caopd.job.run_stage`); the job is the
    warm-up's tracker."""
    return build_base_model(job.params, job.out, threads=job.threads, tracker=job)
