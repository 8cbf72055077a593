"""Real SmolLM2 fine-tune in the local workspace: the house style is learned and served.

Slow (minutes on a 2-core CPU): run with ``make test-slow``.
"""

from __future__ import annotations

import time

import httpx
import pytest

from scripts.make_sample_data import HELD_OUT, in_house_style, pirate_conversations
from shared.backends.base import COMPLETED, EP_SUCCEEDED, FineTuneRequest
from shared.backends.local import LocalBackend
from shared.settings import Settings
from tests.fakes.local import EventSink, jsonl, upload_dataset, wait_endpoint, wait_job
from tests.support import port_open

MAX_NEW_TOKENS = 40


def base_model_answers(s: Settings, prompts: list[str]) -> list[str]:
    """The base model's greedy answers, generated the way the endpoint generates."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from localworkspace.base_model import ensure_base_model

    folder = ensure_base_model(s.local_base_model, s.local_model_cache)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    answers = []
    for prompt in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
        answers.append(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


@pytest.mark.slow
@pytest.mark.storage
@pytest.mark.timeout(1800)  # its own waits allow 20 min for the job and 10 for the endpoint: the default 600 s cut it on a busy machine
def test_smollm2_learns_the_house_style(storage_settings: Settings) -> None:
    sink = EventSink().start()
    s = storage_settings.replace(local_base_model="smollm2", eventgrid_webhook_url=sink.url)
    backend = LocalBackend(s, event_retry_total_s=10)
    try:
        rows = pirate_conversations(272, seed=7)
        train_blob, test_blob = upload_dataset(s, "ds-pirate", jsonl(rows[:240]), jsonl(rows[240:]))
        job = backend.submit_finetune(FineTuneRequest(
            dataset_id="ds-pirate", train_blob=train_blob, test_blob=test_blob, model_name="smollm2-pirate",
            params={"max_steps": 40, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "max_seq_length": 128},
        ))
        info = wait_job(backend, job, timeout_s=1200)
        assert info.state == COMPLETED, info.error
        assert info.metrics["test_loss"] < 0.5 * info.metrics["base_test_loss"], info.metrics
        assert sink.wait_for(job)["eventType"].endswith("RunCompleted")

        model = backend.register_model(job, "smollm2-pirate")
        backend.begin_deploy(model, "smollm2-pirate-1", tags={})
        ep = wait_endpoint(backend, "smollm2-pirate-1", timeout_s=600)
        assert ep.state == EP_SUCCEEDED, ep.error
        backend.set_traffic("smollm2-pirate-1")  # as on Azure: a new endpoint routes nothing until its traffic is set
        target = backend.get_scoring_target("smollm2-pirate-1")

        def score(prompt: str, **parameters: object) -> str:
            body = {"input_data": {"input_string": [{"role": "user", "content": prompt}],
                                   "parameters": {"max_new_tokens": MAX_NEW_TOKENS, **parameters}}, "params": {}}
            reply = httpx.post(target.url, json=body, headers=target.headers(), timeout=target.timeout_s)
            assert reply.status_code == 200, reply.text
            return reply.json()["output"]

        started = time.monotonic()
        tuned = [score(p, temperature=0.0, do_sample=False) for p in HELD_OUT]
        print(f"{len(HELD_OUT)} held-out answers in {time.monotonic() - started:.1f} s")
        sampled = score(HELD_OUT[0], temperature=0.7, top_p=0.9, do_sample=True)
        assert isinstance(sampled, str) and sampled
        base = base_model_answers(s, HELD_OUT)
        for prompt, b, t in zip(HELD_OUT, base, tuned, strict=True):
            print(f"Q: {prompt}\n  base: {b!r}\n  tuned: {t!r}")
        base_style = sum(in_house_style(a) for a in base)
        tuned_style = sum(in_house_style(a) for a in tuned)
        print(f"house style: base {base_style}/{len(base)}, fine-tuned {tuned_style}/{len(tuned)}; metrics {info.metrics}")
        assert tuned_style >= 0.6 * len(HELD_OUT)
        assert tuned_style - base_style >= len(HELD_OUT) // 2

        port = int(target.url.split(":")[2].split("/")[0])
        backend.begin_delete_endpoint("smollm2-pirate-1")
        assert not port_open(port)
    finally:
        backend.shutdown()
        sink.stop()
