"""LoRA supervised fine-tuning of the local base model, tracked in MLflow.

The loss covers assistant tokens only: each conversation is rendered with the model's chat
template, every assistant turn's character span is found by rendering the conversation up to
that turn, and tokens outside those spans get label -100. The mask is never derived from the
pad id (SmolLM2's pad is its end-of-turn token, which the model must learn to emit).

Parameters use the names of Azure ML's ``chat_completion_pipeline`` component, so one
``FINETUNE_PARAMS`` setting drives both backends. This module imports torch only inside the
functions that train: ``resolve_params`` is safe to call from the app.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Local defaults: finish in about a minute on a 2-core CPU with SmolLM2 and visibly learn
# (see docs: r=8, batch 4, lr 1e-3, 30 steps takes the loss of a house style from ~3 to ~0.1).
LOCAL_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 1,
    "max_steps": 30,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "learning_rate": 1e-3,
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "lr_scheduler_type": "linear",
    "max_grad_norm": 1.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "max_seq_length": 256,
    "seed": 42,
    "apply_lora": "true",
    "merge_lora_weights": "true",
    "logging_steps": 1,
}
# Inputs of the Azure component that have no meaning on a single local CPU process. Giving one to
# the local backend is an error naming it (as an unknown input is for Azure ML), never silently
# dropped: the run would not be the one the settings describe.
AZURE_ONLY_PARAMS = frozenset({
    "instance_type_model_import", "instance_type_preprocess", "instance_type_finetune",
    "instance_type_model_evaluation", "shm_size_finetune", "num_nodes_finetune",
    "number_of_gpu_to_use_finetuning", "huggingface_id", "task_name", "batch_size",
    "pad_to_max_length", "auto_find_batch_size", "optim", "eval_accumulation_steps", "precision",
    "enable_full_determinism", "dataloader_num_workers", "ignore_mismatched_sizes",
    "evaluation_strategy", "evaluation_steps_interval", "eval_steps", "logging_strategy",
    "metric_for_best_model", "resume_from_checkpoint", "save_total_limit", "apply_early_stopping",
    "early_stopping_patience", "early_stopping_threshold", "apply_deepspeed", "deepspeed_stage",
    "apply_ort", "compute_model_import", "compute_preprocess", "compute_finetune",
    "compute_model_evaluation",
})
_SCHEDULES = {"linear", "constant", "cosine", "constant_with_warmup", "cosine_with_restarts", "polynomial"}
IGNORE_INDEX = -100


class ParamError(ValueError):
    """A fine-tune parameter is unknown or has the wrong type/value."""


class DataError(ValueError):
    """A training or test file is not a valid chat JSONL file."""


def _coerce(name: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool) or (isinstance(default, str) and default in {"true", "false"}):
            text = str(value).strip().lower()
            if text not in {"true", "false"}:
                raise ValueError
            return text
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ParamError(f"fine-tune parameter {name}={value!r} is not a valid {type(default).__name__}") from None


def resolve_params(*overrides: dict[str, Any]) -> dict[str, Any]:
    """Local defaults overlaid with each override in turn.

    Raises ParamError for a name that is not a local parameter (an Azure-only component input
    included: it says so), or a value of the wrong type.
    """
    params = dict(LOCAL_DEFAULTS)
    for override in overrides:
        for name, value in (override or {}).items():
            if name in LOCAL_DEFAULTS:
                params[name] = _coerce(name, value, LOCAL_DEFAULTS[name])
            elif name in AZURE_ONLY_PARAMS:
                raise ParamError(f"fine-tune parameter {name!r} is an Azure ML component input with no meaning on the "
                                 "local workspace; remove it (or use ML_BACKEND=azureml)")
            else:
                known = ", ".join(sorted(LOCAL_DEFAULTS))
                raise ParamError(f"unknown fine-tune parameter {name!r}; the local workspace takes: {known}")
    checks = [
        ("num_train_epochs", params["num_train_epochs"] >= 1),
        ("per_device_train_batch_size", params["per_device_train_batch_size"] >= 1),
        ("per_device_eval_batch_size", params["per_device_eval_batch_size"] >= 1),
        ("gradient_accumulation_steps", params["gradient_accumulation_steps"] >= 1),
        ("learning_rate", params["learning_rate"] > 0),
        ("lora_r", params["lora_r"] >= 1),
        ("lora_alpha", params["lora_alpha"] >= 1),
        ("lora_dropout", 0.0 <= params["lora_dropout"] < 1.0),
        ("max_seq_length", params["max_seq_length"] == -1 or params["max_seq_length"] >= 16),
        ("lr_scheduler_type", params["lr_scheduler_type"] in _SCHEDULES),
        ("apply_lora", params["apply_lora"] == "true"),  # full fine-tuning is not offered locally
    ]
    for name, ok in checks:
        if not ok:
            raise ParamError(f"fine-tune parameter {name}={params[name]!r} is out of range")
    return params


# --- data -------------------------------------------------------------------------------

def load_conversations(path: str | Path) -> list[list[dict[str, str]]]:
    """Conversations (``messages`` lists) of a chat JSONL file; DataError names the first bad line."""
    conversations: list[list[dict[str, str]]] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{Path(path).name} line {number}: not valid JSON ({exc.msg})") from None
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list) or not messages:
                raise DataError(f"{Path(path).name} line {number}: no 'messages' list")
            for m in messages:
                if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise DataError(f"{Path(path).name} line {number}: every message needs string 'role' and 'content'")
            if not any(m["role"] == "assistant" for m in messages):
                raise DataError(f"{Path(path).name} line {number}: no assistant message to learn from")
            conversations.append([{"role": m["role"], "content": m["content"]} for m in messages])
    if not conversations:
        raise DataError(f"{Path(path).name}: no conversations")
    return conversations


def encode_conversation(tokenizer: Any, messages: list[dict[str, str]], max_len: int) -> tuple[list[int], list[int]] | None:
    """Token ids and labels (assistant tokens only, incl. their end-of-turn); None if nothing to learn."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)) if i else 0
        prefix = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(prefix):
            raise DataError("chat template does not render conversations incrementally; cannot find assistant spans")
        end = len(prefix.rstrip())  # the turn's text and end-of-turn token, not the newline after it
        spans.append((start, end))
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    ids: list[int] = enc["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        if b > a and any(s <= a < e for s, e in spans):
            labels[t] = ids[t]
    if max_len > 0:
        ids, labels = ids[:max_len], labels[:max_len]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return ids, labels


def _batches(examples: list[tuple[list[int], list[int]]], size: int, pad_id: int):  # noqa: ANN202
    import torch

    for i in range(0, len(examples), size):
        chunk = examples[i : i + size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, lab) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(lab)] = torch.tensor(lab)
            attention[row, : len(ids)] = 1
        yield {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def evaluate_loss(model: Any, examples: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int) -> float:
    """Mean cross-entropy per assistant token over ``examples``."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in _batches(examples, batch_size, pad_id):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1))
            shift_labels = batch["labels"][:, 1:].reshape(-1)
            total += F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((shift_labels != IGNORE_INDEX).sum())
    return total / max(count, 1)


@dataclasses.dataclass
class FinetuneResult:
    model: Any  # merged transformers model
    tokenizer: Any
    metrics: dict[str, float]
    steps: int
    train_examples: int
    seconds_per_step: float


def finetune(
    base_dir: str | Path,
    train: list[list[dict[str, str]]],
    test: list[list[dict[str, str]]],
    params: dict[str, Any],
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    evaluate: bool = True,
) -> FinetuneResult:
    """LoRA SFT of the model in ``base_dir``: eval before, train, eval after, merge."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    seed = int(params["seed"])
    random.seed(seed)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    max_len = int(params["max_seq_length"])

    def encode_all(convs: list[list[dict[str, str]]]) -> list[tuple[list[int], list[int]]]:
        return [e for e in (encode_conversation(tokenizer, c, max_len) for c in convs) if e is not None]

    train_ex, test_ex = encode_all(train), encode_all(test)
    if not train_ex:
        raise DataError("no training conversation has an assistant token within max_seq_length")
    metrics: dict[str, float] = {}
    eval_bs = int(params["per_device_eval_batch_size"])
    if evaluate and test_ex:
        metrics["base_test_loss"] = evaluate_loss(model, test_ex, eval_bs, pad_id)
        log.info("base model test loss %.4f on %d conversations", metrics["base_test_loss"], len(test_ex))

    lora = LoraConfig(
        r=int(params["lora_r"]), lora_alpha=int(params["lora_alpha"]), lora_dropout=float(params["lora_dropout"]),
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    batch_size = int(params["per_device_train_batch_size"])
    accumulation = int(params["gradient_accumulation_steps"])
    batches_per_epoch = math.ceil(len(train_ex) / batch_size)
    steps_per_epoch = max(1, batches_per_epoch // accumulation)
    total_steps = int(params["max_steps"]) if int(params["max_steps"]) > 0 else steps_per_epoch * int(params["num_train_epochs"])
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=float(params["learning_rate"]),
        betas=(float(params["adam_beta1"]), float(params["adam_beta2"])), eps=float(params["adam_epsilon"]),
        weight_decay=float(params["weight_decay"]),
    )
    scheduler = get_scheduler(params["lr_scheduler_type"], optimizer, num_warmup_steps=int(params["warmup_steps"]), num_training_steps=total_steps)
    rng = random.Random(seed)

    def endless_batches():  # noqa: ANN202 - reshuffled every epoch, as many epochs as max_steps needs
        while True:
            order = list(train_ex)
            rng.shuffle(order)
            yield from _batches(order, batch_size, pad_id)

    model.train()
    batches = endless_batches()
    started = time.perf_counter()
    step_loss = 0.0
    for step in range(1, total_steps + 1):
        step_loss = 0.0
        for _ in range(accumulation):
            out = model(**next(batches))
            (out.loss / accumulation).backward()
            step_loss += out.loss.item() / accumulation
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(params["max_grad_norm"]))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step and (step % int(params["logging_steps"]) == 0 or step == total_steps):
            on_step(step, {"train_loss": step_loss, "learning_rate": scheduler.get_last_lr()[0]})
    elapsed = time.perf_counter() - started
    metrics["train_loss"] = step_loss
    metrics["train_seconds"] = elapsed
    if evaluate and test_ex:
        metrics["test_loss"] = evaluate_loss(model, test_ex, eval_bs, pad_id)
        log.info("fine-tuned test loss %.4f", metrics["test_loss"])
    merged = model.merge_and_unload()
    merged.eval()
    return FinetuneResult(merged, tokenizer, metrics, total_steps, len(train_ex), elapsed / max(total_steps, 1))


# --- MLflow -------------------------------------------------------------------------------

def _pip_requirements() -> list[str]:
    # Given explicitly so that MLflow does not load the model in a subprocess to infer them.
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("mlflow", "torch", "transformers", "accelerate", "tokenizers"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            pass
    return reqs


def run_finetune_job(
    *,
    job_name: str,
    tracking_uri: str,
    artifact_root: str,
    experiment_name: str,
    base_dir: str | Path,
    base_model_name: str,
    train_path: str | Path,
    test_path: str | Path,
    params: dict[str, Any],
    tags: dict[str, str] | None = None,
    on_progress: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """The whole job: MLflow run with params, per-step metrics, eval losses and the chat model."""
    import mlflow

    train = load_conversations(train_path)
    test = load_conversations(test_path)
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = ensure_experiment(experiment_name, artifact_root)
    run_tags = {"job": job_name, "base_model": base_model_name, **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=job_name, tags=run_tags) as run:
        mlflow.log_params({**params, "base_model": base_model_name, "train_conversations": len(train), "test_conversations": len(test)})

        def on_step(step: int, values: dict[str, float]) -> None:
            mlflow.log_metrics(values, step=step)
            log.info("step %d train_loss %.4f", step, values["train_loss"])
            if on_progress is not None:
                on_progress(step, values["train_loss"])

        result = finetune(base_dir, train, test, params, on_step=on_step)
        mlflow.log_metrics({k: v for k, v in result.metrics.items() if k != "train_loss"})
        info = mlflow.transformers.log_model(
            transformers_model={"model": result.model, "tokenizer": result.tokenizer},
            name="model", task="llm/v1/chat", pip_requirements=_pip_requirements(),
        )
        return {
            "run_id": run.info.run_id,
            "experiment_id": experiment_id,
            "model_uri": info.model_uri,
            "metrics": result.metrics,
            "steps": result.steps,
            "seconds_per_step": result.seconds_per_step,
        }


def ensure_experiment(name: str, artifact_root: str) -> str:
    """Experiment id (created with a file artifact root; tolerates a concurrent creator)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_root)
    except MlflowException:
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
