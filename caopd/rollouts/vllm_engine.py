"""The ``vllm`` rollout engine: ``vllm.LLM`` with ``SamplingParams(n=K)``; GPU only, optional.

vLLM is imported inside :class:`VLLMEngine` so that this module (and the registry) import
without it; install it with ``pip install caopd[vllm]``.

Prompts are rendered to token ids with the model's own Hugging Face tokenizer and chat template
(the same code path as the ``hf`` engine) and passed as token prompts, so both engines see
identical prompt ids. Completion text is decoded with that tokenizer too
(``skip_special_tokens=True``); vLLM's detokenizer is switched off.

Seeding: each prompt gets its own seed, ``sha256(f"{seed}:{prompt_id}")`` folded to 31 bits, and
vLLM gives its ``n`` child samples ``prompt_seed + index``. Records are therefore reproducible
from ``(seed, prompt_id)`` alone, independent of batch composition and order (on the same GPU,
vLLM version and parallel layout).

Stop ids and pad handling follow the ``hf`` engine: stop on the tokenizer's eos plus the
checkpoint generation config's eos ids (passed explicitly as ``stop_token_ids``), and a pad token
that is not a stop id gets a logit bias of -100 so it is never sampled. Checkpoint sampling
defaults are not applied (vLLM uses them only when no ``SamplingParams`` are given).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from caopd.rollouts.engine import Prompt, RolloutRecord, SamplingConfig
from caopd.rollouts.prompting import encode_checked, resolve_stop_ids

_INSTALL_HINT = (
    "the 'vllm' rollout engine needs vLLM (GPU only): pip install caopd[vllm] "
    "(or set rollouts engine: hf)"
)


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A per-prompt seed in ``[0, 2**31)`` derived from the call seed and the prompt id."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class VLLMEngine:
    """Rollouts with ``vllm.LLM.generate``.

    Args:
        model_path: a local directory (or hub id) with model and chat-template tokenizer.
        tensor_parallel_size: GPUs per model replica.
        gpu_memory_utilization: share of GPU memory vLLM may take (weights + KV cache).
        dtype: weight/compute dtype passed to vLLM (``"bfloat16"``, ``"float16"``, ``"float32"``, ``"auto"``).
        chat_template_kwargs: extra variables for the chat template (e.g. ``enable_thinking``).
        progress: show vLLM's progress bar.
        **llm_kwargs: passed to ``vllm.LLM`` (``max_model_len``, ``enforce_eager``, ``seed``...).
    """

    def __init__(
        self,
        model_path: str,
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        dtype: str = "bfloat16",
        chat_template_kwargs: dict[str, Any] | None = None,
        progress: bool = True,
        **llm_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as err:
            raise ImportError(_INSTALL_HINT) from err
        from transformers import AutoTokenizer, GenerationConfig

        self.model_path = model_path
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.progress = progress
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        try:
            checkpoint_eos = GenerationConfig.from_pretrained(model_path).eos_token_id
        except OSError:  # no generation_config.json
            checkpoint_eos = None
        self.stop_token_ids: list[int] = resolve_stop_ids(self.tokenizer.eos_token_id, checkpoint_eos)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id: int = int(pad) if pad is not None else self.stop_token_ids[0]
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=model_path,
            tokenizer=model_path,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            **llm_kwargs,
        )
        model_config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        self.max_model_len: int | None = getattr(model_config, "max_model_len", None)

    def sampling_params(self, config: SamplingConfig, seed: int) -> Any:
        """``vllm.SamplingParams`` for one prompt (``seed`` is that prompt's seed)."""
        logit_bias = None if self.pad_token_id in self.stop_token_ids else {self.pad_token_id: -100.0}
        return self._vllm.SamplingParams(
            n=config.n,
            temperature=0.0 if config.greedy else config.temperature,
            top_p=1.0 if config.greedy else config.top_p,
            max_tokens=config.max_new_tokens,
            seed=None if config.greedy else seed,
            stop_token_ids=list(self.stop_token_ids),
            logit_bias=logit_bias,
            detokenize=False,
        )

    def encode_prompts(self, prompts: Sequence[Prompt], max_new_tokens: int = 0) -> list[list[int]]:
        """Chat-templated token ids of each prompt, generation prompt added, checked to fit."""
        return encode_checked(self.tokenizer, prompts, max_new_tokens, self.max_model_len, **self.chat_template_kwargs)

    def generate(self, prompts: Sequence[Prompt], config: SamplingConfig, seed: int) -> list[RolloutRecord]:
        """``config.n`` records per prompt, in input order (prompt, then sample index)."""
        prompt_ids = self.encode_prompts(prompts, config.max_new_tokens)
        params = [self.sampling_params(config, prompt_seed(seed, prompt_id)) for prompt_id, _ in prompts]
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids],
            params,
            use_tqdm=self.progress,
        )
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")

        records = []
        for (prompt_id, _), ids, output in zip(prompts, prompt_ids, outputs):
            samples = sorted(output.outputs, key=lambda o: o.index)
            if [o.index for o in samples] != list(range(config.n)):
                raise RuntimeError(f"vLLM returned samples {[o.index for o in samples]} for prompt {prompt_id!r}")
            for sample in samples:
                finish = sample.finish_reason
                if finish not in ("stop", "length"):
                    raise RuntimeError(f"vLLM finished prompt {prompt_id!r} with {finish!r}")
                completion = [int(t) for t in sample.token_ids]
                records.append(
                    RolloutRecord(
                        prompt_id=prompt_id,
                        sample_index=sample.index,
                        prompt_token_ids=ids,
                        completion_token_ids=completion,
                        text=self.tokenizer.decode(completion, skip_special_tokens=True),
                        finish_reason=finish,
                        seed=seed,
                    )
                )
        return records
