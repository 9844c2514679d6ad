"""Load, validate and resolve the workflow configuration.

The schema at ``workflow/schemas/config.schema.yaml`` is the one source of defaults. ``resolve``
fills them in, rejects unknown keys and out-of-range values with a message naming the key, merges
each variant's overrides into the base config and validates the merged result the same way.
An ``integer`` is an integer (``8.0`` is refused: it would change a key, then fail in a job).

Each resolved variant is also checked against the disk (:func:`check_sources`): every data path
exists or names a dataset in the local Hugging Face cache, ``model.source`` is ``tiny``, a local
model directory or a model in that cache, and a task that reads files has a train path wherever
it trains. So a config that cannot run is refused at load, naming the key, before any job.

Used by the Snakefile at parse time, so this module imports nothing heavy::

    from caopd.config import resolve
    resolved = resolve(config)          # {"base": {...}, "variants": {name: full config}}
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"

#: Names a variant may not take: they are Snakemake rule names of the workflow.
RESERVED_VARIANT_NAMES = frozenset(
    {
        "all",
        "prepare_data",
        "base_model",
        "rollouts",
        "teacher_rollouts",
        "targets",
        "rewrite",
        "distill",
        "eval_rollouts",
        "evaluate",
        "plots",
        "index",
        "compare",
    }
)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what to change."""


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _with_defaults(validator_class: type) -> type:
    """A validator that fills ``default`` values of absent properties while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # noqa: ANN001
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _strict_integer(checker, instance) -> bool:  # noqa: ANN001 - jsonschema's signature
    """JSON Schema calls ``8.0`` an integer; a YAML ``8.0`` is a float here, and refused."""
    return isinstance(instance, int) and not isinstance(instance, bool)


_Strict = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer),
)
_Validator = _with_defaults(_Strict)


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError, where: str) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        keys = ", ".join(
            f"'{_key_path(error) + '.' if error.absolute_path else ''}{k}'" for k in extra
        )
        return f"{where}: unknown key {keys}; allowed here: {', '.join(allowed)}"
    return f"{where}: key '{_key_path(error)}': {error.message}"


def validate(config: dict[str, Any], *, where: str = "config", schema: Mapping | None = None) -> dict:
    """Fill defaults into ``config`` (in place) and validate it; raise :class:`ConfigError`."""
    schema = load_schema() if schema is None else schema
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("\n".join(_describe(e, where) for e in errors))
    _check_combinations(config, where)
    return config


def _check_combinations(cfg: Mapping[str, Any], where: str) -> None:
    """Cross-field rules the schema cannot express."""
    tiny = cfg.get("model", {}).get("tiny", {})
    if tiny and tiny["hidden_size"] % tiny["num_heads"]:
        raise ConfigError(
            f"{where}: key 'model.tiny.hidden_size' ({tiny['hidden_size']}) must be a multiple of "
            f"'model.tiny.num_heads' ({tiny['num_heads']})"
        )
    if tiny and tiny["num_heads"] % tiny["num_kv_heads"]:
        raise ConfigError(
            f"{where}: key 'model.tiny.num_heads' ({tiny['num_heads']}) must be a multiple of "
            f"'model.tiny.num_kv_heads' ({tiny['num_kv_heads']})"
        )
    if "distill" in cfg and "model" in cfg:  # issue 15: sharding / LoRA / checkpointing
        problem = layout_problem(cfg)
        if problem:
            raise ConfigError(f"{where}: {problem}")
    ev = cfg.get("evaluation", {})
    if ev and ev["greedy"] and ev["n_samples"] != 1:
        raise ConfigError(
            f"{where}: key 'evaluation.n_samples' is {ev['n_samples']} but 'evaluation.greedy' is "
            "true; set greedy: false for sampled evaluation, or n_samples: 1"
        )
    if ev and ev["engine"] != "hf" and ev["greedy"] and ev["expected_confidence"]:
        raise ConfigError(
            f"{where}: key 'evaluation.expected_confidence' is true but 'evaluation.engine' is "
            f"{ev['engine']!r}: the expected confidence reads the model's token probabilities "
            "through the hf engine; set expected_confidence: false or engine: hf"
        )
    task = cfg.get("task", {})
    if task and task["name"] == "arith":
        given = [split for split, path in task["paths"].items() if path is not None]
        if given:
            raise ConfigError(
                f"{where}: key 'task.paths.{given[0]}' is set, but task 'arith' generates its data "
                "and reads no files; remove task.paths (or choose task.name science / tooluse)"
            )
    if ev and task and ev["split"] == "val" and task["sizes"]["val"] == 0:
        raise ConfigError(
            f"{where}: key 'evaluation.split' is 'val' but 'task.sizes.val' is 0: there is no "
            "validation split to evaluate on"
        )
    if task and task["name"] != "arith":
        if not task["paths"]["eval"]:
            raise ConfigError(
                f"{where}: key 'task.paths.eval' is required for task '{task['name']}'"
            )
    weights = task.get("arith", {}).get("level_weights") if task else None
    if weights is not None and len(weights) != len(task["arith"]["levels"]):
        raise ConfigError(
            f"{where}: key 'task.arith.level_weights' has {len(weights)} entries but "
            f"'task.arith.levels' has {len(task['arith']['levels'])}"
        )
    rollouts, rewrite = cfg.get("rollouts", {}), cfg.get("rewrite", {})
    if rollouts and rewrite and rewrite["max_completion_length"] < rollouts["max_new_tokens"] + 8:
        raise ConfigError(
            f"{where}: key 'rewrite.max_completion_length' ({rewrite['max_completion_length']}) must be "
            f"at least 'rollouts.max_new_tokens' + 8 ({rollouts['max_new_tokens'] + 8}): the rewrite "
            "keeps the 'Confidence: x' target and EOS of a length-capped rollout by dropping its work "
            "instead, so the work of most rollouts would be cut short"
        )
    distill = cfg.get("distill", {})
    if distill and rollouts and distill["schedule"] == "online":
        per_step = distill["batch_size"] * distill["grad_accum"]
        if per_step % rollouts["k"]:
            raise ConfigError(
                f"{where}: key 'distill.batch_size' × 'distill.grad_accum' ({per_step} examples per "
                f"optimizer step) must be a multiple of 'rollouts.k' ({rollouts['k']}) when "
                "'distill.schedule' is 'online': an online step trains whole prompt groups"
            )
        if rollouts["prefix_source"] != "student":
            raise ConfigError(
                f"{where}: key 'rollouts.prefix_source' is {rollouts['prefix_source']!r} but "
                "'distill.schedule' is 'online', which samples the student inside the distill job; "
                "teacher prefixes are sampled by the teacher_rollouts stage of the rounds schedule: "
                "use schedule: rounds, or prefix_source: student"
            )
        if rollouts["engine"] != "hf":
            raise ConfigError(
                f"{where}: key 'rollouts.engine' is {rollouts['engine']!r} but 'distill.schedule' "
                "'online' samples from the student in training with the hf engine; use "
                "engine: hf, or schedule: rounds for vLLM rollouts"
            )
    if distill and rollouts:
        from caopd.objective_config import objective_problem  # issue 18

        problem = objective_problem(cfg)
        if problem:
            raise ConfigError(f"{where}: {problem}")
    if distill and distill["rounds"] > 0 and task and task["sizes"]["train"] is None:
        raise ConfigError(
            f"{where}: key 'task.sizes.train' is null but 'distill.rounds' is {distill['rounds']}: "
            "the plan splits the training prompts over the rounds, so give their number (at most "
            "the rows of task.paths.train)"
        )
    if distill and distill["rounds"] > 0 and task and task["sizes"]["train"] is not None:
        if task["sizes"]["train"] < distill["rounds"]:
            raise ConfigError(
                f"{where}: key 'task.sizes.train' ({task['sizes']['train']}) is smaller than "
                f"'distill.rounds' ({distill['rounds']}): every round needs at least one prompt"
            )


def layout_problem(cfg: Mapping[str, Any]) -> str | None:
    """Why a resolved variant's sharding / LoRA / checkpointing cannot run, or None."""
    distill, lora = cfg["distill"], cfg["model"].get("lora")
    fsdp = distill.get("sharding", "none") == "fsdp2"
    if fsdp and distill["processes"] < 2:
        return "key 'distill.sharding' is fsdp2 with 'distill.processes' 1: sharding needs >= 2 processes"
    if fsdp and distill["schedule"] == "online":
        return ("key 'distill.sharding' is fsdp2 with 'distill.schedule' online: online rounds sample "
                "from the student in the main process alone; use sharding: none (DDP)")
    if fsdp and lora is not None:
        return ("keys 'distill.sharding' fsdp2 and 'model.lora' together: LoRA runs unsharded (the "
                "frozen base in bf16/fp32 fits one GPU; use distill.processes for data parallelism)")
    if lora is not None and distill["rounds"] > 1:
        return (f"key 'model.lora' with 'distill.rounds' {distill['rounds']}: LoRA trains one round "
                "(its teacher shares the round's base weights)")
    if distill.get("gradient_checkpointing") and distill["batching"] == "prompt_groups":
        return ("key 'distill.gradient_checkpointing' with 'distill.batching' prompt_groups: the shared "
                "prompt prefixes need the KV cache, which gradient checkpointing turns off")
    return None


