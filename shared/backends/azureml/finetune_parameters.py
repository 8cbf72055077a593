"""Fine-tune parameters for the registry component ``chat_completion_pipeline``.

The component declares every input with a type, optional enum and minimum. Values that do not
match are only rejected by Azure ML after the job was queued (or worse, silently coerced), so the
app types and checks every value itself before anything is submitted: ``apply_lora`` is the string
``"true"``, ``deepspeed_stage`` the string ``"2"``, ``num_train_epochs`` an integer.

Precedence, lowest first (as in the Phi-3 cookbook notebook "FineTuning_MLSDK", then the app's own):
the notebook's defaults < the foundation model's ``model_specific_defaults`` tag < the
``FINETUNE_PARAMS`` setting < the request's own ``params``.

The registry's tag is not written for this component: the published Phi-3 spec holds
``learning_rate_min`` / ``learning_rate_max``, which ``chat_completion_pipeline`` has no input for.
Keys of that tag the component does not declare (or that the app sets itself) are dropped with a
logged warning; a known key with a value the component refuses is still an error, and so is any
unknown key of ``FINETUNE_PARAMS`` or of a request (a typo there must not be ignored).

This module does not import azure.ai.ml: the interface comes from the registry component when one
was fetched (:meth:`ComponentInterface.from_component`) or from the copy the repo keeps
(``assets/chat_completion_pipeline.interface.yaml``) for offline planning and tests.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

INTERFACE_PATH = Path(__file__).resolve().parent.parent / "assets" / "chat_completion_pipeline.interface.yaml"

# The notebook's training and optimization parameters, typed as the component declares them.
NOTEBOOK_TRAINING_PARAMETERS: dict[str, Any] = {
    "num_train_epochs": 3,
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "learning_rate": 5e-6,
    "lr_scheduler_type": "cosine",
}
NOTEBOOK_OPTIMIZATION_PARAMETERS: dict[str, Any] = {
    "apply_lora": "true",
    "apply_deepspeed": "true",
    "deepspeed_stage": "2",
}
NOTEBOOK_PARAMETERS: dict[str, Any] = {**NOTEBOOK_TRAINING_PARAMETERS, **NOTEBOOK_OPTIMIZATION_PARAMETERS}

# Literal input types; every other declared type (uri_file, mlflow_model, mltable ...) is an asset.
LITERAL_TYPES = frozenset({"string", "integer", "number", "boolean"})

# Inputs the backend sets from the dataset, the foundation model and the compute settings: a
# parameter override must not silently redirect the job to other data, model or compute.
APP_OWNED_INPUTS = frozenset({
    "mlflow_model_path", "pytorch_model_path", "huggingface_id",
    "train_file_path", "validation_file_path", "test_file_path",
    "train_mltable_path", "validation_mltable_path", "test_mltable_path",
    "compute_model_import", "compute_preprocess", "compute_finetune", "compute_model_evaluation",
    "instance_type_model_import", "instance_type_preprocess", "instance_type_finetune", "instance_type_model_evaluation",
})

log = logging.getLogger(__name__)

MODEL_DEFAULTS_SOURCE = "foundation model tag model_specific_defaults"

_INT_RE = re.compile(r"^[+-]?\d+$")


class ParameterError(ValueError):
    """A fine-tune parameter name or value does not fit the component's interface."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    type: str
    optional: bool = True
    default: Any = None
    enum: tuple[str, ...] | None = None
    min: float | None = None

    @property
    def is_literal(self) -> bool:
        return self.type in LITERAL_TYPES


