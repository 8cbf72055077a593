"""Offline checks of the Bicep templates in infra/: parse with pycep-parser, check against types.

No Bicep compiler and no Azure here, so two published sources stand in for them:
- ``pycep-parser`` parses every ``.bicep`` file into JSON (the parser checkov uses);
- the Bicep type definitions in ``tests/fixtures/bicep-types/`` (copied from Azure/bicep-types-az)
  give, per ``<type>@<api-version>``, every property, its flags (required, read-only) and the
  literal values it accepts.

:func:`check_file` walks one parsed file and returns readable problems: unknown resource types or
API versions, resources at a scope their type cannot be deployed at, unknown or read-only
properties, missing required properties, literals of the wrong type or outside an enum (stricter
than Bicep for open enums), names used but not declared, a ``parent`` of the wrong type, module
parameters that do not exist or are missing, module outputs that do not exist, and property
reads (``x.properties.y``) that the type does not have.

pycep's JSON does not tell a string literal from an identifier: a string that names a parameter,
variable, resource, module or loop item of the file is read as a reference; any other string is a
literal. Strings with ``${...}`` are interpolations (checked as strings, their references checked).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Any

from pycep import BicepParser

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
TYPES_DIR = Path(__file__).resolve().parent / "fixtures" / "bicep-types"

# Flags of a property in the type definitions (bicep-types: ObjectTypePropertyFlags).
REQUIRED = 1
READ_ONLY = 2
WRITE_ONLY = 4
DEPLOY_TIME_CONSTANT = 8

# Keys of a resource body that are Bicep syntax, not properties of the resource type.
BICEP_RESOURCE_KEYS = {"parent", "scope", "dependsOn"}

# The one type not in the published subset (see tests/fixtures/bicep-types/README.md): the
# properties a resource group takes (ARM ResourceGroup: name, location, tags, managedBy, properties).
RESOURCE_GROUP_TYPE = "microsoft.resources/resourcegroups"
RESOURCE_GROUP_PROPERTIES = {"name", "location", "tags", "managedBy", "properties"}
RESOURCE_GROUP_VERSIONS = {"2024-03-01"}


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@functools.cache
def _parser() -> BicepParser:
    return BicepParser()


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    """The pycep JSON of one Bicep file (raises on a syntax pycep cannot parse)."""
    return _parser().parse(file_path=path)


def parse_text(text: str) -> dict[str, Any]:
    return _parser().parse(text=text)


# --------------------------------------------------------------------------- type definitions


@dataclasses.dataclass(frozen=True)
class TypeRef:
    nodes: tuple[Any, ...]
    index: int

    @property
    def node(self) -> dict[str, Any]:
        return self.nodes[self.index]

    def ref(self, ref: dict[str, str]) -> TypeRef:
        return TypeRef(self.nodes, int(ref["$ref"].rsplit("/", 1)[1]))


# Scopes a resource type can be deployed at (bicep-types ScopeType flags).
SCOPES = {"tenant": 1, "managementGroup": 2, "subscription": 4, "resourceGroup": 8, "extension": 16}


@functools.cache
def _resource_index() -> dict[str, tuple[TypeRef, int]]:
    """``"<type>@<version>"`` (lower case) -> (type of its body, writable scopes), over every copied types.json."""
    index: dict[str, tuple[TypeRef, int]] = {}
    for path in sorted(TYPES_DIR.rglob("types.json")):
        nodes = tuple(json.loads(path.read_text(encoding="utf-8")))
        for node in nodes:
            if node.get("$type") == "ResourceType":
                scopes = node.get("writableScopes", node.get("scopeType", 0))
                index[node["name"].lower()] = (TypeRef(nodes, 0).ref(node["body"]), scopes)
    return index


@functools.cache
def _resource_types() -> dict[str, TypeRef]:
    return {k: v[0] for k, v in _resource_index().items()}


def writable_scopes(type_name: str, api_version: str) -> int:
    entry = _resource_index().get(f"{type_name}@{api_version}".lower())
    return entry[1] if entry else 0


def resource_type(type_name: str, api_version: str) -> TypeRef | None:
    return _resource_types().get(f"{type_name}@{api_version}".lower())


def known_versions(type_name: str) -> list[str]:
    prefix = type_name.lower() + "@"
    return sorted(k.split("@", 1)[1] for k in _resource_types() if k.startswith(prefix))


def describe(t: TypeRef) -> str:
    n = t.node
    kind = n["$type"]
    if kind == "StringLiteralType":
        return repr(n["value"])
    if kind == "UnionType":
        return " | ".join(describe(t.ref(e)) for e in n["elements"])
    if kind in {"ObjectType", "DiscriminatedObjectType"}:
        return f"object {n.get('name', '')}".strip()
    if kind == "ArrayType":
        return f"array of {describe(t.ref(n['itemType']))}"
    return kind.removesuffix("Type").lower()


# --------------------------------------------------------------------------- expressions

_INTERPOLATION = re.compile(r"\$\{(.*?)\}")
_ACCESS_CHAIN = re.compile(r"^([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*)+)$")


def is_expression(value: Any) -> bool:
    """A pycep function call or operator (as opposed to an object literal)."""
    return (
        isinstance(value, dict)
        and len(value) == 1
        and next(iter(value)) in {"function", "operator"}
        and isinstance(next(iter(value.values())), dict)
    )


def access_chain(value: Any) -> list[str] | None:
    """``a.b.c`` (pycep property_accessor chain) -> ["a", "b", "c"]; None for anything else."""
    if isinstance(value, str):
        return [value] if re.fullmatch(r"[A-Za-z_]\w*", value) else None
    if not (is_expression(value) and "operator" in value):
        return None
    op = value["operator"]
    if op.get("type") != "property_accessor":
        return None
    first = access_chain(op["operands"]["operand_1"])
    rest = access_chain(op["operands"]["operand_2"])
    if first is None or rest is None:
        return None
    return first + rest


def interpolated_chains(text: str) -> list[list[str]]:
    """Simple ``${a.b.c}`` references inside a string."""
    chains = []
    for inner in _INTERPOLATION.findall(text):
        m = _ACCESS_CHAIN.match(inner.strip())
        if m:
            chains.append([m.group(1), *m.group(2).strip(".").split(".")])
    return chains


def unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == "'" else key


def body_of(resource_or_module: dict[str, Any]) -> dict[str, Any]:
    """The body of a resource or module, through ``for`` loops and ``if`` conditions."""
    config = resource_or_module["config"]
    while isinstance(config, dict) and "config" in config and ("loop_type" in config or "condition" in config):
        config = config["config"]
    return config


def identifiers(doc: dict[str, Any]) -> set[str]:
    names = set(doc.get("parameters", {})) | set(doc.get("variables", {}))
    names |= set(doc.get("resources", {})) | set(doc.get("modules", {}))
    for section in ("resources", "modules"):
        for item in doc.get(section, {}).values():
            loop = item["config"].get("loop_type") if isinstance(item["config"], dict) else None
            if loop:
                names.add(loop["detail"]["item_name"])
                if loop["detail"].get("index_name"):
                    names.add(loop["detail"]["index_name"])
    return names


# --------------------------------------------------------------------------- checking


class _Checker:
    def __init__(self, path: Path, doc: dict[str, Any], source: str | None = None):
        self.path = path
        self.doc = doc
        self.source = source
        self.names = identifiers(doc)
        self.problems: list[str] = []

    def where(self, symbol: str) -> str:
        return f"{self.path.relative_to(ROOT)}: {symbol}"

    def is_reference(self, value: Any) -> bool:
        return is_expression(value) or (isinstance(value, str) and value in self.names)

    # ---- values against types

    def check_value(self, value: Any, t: TypeRef, at: str, *, discriminator_value: Any = None) -> None:
        if self.is_reference(value):
            return
        n = t.node
        kind = n["$type"]
        if kind == "AnyType":
            return
        if kind == "ObjectType":
            if not isinstance(value, dict):
                self.problems.append(f"{at}: expected an object ({describe(t)}), got {value!r}")
                return
            self.check_object(value, n.get("properties", {}), n.get("additionalProperties"), t, at)
        elif kind == "DiscriminatedObjectType":
            self.check_discriminated(value, t, at, discriminator_value)
        elif kind == "ArrayType":
            if not isinstance(value, list):
                self.problems.append(f"{at}: expected an array, got {value!r}")
                return
            for i, item in enumerate(value):
                self.check_value(item, t.ref(n["itemType"]), f"{at}[{i}]")
        elif kind == "UnionType":
            self.check_union(value, t, at)
        elif kind == "StringLiteralType":
            if not isinstance(value, str) or "${" in value:
                if not (isinstance(value, str) and "${" in value):
                    self.problems.append(f"{at}: expected {n['value']!r}, got {value!r}")
            elif value != n["value"]:
                self.problems.append(f"{at}: {value!r} is not the allowed value {n['value']!r}")
        elif kind == "StringType":
            self.check_string(value, n, at)
        elif kind == "IntegerType":
            if isinstance(value, bool) or not isinstance(value, int):
                self.problems.append(f"{at}: expected an integer, got {value!r}")
            else:
                if "minValue" in n and value < n["minValue"]:
                    self.problems.append(f"{at}: {value} is below the minimum {n['minValue']}")
                if "maxValue" in n and value > n["maxValue"]:
                    self.problems.append(f"{at}: {value} is above the maximum {n['maxValue']}")
        elif kind == "BooleanType":
            if not isinstance(value, bool):
                self.problems.append(f"{at}: expected a boolean, got {value!r}")
        else:
            self.problems.append(f"{at}: cannot check a value against type {kind}")

    def check_string(self, value: Any, n: dict[str, Any], at: str) -> None:
        if not isinstance(value, str):
            self.problems.append(f"{at}: expected a string, got {value!r}")
            return
        if "${" in value:
            return
        if "minLength" in n and len(value) < n["minLength"]:
            self.problems.append(f"{at}: {value!r} is shorter than {n['minLength']}")
        if "maxLength" in n and len(value) > n["maxLength"]:
            self.problems.append(f"{at}: {value!r} is longer than {n['maxLength']}")
        if "pattern" in n:
            try:
                ok = re.search(n["pattern"], value) is not None
            except re.error:
                ok = True  # a .NET-only pattern: not checkable here
            if not ok:
                self.problems.append(f"{at}: {value!r} does not match {n['pattern']!r}")

    def check_union(self, value: Any, t: TypeRef, at: str) -> None:
        options = [t.ref(e) for e in t.node["elements"]]
        literals = [o.node["value"] for o in options if o.node["$type"] == "StringLiteralType"]
        if literals and isinstance(value, str) and "${" not in value:
            # Stricter than Bicep for open enums ('a' | 'b' | string): a literal must be one of the
            # published values, so a typo ('pyton', 'Standard_LSR') is caught here.
            if value not in literals:
                self.problems.append(f"{at}: {value!r} is not one of the published values {', '.join(map(repr, literals))}")
            return
        for option in options:
            probe = _Checker(self.path, self.doc)
            probe.check_value(value, option, at)
            if not probe.problems:
                return
        self.problems.append(f"{at}: {value!r} is not one of {describe(t)}")

    def check_object(
        self, value: dict[str, Any], props: dict[str, Any], additional: Any, t: TypeRef, at: str, *, skip: set[str] = frozenset()
    ) -> None:
        for raw_key, item in value.items():
            key = unquote(raw_key)
            if key in skip:
                continue
            if "${" in key:
                if additional is None:
                    self.problems.append(f"{at}: computed key {key!r} on an object without additional properties")
                continue
            prop = props.get(key)
            if prop is None:
                if additional is not None:
                    self.check_value(item, t.ref(additional), f"{at}.{key}")
                    continue
                self.problems.append(f"{at}: property {key!r} does not exist on {describe(t)} (known: {', '.join(sorted(props))})")
                continue
            if prop["flags"] & READ_ONLY and not prop["flags"] & (REQUIRED | WRITE_ONLY) and key not in {"name", "id", "type", "apiVersion"}:
                self.problems.append(f"{at}: property {key!r} is read-only")
                continue
            self.check_value(item, t.ref(prop["type"]), f"{at}.{key}")
        present = {unquote(k) for k in value}
        for key, prop in props.items():
            if prop["flags"] & REQUIRED and not prop["flags"] & READ_ONLY and key not in present:
                self.problems.append(f"{at}: required property {key!r} is missing")

    def check_discriminated(self, value: Any, t: TypeRef, at: str, discriminator_value: Any) -> None:
        n = t.node
        if not isinstance(value, dict):
            self.problems.append(f"{at}: expected an object ({describe(t)}), got {value!r}")
            return
        key = n["discriminator"]
        chosen = discriminator_value if discriminator_value is not None else value.get(key)
        if chosen is None or self.is_reference(chosen):
            self.problems.append(f"{at}: {key!r} must be a literal, one of {', '.join(n['elements'])}")
            return
        if chosen not in n["elements"]:
            self.problems.append(f"{at}: {key}={chosen!r} is not one of {', '.join(n['elements'])}")
            return
        element = t.ref(n["elements"][chosen]).node
        props = dict(n.get("baseProperties", {}))
        props.update(element.get("properties", {}))
        self.check_object(value, props, element.get("additionalProperties"), t.ref(n["elements"][chosen]), at)

    # ---- resources, modules, property reads

    def check_resource(self, symbol: str, resource: dict[str, Any]) -> None:
        type_name, version = resource["type"], resource["api_version"]
        at = self.where(f"resource {symbol} ({type_name}@{version})")
        body = body_of(resource)
        if type_name.lower() == RESOURCE_GROUP_TYPE:
            if version not in RESOURCE_GROUP_VERSIONS:
                self.problems.append(f"{at}: API version {version} is not one of {sorted(RESOURCE_GROUP_VERSIONS)}")
            for key in body:
                if unquote(key) not in RESOURCE_GROUP_PROPERTIES | BICEP_RESOURCE_KEYS:
                    self.problems.append(f"{at}: property {key!r} does not exist on a resource group")
            return
        t = resource_type(type_name, version)
        if t is None:
            versions = known_versions(type_name)
            hint = f"known versions: {', '.join(versions)}" if versions else "no such resource type in tests/fixtures/bicep-types"
            self.problems.append(f"{at}: unknown resource type or API version ({hint})")
            return
        if not resource.get("existing"):
            file_scope = (self.doc.get("globals", {}).get("scope") or {}).get("value", "resourceGroup")
            where_deployed = "extension" if "scope" in body else file_scope
            scopes = writable_scopes(type_name, version)
            if scopes and not scopes & SCOPES.get(where_deployed, 0):
                self.problems.append(f"{at}: cannot be deployed at {where_deployed} scope (the type allows scope flags {scopes})")
        if resource.get("existing"):
            extra = set(map(unquote, body)) - {"name", "scope", "parent"}
            if extra:
                self.problems.append(f"{at}: an existing resource takes only name/scope/parent, not {sorted(extra)}")
            return
        n = t.node
        if n["$type"] == "DiscriminatedObjectType":
            self.check_discriminated_resource(body, t, at)
            return
        self.check_object(body, n["properties"], n.get("additionalProperties"), t, at, skip=BICEP_RESOURCE_KEYS)

    def check_discriminated_resource(self, body: dict[str, Any], t: TypeRef, at: str) -> None:
        n = t.node
        key = n["discriminator"]
        chosen = body.get(key)
        if not isinstance(chosen, str) or self.is_reference(chosen) or chosen not in n["elements"]:
            self.problems.append(f"{at}: {key} must be one of {', '.join(n['elements'])}, got {chosen!r}")
            return
        element_t = t.ref(n["elements"][chosen])
        props = dict(n.get("baseProperties", {}))
        props.update(element_t.node.get("properties", {}))
        self.check_object(body, props, element_t.node.get("additionalProperties"), element_t, at, skip=BICEP_RESOURCE_KEYS)

    def check_module(self, symbol: str, module: dict[str, Any]) -> None:
        at = self.where(f"module {symbol}")
        target = (self.path.parent / module["detail"]["path"]).resolve()
        if not target.is_file():
            self.problems.append(f"{at}: module file {module['detail']['path']} does not exist")
            return
        callee = parse(target)
        params = body_of(module).get("params", {})
        declared = callee.get("parameters", {})
        for name in params:
            if name not in declared:
                self.problems.append(f"{at}: {target.name} has no parameter {name!r}")
        for name, spec in declared.items():
            if spec.get("default") is None and name not in params:
                self.problems.append(f"{at}: required parameter {name!r} of {target.name} is not passed")

    def check_reads(self) -> None:
        """Every ``resource.prop.path`` and ``module.outputs.x`` read anywhere in the file exists."""

        def visit(value: Any, at: str) -> None:
            chain = access_chain(value)
            if chain and len(chain) > 1:
                self.check_chain(chain, at)
                return
            if isinstance(value, str):
                for c in interpolated_chains(value):
                    self.check_chain(c, at)
            elif isinstance(value, dict):
                for k, v in value.items():
                    visit(v, at)
                    if isinstance(k, str) and "${" in k:
                        for c in interpolated_chains(k):
                            self.check_chain(c, at)
            elif isinstance(value, list):
                for v in value:
                    visit(v, at)

        for section in ("variables", "resources", "modules", "outputs"):
            for symbol, item in self.doc.get(section, {}).items():
                visit(item.get("value", item.get("config")), self.where(f"{section[:-1]} {symbol}"))

    def check_chain(self, chain: list[str], at: str) -> None:
        head, *path = chain
        resources = self.doc.get("resources", {})
        modules = self.doc.get("modules", {})
        if head in modules:
            if path[0] != "outputs" or len(path) < 2:
                return
            target = (self.path.parent / modules[head]["detail"]["path"]).resolve()
            if target.is_file() and path[1] not in parse(target).get("outputs", {}):
                self.problems.append(f"{at}: module {head} ({target.name}) has no output {path[1]!r}")
            return
        if head not in resources:
            return
        r = resources[head]
        if r["type"].lower() == RESOURCE_GROUP_TYPE:
            if path[0] not in {"id", "name", "location", "tags", "properties", "managedBy"}:
                self.problems.append(f"{at}: resource group has no property {path[0]!r}")
            return
        t = resource_type(r["type"], r["api_version"])
        if t is None:
            return  # reported by check_resource
        for i, key in enumerate(path):
            n = t.node
            if n["$type"] == "DiscriminatedObjectType":
                props = dict(n.get("baseProperties", {}))
                for element in n["elements"].values():
                    props.update(t.ref(element).node.get("properties", {}))
            elif n["$type"] == "ObjectType":
                props = n.get("properties", {})
                if key not in props and n.get("additionalProperties") is not None:
                    t = t.ref(n["additionalProperties"])
                    continue
            else:
                return  # past the typed part (any, string maps)
            if key not in props:
                self.problems.append(f"{at}: {'.'.join(chain[: i + 2])}: {r['type']} has no property {key!r}")
                return
            t = t.ref(props[key]["type"])

    def check_identifiers(self) -> None:
        """Every name a value refers to is declared (pycep reads an undeclared name as a string).

        A string value that is not a declared symbol must be a literal: written ``'value'`` in
        the source. Property names after a ``.`` are checked by :meth:`check_reads` instead.
        """
        if self.source is None:
            return

        def is_literal(text: str) -> bool:
            return f"'{text}'" in self.source or "'" + text.replace("'", "\\'") + "'" in self.source

        def visit(value: Any, at: str) -> None:
            if isinstance(value, str):
                if "${" in value:
                    for head in re.findall(r"\$\{\s*([A-Za-z_]\w*)\s*(\(?)", value):
                        if not head[1] and head[0] not in self.names:
                            self.problems.append(f"{at}: '${{{head[0]}...}}' names nothing declared in this file")
                elif value not in self.names and not is_literal(value):
                    self.problems.append(f"{at}: {value!r} is neither declared in this file nor a string literal")
            elif is_expression(value) and "operator" in value:
                operands = value["operator"].get("operands", {})
                if value["operator"].get("type") == "property_accessor":
                    visit(operands.get("operand_1"), at)
                else:
                    visit(operands, at)
            elif is_expression(value):
                visit(value["function"].get("parameters", {}), at)
            elif isinstance(value, dict):
                for v in value.values():
                    visit(v, at)
            elif isinstance(value, list):
                for v in value:
                    visit(v, at)

        for section in ("variables", "outputs"):
            for symbol, item in self.doc.get(section, {}).items():
                visit(item.get("value"), self.where(f"{section[:-1]} {symbol}"))
        for section in ("resources", "modules"):
            for symbol, item in self.doc.get(section, {}).items():
                config = item["config"]
                while isinstance(config, dict) and "config" in config and ("loop_type" in config or "condition" in config):
                    loop = config.get("loop_type")
                    if loop and loop["detail"].get("array_name"):
                        visit(loop["detail"]["array_name"], self.where(f"{section[:-1]} {symbol} (for)"))
                    if config.get("condition") is not None:
                        visit(config["condition"], self.where(f"{section[:-1]} {symbol} (if)"))
                    config = config["config"]
                body = {k: v for k, v in config.items() if k != "name"} if section == "modules" else config
                visit(body, self.where(f"{section[:-1]} {symbol}"))
                if section == "resources":
                    self.check_parent(symbol, item, config)

    def check_parent(self, symbol: str, resource: dict[str, Any], body: dict[str, Any]) -> None:
        at = self.where(f"resource {symbol}")
        resources = self.doc.get("resources", {})
        for dep in body.get("dependsOn", []) if isinstance(body.get("dependsOn"), list) else []:
            if isinstance(dep, str) and dep not in resources and dep not in self.doc.get("modules", {}):
                self.problems.append(f"{at}: dependsOn {dep!r} is not a resource or module of this file")
        parent = body.get("parent")
        if parent is None:
            return
        if parent not in resources:
            self.problems.append(f"{at}: parent {parent!r} is not a resource of this file")
            return
        parent_type = resources[parent]["type"]
        child_type = resource["type"]
        if not (child_type.lower().startswith(parent_type.lower() + "/") and "/" not in child_type[len(parent_type) + 1 :]):
            self.problems.append(f"{at}: a {child_type} cannot be a child of {parent} ({parent_type})")

    def run(self) -> list[str]:
        self.check_identifiers()
        for symbol, resource in self.doc.get("resources", {}).items():
            self.check_resource(symbol, resource)
        for symbol, module in self.doc.get("modules", {}).items():
            self.check_module(symbol, module)
        self.check_reads()
        return self.problems


def check_file(path: Path, doc: dict[str, Any] | None = None) -> list[str]:
    """Problems of one Bicep file (its pycep JSON may be given, e.g. a deliberately broken copy)."""
    return _Checker(path, parse(path) if doc is None else doc, path.read_text(encoding="utf-8")).run()


def check_rest_body(type_name: str, api_version: str, body: dict[str, Any], where: str = "request body") -> list[str]:
    """Problems of a REST request body (plain JSON) against the published type of the resource.

    The same definitions as the templates: a PUT body a management SDK builds can be checked the
    way a Bicep resource is (``name`` travels in the URL, so it is not required here).
    """
    t = resource_type(type_name, api_version)
    if t is None:
        return [f"{where}: unknown resource type or API version {type_name}@{api_version}"]
    checker = _Checker(ROOT / "tests", {})
    n = t.node
    props = {k: v for k, v in n["properties"].items() if k != "name"}
    checker.check_object(body, props, n.get("additionalProperties"), t, where)
    return checker.problems
