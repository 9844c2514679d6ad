"""The ``hf`` rollout engine: batched ``transformers`` ``generate`` on CPU or GPU.

Prompts are rendered with the tokenizer's chat template, sorted by length (longest first, to
limit padding and to hit an out-of-memory in the first batch rather than the last), expanded to
``n`` rows each (prompt repeated; no ``num_return_sequences``, so one prompt's samples may span
two batches), cut into batches of at most ``batch_size`` rows, left-padded and decoded with a KV
cache. Records come back in input order.

Seeding: ``torch.manual_seed(seed + batch_index)`` before each batch. The same prompts, config
(including ``batch_size``) and seed on the same machine and library versions give identical
records; changing the batch composition (batch size, prompt set) changes the random stream of
the samples. Greedy decoding does not depend on the seed.

Generation settings are explicit: the checkpoint's ``generation_config.json`` sampling defaults
(e.g. Qwen3's ``top_k=20``, ``temperature=0.6``) are not applied — top-k is off, repetition
penalties are off, and temperature/top_p come from :class:`SamplingConfig` only. Stop ids are the
tokenizer's eos plus the checkpoint generation config's eos ids (Qwen: ``<|im_end|>`` and
``<|endoftext|>``), which is what vLLM stops on too. The pad token is suppressed during sampling
when it is not itself a stop id (a pad is not a real token, and a sampled pad would be
indistinguishable from padding downstream).

Precision: ``dtype="auto"`` loads bfloat16 weights on CUDA and float32 on CPU; no autocast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from caopd.rollouts.engine import Prompt, RolloutRecord, SamplingConfig
from caopd.rollouts.prompting import encode_checked, resolve_stop_ids

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def plan_batches(lengths: Sequence[int], n: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """Group ``(prompt_index, sample_index)`` rows into batches of at most ``batch_size``.

    Prompts are taken longest first (ties by input index), each expanded to ``n`` consecutive
    rows; the row list is then cut every ``batch_size`` rows. Deterministic in its inputs.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows = [(p, j) for p in order for j in range(n)]
    return [rows[k : k + batch_size] for k in range(0, len(rows), batch_size)]


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """Left-pad token id lists into ``(input_ids, attention_mask)``, both ``LongTensor[B, L]``.

    ``L`` is the longest sequence; padded positions hold ``pad_id`` and mask 0.
    """
    import torch

    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, width - len(seq) :] = 1
    return input_ids, attention_mask


def trim_completion(generated: Sequence[int], stop_ids: set[int], max_new_tokens: int) -> tuple[list[int], str]:
    """Cut one generated row after its first stop id.

    Args:
        generated: the row's ids after the prompt, ``[T]`` with ``T <= max_new_tokens``; after a
            stop id ``generate`` fills the row with pad ids.
        stop_ids: ids that end a completion (eos ids).
        max_new_tokens: the cap used for generation.

    Returns:
        ``(ids, "stop")`` with ids up to and including the first stop id, or the full row and
        ``"length"`` when there is no stop id.
    """
    for i, token in enumerate(generated):
        if token in stop_ids:
            return list(generated[: i + 1]), "stop"
    if len(generated) != max_new_tokens:
        raise RuntimeError(
            f"generated row has {len(generated)} tokens, no stop id and max_new_tokens={max_new_tokens}"
        )
    return list(generated), "length"


def resolve_device(device: str) -> Any:
    """``"auto"`` -> CUDA when available, else CPU; anything else -> ``torch.device(device)``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: Any) -> Any:
    """``"auto"`` -> bfloat16 on CUDA, float32 elsewhere; else one of float32/bfloat16/float16."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
    return getattr(torch, _DTYPES[dtype])


