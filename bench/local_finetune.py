"""Benchmark: the local workspace's LoRA fine-tune beside TRL's SFTTrainer, same steps, same CPU.

``python bench/local_finetune.py [--model smollm2|tiny-random] [--steps 20] [--batch 4]
[--examples 200] [--max-seq-length 128]``

Each trainer runs in its own subprocess (so peak RSS is its own) on the same house-style
conversations, the same LoRA (r, alpha, q/k/v/o projections), batch, learning rate and
assistant-only loss. TRL runs with ``bf16=False`` (its default bf16 is many times slower on
CPU) and, by default, without gradient checkpointing (on in its SFTConfig defaults: it trades
~1.5x time for memory; ``--trl-gradient-checkpointing on`` measures that). Printed: seconds
per step (steady state: first step excluded), examples per second, peak RSS, final train
loss, and the ratios TRL / ours.

Measured on the 2-core development CPU (SmolLM2, 20 steps, batch 4, max_seq_length 128, load ~2):
ours 2.73 s/step, 1.46 examples/s, 1711 MB; TRL 3.04 s/step, 1.31 examples/s, 1845 MB
(TRL with its default gradient checkpointing: 4.77 s/step, 1558 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# TRL's assistant_only_loss needs {% generation %} markers; otherwise this is SmolLM2's ChatML template.
CHATML_WITH_GENERATION = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _steady_seconds_per_step(stamps: list[float], started: float) -> float:
    if len(stamps) >= 2:
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return stamps[-1] - started if stamps else float("nan")


def worker(kind: str, args: argparse.Namespace) -> dict[str, float]:
    from localworkspace.base_model import ensure_base_model
    from localworkspace.trainer import resolve_params
    from scripts.make_sample_data import pirate_conversations
    from shared.settings import PROJECT_ROOT

    base_dir = ensure_base_model(args.model, os.environ.get("LOCAL_MODEL_CACHE", str(PROJECT_ROOT / ".local" / "models")))
    conversations = [r["messages"] for r in pirate_conversations(args.examples, seed=7)]
    params = resolve_params({"max_steps": args.steps, "per_device_train_batch_size": args.batch,
                                "max_seq_length": args.max_seq_length, "learning_rate": 1e-3, "lora_r": 8, "lora_alpha": 16})
    stamps: list[float] = []
    losses: list[float] = []
    if kind == "ours":
        from localworkspace.trainer import finetune

        started = time.perf_counter()

        def on_step(step: int, values: dict[str, float]) -> None:
            stamps.append(time.perf_counter())
            losses.append(values["train_loss"])

        finetune(base_dir, conversations, [], params, on_step=on_step, evaluate=False)
    else:
        import torch
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import SFTConfig, SFTTrainer

        tok = AutoTokenizer.from_pretrained(str(base_dir))
        tok.chat_template = CHATML_WITH_GENERATION
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)

        class Stamps(TrainerCallback):
            def on_step_end(self, a, state, control, **kw):  # noqa: ANN001, ANN201
                stamps.append(time.perf_counter())

            def on_log(self, a, state, control, logs=None, **kw):  # noqa: ANN001, ANN201
                if logs and "loss" in logs:
                    losses.append(float(logs["loss"]))

        with tempfile.TemporaryDirectory() as out:
            config = SFTConfig(
                output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch, learning_rate=1e-3,
                lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
                report_to="none", bf16=False, fp16=False, use_cpu=True, seed=params["seed"], max_length=args.max_seq_length,
                assistant_only_loss=True, packing=False, dataloader_num_workers=0, disable_tqdm=True,
                gradient_checkpointing=args.trl_gradient_checkpointing == "on",
            )
            lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                              task_type="CAUSAL_LM")
            trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list([{"messages": c} for c in conversations]),
                                 processing_class=tok, peft_config=lora, callbacks=[Stamps()])
            started = time.perf_counter()
            trainer.train()
    sps = _steady_seconds_per_step(stamps, started)
    return {
        "steps": len(stamps),
        "seconds_per_step": sps,
        "examples_per_second": args.batch / sps,
        "total_train_s": (stamps[-1] - started) if stamps else float("nan"),
        "peak_rss_mb": _peak_rss_mb(),
        "final_loss": losses[-1] if losses else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="local fine-tune vs TRL SFTTrainer on this CPU")
    parser.add_argument("--model", choices=["smollm2", "tiny-random"], default="smollm2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--trl-gradient-checkpointing", choices=["on", "off"], default="off",
                        help="TRL's SFTConfig turns it on by default (less memory, ~1.5x slower here); off = same work as ours")
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--json-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                        ("TOKENIZERS_PARALLELISM", "false"), ("HF_HOME", str(ROOT / ".local" / "hf")),
                        ("OMP_WAIT_POLICY", "PASSIVE"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                        ("TRANSFORMERS_VERBOSITY", "error"), ("PYTHONWARNINGS", "ignore::FutureWarning")):  # as the workspace runs its jobs (see localworkspace/__init__.py)
        os.environ.setdefault(name, value)
    if args.worker:
        Path(args.json_out).write_text(json.dumps(worker(args.worker, args)))
        return 0

    print(f"model {args.model}, {args.steps} steps, batch {args.batch}, {args.examples} conversations, "
          f"max_seq_length {args.max_seq_length}, CPU threads {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, "
          f"TRL gradient checkpointing {args.trl_gradient_checkpointing}")
    results = {}
    for kind in ("ours", "trl"):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, __file__, "--worker", kind, "--json-out", out.name, "--model", args.model,
                   "--steps", str(args.steps), "--batch", str(args.batch), "--examples", str(args.examples),
                   "--max-seq-length", str(args.max_seq_length), "--trl-gradient-checkpointing", args.trl_gradient_checkpointing]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=str(ROOT), stdout=subprocess.DEVNULL)
            results[kind] = json.loads(Path(out.name).read_text())
            results[kind]["process_s"] = time.perf_counter() - t
    header = f"{'trainer':<22}{'s/step':>9}{'examples/s':>12}{'peak RSS MB':>13}{'final loss':>12}{'process s':>11}"
    print(header)
    print("-" * len(header))
    for kind, label in (("ours", "localworkspace"), ("trl", "TRL SFTTrainer (fp32)")):
        r = results[kind]
        print(f"{label:<22}{r['seconds_per_step']:>9.3f}{r['examples_per_second']:>12.2f}{r['peak_rss_mb']:>13.0f}"
              f"{r['final_loss']:>12.4f}{r['process_s']:>11.1f}")
    ours, trl = results["ours"], results["trl"]
    print(f"ratios TRL/ours: s/step {trl['seconds_per_step'] / ours['seconds_per_step']:.2f}x, "
          f"examples/s {trl['examples_per_second'] / ours['examples_per_second']:.2f}x, "
          f"peak RSS {trl['peak_rss_mb'] / ours['peak_rss_mb']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
