"""The embedded offline ML workspace: real LoRA fine-tunes, MLflow registry, local endpoints.

Only this package imports torch/transformers, and only inside the processes it starts
(job runner, endpoint server). ``shared.backends.local`` drives it from the app.
"""

# Environment every process of the workspace runs with: nothing may wait on a hub, and
# OpenMP threads sleep instead of spinning while they wait. On a shared, busy CPU spinning
# threads starve each other: a SmolLM2 LoRA step measured 4-5 s passive vs 17-48 s active.
PROCESS_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}