class HFEngine:
    """Rollouts with ``AutoModelForCausalLM.generate``; see the module docstring for the policy.

    Args:
        model_path: a local directory (or hub id) with model and chat-template tokenizer.
        dtype: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"float32"``, ``"bfloat16"``, ``"float16"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        chat_template_kwargs: extra variables for the chat template (e.g. ``enable_thinking``).
        progress: show a tqdm bar on stderr.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        chat_template_kwargs: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = model_path
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.progress = progress
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype)
        self._bind(model.to(self.device).eval(), tokenizer)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        chat_template_kwargs: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> HFEngine:
        """An engine over a model already in memory, on its own device and dtype.

        Online distillation samples from the student it is training
        (:mod:`caopd.training.online`): ``generate`` puts the model in eval mode for the call
        and restores its training flag and its ``generation_config`` afterwards, so nothing of
        the engine is left on the model that is saved later.
        """
        engine = cls.__new__(cls)
        engine.model_path = getattr(model, "name_or_path", "<in memory>")
        engine.device = next(model.parameters()).device
        engine.dtype = next(model.parameters()).dtype
        engine.chat_template_kwargs = dict(chat_template_kwargs or {})
        engine.progress = progress
        engine._bind(model, tokenizer)
        return engine

    def _bind(self, model: Any, tokenizer: Any) -> None:
        """Stop ids, pad id and the explicit generation defaults of ``model`` (module docstring)."""
        from transformers import GenerationConfig

        self.tokenizer = tokenizer
        self.model = model
        self.stop_token_ids: list[int] = resolve_stop_ids(
            self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id
        )
        pad = self.tokenizer.pad_token_id
        self.pad_token_id: int = int(pad) if pad is not None else self.stop_token_ids[0]
        # Only token ids from the checkpoint's generation config are used, so that none of its
        # sampling defaults (top_k, temperature, repetition_penalty...) leak into generate():
        # generate() puts these defaults on the model for the duration of the call.
        self.checkpoint_generation_config = self.model.generation_config
        self._generation_defaults = GenerationConfig(
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.checkpoint_generation_config.bos_token_id,
        )
        self.max_positions: int | None = getattr(self.model.config, "max_position_embeddings", None)

    def generation_config(self, config: SamplingConfig) -> Any:
        """The fully explicit ``transformers.GenerationConfig`` for ``config``."""
        from transformers import GenerationConfig

        suppress = None if self.pad_token_id in self.stop_token_ids else [self.pad_token_id]
        sampling: dict[str, Any] = {"do_sample": False}
        if not config.greedy:
            sampling = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": 0}
        return GenerationConfig(
            max_new_tokens=config.max_new_tokens,
            num_beams=1,
            num_return_sequences=1,
            use_cache=True,
            eos_token_id=self.stop_token_ids,
            pad_token_id=self.pad_token_id,
            suppress_tokens=suppress,
            repetition_penalty=1.0,
            **sampling,
        )

    @contextlib.contextmanager
    def _generating(self) -> Iterator[None]:
        """Eval mode and the explicit generation defaults for one ``generate`` call; the
        model's training flag and its own ``generation_config`` are restored afterwards."""
        saved_config, was_training = self.model.generation_config, self.model.training
        self.model.generation_config = self._generation_defaults
        self.model.eval()
        try:
            yield
        finally:
            self.model.generation_config = saved_config
            self.model.train(was_training)

    def encode_prompts(self, prompts: Sequence[Prompt], max_new_tokens: int = 0) -> list[list[int]]:
        """Chat-templated token ids of each prompt, generation prompt added, checked to fit."""
        return encode_checked(self.tokenizer, prompts, max_new_tokens, self.max_positions, **self.chat_template_kwargs)

    def generate(self, prompts: Sequence[Prompt], config: SamplingConfig, seed: int) -> list[RolloutRecord]:
        """``config.n`` records per prompt, in input order (prompt, then sample index)."""
        import torch
        from tqdm import tqdm

        prompt_ids = self.encode_prompts(prompts, config.max_new_tokens)
        generation_config = self.generation_config(config)
        batches = plan_batches([len(ids) for ids in prompt_ids], config.n, config.batch_size)
        completions: dict[tuple[int, int], tuple[list[int], str]] = {}
        bar = tqdm(
            total=len(prompts) * config.n,
            desc="rollouts",
            unit="seq",
            file=sys.stderr,
            disable=not self.progress,
        )
        with torch.inference_mode(), bar, self._generating():
            for batch_index, rows in enumerate(batches):
                torch.manual_seed(seed + batch_index)
                input_ids, attention_mask = left_pad([prompt_ids[p] for p, _ in rows], self.pad_token_id)
                output = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention_mask.to(self.device),
                    generation_config=generation_config,
                )
                generated = output[:, input_ids.shape[1] :].tolist()
                for (p, j), row in zip(rows, generated):
                    completions[p, j] = trim_completion(row, set(self.stop_token_ids), config.max_new_tokens)
                bar.update(len(rows))

        records = []
        for p, (prompt_id, _) in enumerate(prompts):
            for j in range(config.n):
                ids, finish = completions[p, j]
                records.append(
                    RolloutRecord(
                        prompt_id=prompt_id,
                        sample_index=j,
                        prompt_token_ids=prompt_ids[p],
                        completion_token_ids=ids,
                        text=self.tokenizer.decode(ids, skip_special_tokens=True),
                        finish_reason=finish,  # type: ignore[arg-type]
                        seed=seed,
                    )
                )
        return records