@dataclasses.dataclass(frozen=True)
class ComponentInterface:
    """Names, types, enums and minimums of a component's inputs and the types of its outputs."""

    name: str
    version: str
    inputs: dict[str, InputSpec]
    outputs: dict[str, str]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComponentInterface:
        inputs = {}
        for name, raw in (data.get("inputs") or {}).items():
            raw = raw or {}
            enum = raw.get("enum")
            minimum = raw.get("min")
            inputs[name] = InputSpec(
                name=name,
                type=str(raw.get("type", "string")),
                optional=bool(raw.get("optional", False)),
                default=raw.get("default"),
                enum=tuple(str(v) for v in enum) if enum else None,
                min=float(minimum) if minimum is not None else None,
            )
        outputs = {name: str((raw or {}).get("type", "uri_folder")) for name, raw in (data.get("outputs") or {}).items()}
        return cls(name=str(data.get("name", "")), version=str(data.get("version", "")), inputs=inputs, outputs=outputs)

    @classmethod
    def load(cls, path: Path | str | None = None) -> ComponentInterface:
        """The interface the repo keeps (a copy of the registry component's spec)."""
        import yaml

        with open(path or INTERFACE_PATH, encoding="utf-8") as f:
            return cls.from_dict(yaml.safe_load(f))

    @classmethod
    def from_component(cls, component: Any) -> ComponentInterface:
        """The interface of an azure.ai.ml component entity (e.g. the registry's latest version)."""
        def spec(name: str, inp: Any) -> dict[str, Any]:
            return {
                "type": getattr(inp, "type", None) or "string",
                "optional": getattr(inp, "optional", None),
                "default": getattr(inp, "default", None),
                "enum": getattr(inp, "enum", None),
                "min": getattr(inp, "min", None),
            }

        return cls.from_dict({
            "name": component.name,
            "version": component.version,
            "inputs": {n: spec(n, i) for n, i in (component.inputs or {}).items()},
            "outputs": {n: {"type": getattr(o, "type", None)} for n, o in (component.outputs or {}).items()},
        })

    # ------------------------------------------------------------------ values
    def spec(self, name: str) -> InputSpec:
        try:
            return self.inputs[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.inputs, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ParameterError(f"{self.name} {self.version} has no input named {name!r}{hint}") from None

    def coerce(self, name: str, value: Any) -> Any:
        """``value`` typed exactly as the component declares input ``name`` (ParameterError if it cannot be)."""
        spec = self.spec(name)
        if not spec.is_literal:
            raise ParameterError(f"{name} is a {spec.type} input: it takes an asset, not a parameter value")
        if spec.type == "string":
            typed: Any = _as_string(name, value, spec)
        elif spec.type == "integer":
            typed = _as_integer(name, value)
        elif spec.type == "number":
            typed = _as_number(name, value)
        else:
            typed = _as_boolean(name, value)
        return _check_bounds(name, typed, spec)

    def coerce_all(self, values: Mapping[str, Any], source: str) -> dict[str, Any]:
        """Typed copies of ``values``; errors name ``source`` (where the values came from)."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            if name in APP_OWNED_INPUTS:
                raise ParameterError(f"{source}: {name} is set by the app (dataset, foundation model or compute settings), not a fine-tune parameter")
            try:
                out[name] = self.coerce(name, value)
            except ParameterError as exc:
                raise ParameterError(f"{source}: {exc}") from None
        return out

    def problems(self, inputs: Mapping[str, Any]) -> list[str]:
        """Every way ``inputs`` (the values passed to the component) break the interface.

        Literal values must already have the declared Python type (``"2"`` for a string input, not
        2); asset inputs are an azure.ai.ml ``Input``, a ``{"type", "path"}`` mapping (as in the v2
        YAML) or an asset id string, and their type must be the declared one.
        """
        found: list[str] = []
        for name, value in inputs.items():
            if name not in self.inputs:
                found.append(f"{name}: not an input of {self.name} {self.version}")
                continue
            spec = self.inputs[name]
            if value is None:
                continue
            if spec.is_literal:
                found.extend(_literal_problems(name, value, spec))
            else:
                asset_type = _asset_type(value)
                if asset_type is None:
                    if not isinstance(value, str):
                        found.append(f"{name}: a {spec.type} input needs an asset, got {type(value).__name__}")
                elif asset_type != spec.type:
                    found.append(f"{name}: declared {spec.type}, passed {asset_type}")
        for name, spec in self.inputs.items():
            if not spec.optional and spec.default is None and inputs.get(name) is None:
                found.append(f"{name}: required and not set")
        return found


def _as_string(name: str, value: Any, spec: InputSpec) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float, str)):
        text = str(value)
    else:
        raise ParameterError(f"{name} must be a string, got {type(value).__name__}")
    if spec.enum is not None and text not in spec.enum:
        # "True"/"FALSE" from a JSON setting or a human: the component's booleans are lower case.
        lowered = text.strip().lower()
        if set(spec.enum) == {"true", "false"} and lowered in spec.enum:
            return lowered
        raise ParameterError(f"{name}={value!r} is not one of {list(spec.enum)}")
    return text


def _as_integer(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ParameterError(f"{name} must be an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_RE.match(value.strip()):
        return int(value.strip())
    raise ParameterError(f"{name}={value!r} is not an integer")


def _as_number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ParameterError(f"{name} must be a number, got a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise ParameterError(f"{name}={value!r} is not a finite number")
    return number


def _as_boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    raise ParameterError(f"{name}={value!r} is not a boolean")


def _check_bounds(name: str, value: Any, spec: InputSpec) -> Any:
    if spec.min is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value < spec.min:
        raise ParameterError(f"{name}={value!r} is below the minimum {spec.min:g}")
    return value


def _literal_problems(name: str, value: Any, spec: InputSpec) -> list[str]:
    expected = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,)}[spec.type]
    if isinstance(value, bool) and spec.type != "boolean" or not isinstance(value, expected):
        return [f"{name}: declared {spec.type}, passed {type(value).__name__} {value!r}"]
    if spec.enum is not None and str(value) not in spec.enum:
        return [f"{name}: {value!r} is not one of {list(spec.enum)}"]
    if spec.min is not None and spec.type in {"integer", "number"} and value < spec.min:
        return [f"{name}: {value!r} is below the minimum {spec.min:g}"]
    return []


def _asset_type(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return str(value.get("type")) if value.get("type") else None
    declared = getattr(value, "type", None)  # azure.ai.ml Input
    return str(declared) if isinstance(declared, str) else None


def finetune_parameters(
    interface: ComponentInterface,
    model_specific_defaults: Mapping[str, Any] | None = None,
    settings_params: Mapping[str, Any] | None = None,
    request_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The notebook's defaults overridden layer by layer, every value typed for ``interface``."""
    layers: Iterable[tuple[str, Mapping[str, Any] | None]] = (
        ("notebook defaults", NOTEBOOK_PARAMETERS),
        (MODEL_DEFAULTS_SOURCE, registry_defaults(interface, model_specific_defaults)),
        ("FINETUNE_PARAMS", settings_params),
        ("request params", request_params),
    )
    merged: dict[str, Any] = {}
    for source, values in layers:
        if values:
            merged.update(interface.coerce_all(values, source))
    return merged


def registry_defaults(interface: ComponentInterface, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """The registry tag's keys the component declares as parameters; the others dropped with a warning."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in (values or {}).items():
        spec = interface.inputs.get(name)
        if spec is None or name in APP_OWNED_INPUTS or not spec.is_literal:
            dropped.append(name)
        else:
            kept[name] = value
    if dropped:
        log.warning(
            "%s: ignoring %s (not parameters of %s %s)",
            MODEL_DEFAULTS_SOURCE, ", ".join(sorted(dropped)), interface.name, interface.version,
        )
    return kept


def pipeline_display_name(model_name: str, dataset_label: str, params: Mapping[str, Any], gpus_per_node: int) -> str:
    """The notebook's display name: effective batch size, scheduler, DeepSpeed, LoRA, save limit, sequence length."""
    batch_size = (
        int(params.get("per_device_train_batch_size", 1))
        * int(params.get("gradient_accumulation_steps", 1))
        * int(gpus_per_node)
        * int(params.get("num_nodes_finetune", 1))
    )
    scheduler = params.get("lr_scheduler_type", "linear")
    ds_string = f"ds{params.get('deepspeed_stage', '2')}" if params.get("apply_deepspeed", "false") == "true" else "nods"
    lora_string = "lora" if params.get("apply_lora", "false") == "true" else "nolora"
    save_limit = params.get("save_total_limit", -1)
    seq_len = params.get("max_seq_length", -1)
    return (
        f"{model_name}-{dataset_label}-bs{batch_size}-{scheduler}-{ds_string}-{lora_string}"
        f"-save_limit{save_limit}-seqlen{seq_len}"
    )