def check_sources(cfg: Mapping[str, Any], where: str) -> None:
    """Check a resolved variant against the disk; raise :class:`ConfigError` naming the key.

    - a file-backed task (science, tooluse) that trains (``distill.rounds`` > 0) needs
      ``task.paths.train`` (its prompts are the rollouts' prompts);
    - every ``task.paths.*`` exists (relative to the working directory) or is a dataset in the
      local Hugging Face cache;
    - ``model.source`` other than ``tiny`` is a local model directory or a model (at
      ``model.revision``) in the local Hugging Face cache: nothing is downloaded at run time;
    - ``distill.accelerate_config`` is a readable accelerate config (relative to the checkout)
      that runs ``distill.processes`` processes (:func:`caopd.resources.accelerate_problem`).
    """
    from caopd.sources import source_error

    task = cfg["task"]
    if task["name"] != "arith" and cfg["distill"]["rounds"] > 0 and not task["paths"]["train"]:
        raise ConfigError(
            f"{where}: key 'task.paths.train' is required for task '{task['name']}' when "
            f"'distill.rounds' is {cfg['distill']['rounds']}: training samples its rollouts from "
            "the train split (set distill.rounds: 0 to only evaluate)"
        )
    for split, path in task["paths"].items():
        if path is not None:
            problem = source_error(path, kind="dataset")
            if problem:
                raise ConfigError(f"{where}: key 'task.paths.{split}': {problem}")
    from caopd.resources import accelerate_problem

    problem = accelerate_problem(cfg["distill"])
    if problem:
        raise ConfigError(f"{where}: key 'distill.accelerate_config': {problem}")
    source = cfg["model"]["source"]
    if source != "tiny":
        problem = source_error(source, kind="model", revision=cfg["model"]["revision"])
        if problem:
            raise ConfigError(f"{where}: key 'model.source': {problem}")


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in recursively (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve(config: Mapping[str, Any], *, check_disk: bool = True) -> dict[str, Any]:
    """Validate ``config`` and every variant; return ``{"base": cfg, "variants": {name: cfg}}``.

    Each variant's config is the base config (as written, before defaults) with the variant's
    overrides merged in, then validated and defaulted, then (``check_disk``) checked against the
    disk (:func:`check_sources`); it has no ``variants`` key.
    """
    raw = copy.deepcopy(dict(config))
    base = validate(copy.deepcopy(raw), where="config")
    variants: dict[str, dict[str, Any]] = {}
    raw_without_variants = {k: v for k, v in raw.items() if k != "variants"}
    for name, overrides in base["variants"].items():
        if name in RESERVED_VARIANT_NAMES:
            raise ConfigError(
                f"config: variant name '{name}' is a rule name of the workflow; rename it "
                f"(reserved: {', '.join(sorted(RESERVED_VARIANT_NAMES))})"
            )
        if "variants" in (overrides or {}):
            raise ConfigError(f"config: key 'variants.{name}.variants': variants do not nest")
        merged = deep_merge(raw_without_variants, overrides or {})
        merged["variants"] = {name: {}}
        resolved = validate(merged, where=f"variant '{name}'")
        del resolved["variants"]
        if check_disk:
            check_sources(resolved, f"variant '{name}'")
        variants[name] = resolved
    return {"base": base, "variants": variants}


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and :func:`resolve` it."""
    with open(path, encoding="utf-8") as fh:
        return resolve(yaml.safe_load(fh) or {})
