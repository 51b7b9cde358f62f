"""Strict checks of Kubernetes manifests against the models of the SDKs that define them.

`validate_manifest(manifest)` picks the schema from `apiVersion` and `kind`:

- built-in kinds (Deployment, Service, PersistentVolumeClaim, Secret, ConfigMap, Job, ...): the
  `kubernetes` client's OpenAPI models (`V1Deployment`, ...), the group/kind pair confirmed by the
  client's API class for that group (`AppsV1Api.create_namespaced_deployment`);
- `kubeflow.org/v1` (PyTorchJob and the other training-operator v1 jobs): `kubeflow-training`'s models,
  which nest the `kubernetes` client's pod template models;
- `trainer.kubeflow.org/v1alpha1` (TrainJob, TrainingRuntime, ClusterTrainingRuntime):
  `kubeflow-trainer-api`'s pydantic models.

Both model families are walked recursively, field by field, so every problem is reported at its dotted
path (`spec.pytorchReplicaSpecs.Master.template.spec.containers[0].resources.limits['nvidia.com/gpu']`):
unknown keys (the models' JSON names: `attribute_map`, or the pydantic aliases), wrong types, required
fields that are missing, malformed resource quantities and, for the pydantic models, their enum
validators. The models themselves would not do this: the OpenAPI ones take anything through their
constructors and the pydantic ones ignore unknown keys; the API server would then drop or reject the
field at submission, far from the code that wrote it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

KUBEFLOW_V1_GROUP = "kubeflow.org"
TRAINER_GROUP = "trainer.kubeflow.org"

# The built-in API groups whose kinds the kubernetes client models; any `*.k8s.io` group is one too.
_BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling"}

# Quantity-valued fields, which the OpenAPI models type as plain strings although the API server also
# takes JSON numbers (`cpu: 2`): (model class, attribute) -> the value is a map of quantities or one.
_QUANTITY_MAPS = {
    ("V1ResourceRequirements", "limits"),
    ("V1ResourceRequirements", "requests"),
    ("V1VolumeResourceRequirements", "limits"),
    ("V1VolumeResourceRequirements", "requests"),
    ("V1ResourceQuotaSpec", "hard"),
    ("V1PersistentVolumeSpec", "capacity"),
    ("V1LimitRangeItem", "default"),
    ("V1LimitRangeItem", "default_request"),
    ("V1LimitRangeItem", "max"),
    ("V1LimitRangeItem", "min"),
    ("V1LimitRangeItem", "max_limit_request_ratio"),
}
_QUANTITY_SCALARS = {("V1EmptyDirVolumeSource", "size_limit")}
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")

_PRIMITIVES: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), "a string"),
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "a boolean"),
    "date": ((str,), "a date string"),
    "datetime": ((str,), "an RFC 3339 date-time string"),
}


class ManifestError(ValueError):
    """A manifest does not match its schema; `problems` lists (dotted field path, what is wrong)."""

    def __init__(self, what: str, problems: list[tuple[str, str]]):
        self.problems = problems
        listing = "\n  ".join(f"{path}: {message}" for path, message in problems)
        super().__init__(f"invalid {what}:\n  {listing}")


def validate_manifest(manifest: Mapping[str, Any]) -> None:
    """Raise `ManifestError` naming every field of `manifest` that its SDK model does not accept."""
    if not isinstance(manifest, Mapping):
        raise ManifestError("manifest", [("<top level>", f"expected a mapping, got {_kind_of(manifest)}")])
    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    header = [
        (key, f"required string, got {_kind_of(value)}")
        for key, value in (("apiVersion", api_version), ("kind", kind))
        if not isinstance(value, str) or not value
    ]
    if header:
        raise ManifestError("manifest", header)
    what = f"{kind} manifest ({api_version})"
    checker = _schema_for(api_version, kind)
    if checker is None:
        raise ManifestError(
            what,
            [
                (
                    "apiVersion/kind",
                    f"no schema for {kind} in {api_version}: expected a built-in kind (core, apps, batch, "
                    f"policy, autoscaling, *.k8s.io), {KUBEFLOW_V1_GROUP}/v1 or {TRAINER_GROUP}/v1alpha1",
                )
            ],
        )
    problems: list[tuple[str, str]] = []
    checker(manifest, problems)
    metadata = manifest.get("metadata")
    if not isinstance(metadata, Mapping) or not (metadata.get("name") or metadata.get("generateName")):
        problems.append(("metadata.name", "required (or metadata.generateName): the object needs a name"))
    if problems:
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        raise ManifestError(f"{what} {name!r}" if name else what, problems)


# --------------------------------------------------------------------------- schema lookup


def _schema_for(api_version: str, kind: str):
    group, _, version = api_version.rpartition("/")
    if not re.fullmatch(r"v\d+((alpha|beta)\d+)?", version) or not re.fullmatch(r"[A-Z][A-Za-z0-9]*", kind):
        return None
    camel_version = version[0].upper() + version[1:]
    if group == KUBEFLOW_V1_GROUP:
        cls = getattr(
            importlib.import_module("kubeflow.training.models"), f"KubeflowOrg{camel_version}{kind}", None
        )
        return _swagger_checker(cls) if cls is not None else None
    if group == TRAINER_GROUP:
        models = importlib.import_module("kubeflow_trainer_api.models")
        cls = getattr(models, f"Trainer{camel_version}{kind}", None)
        return _pydantic_checker(cls) if cls is not None else None
    if group in _BUILTIN_GROUPS or group.endswith(".k8s.io"):
        cls = _builtin_model(group, camel_version, kind)
        return _swagger_checker(cls) if cls is not None else None
    return None


def _builtin_model(group: str, camel_version: str, kind: str):
    """The kubernetes client's model of `kind` in `group`, or None when the group does not serve it."""
    client = importlib.import_module("kubernetes.client")
    group_camel = "".join(p.capitalize() for p in (group.removesuffix(".k8s.io") or "core").split("."))
    api = getattr(client, f"{group_camel}{camel_version}Api", None)
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", kind).lower()
    if api is None or not any(hasattr(api, f"create_{s}{snake}") for s in ("namespaced_", "")):
        return None
    for name in (f"{group_camel}{camel_version}{kind}", f"{camel_version}{kind}"):
        cls = getattr(client, name, None)
        if cls is not None and "kind" in getattr(cls, "attribute_map", {}):
            return cls
    return None


def _resolve_swagger(type_name: str):
    """An OpenAPI model class by its generated name; kubeflow-training models refer to the kubernetes
    client's (`V1PodTemplateSpec`), and name a few of them after their API group (`K8sIoApi...`)."""
    for module in ("kubeflow.training.models", "kubernetes.client"):
        cls = getattr(importlib.import_module(module), type_name, None)
        if cls is not None:
            return cls
    match = re.fullmatch(r"K8sIoApi[A-Z][a-z]+(V\d+\w*)", type_name)
    if match:
        return getattr(importlib.import_module("kubernetes.client"), match.group(1), None)
    return None


# --------------------------------------------------------------------------- OpenAPI (swagger) models


def _swagger_checker(cls):
    def check(manifest, problems):
        _check_swagger_model(manifest, cls, "", problems)

    return check


@functools.cache
def _required_attributes(cls) -> frozenset[str]:
    """Attributes the generated setter refuses to leave unset (`... must not be None`): the model's
    `required` list, which the generator keeps nowhere else."""
    required = set()
    for attribute in cls.openapi_types:
        prop = getattr(cls, attribute, None)
        fset = prop.fset if isinstance(prop, property) else None
        if fset is not None and "must not be `None`" in inspect.getsource(fset):
            required.add(attribute)
    return frozenset(required)


def _check_swagger_model(value, cls, path, problems):
    if not isinstance(value, Mapping):
        problems.append(
            (path or "<top level>", f"expected a mapping ({cls.__name__}), got {_kind_of(value)}")
        )
        return
    by_json = {json_key: attribute for attribute, json_key in cls.attribute_map.items()}
    for key in value:
        if key not in by_json:
            problems.append(
                (_join(path, key), f"unknown field (expected one of: {', '.join(sorted(by_json))})")
            )
    for attribute in sorted(_required_attributes(cls)):
        json_key = cls.attribute_map[attribute]
        if value.get(json_key) is None:
            problems.append((_join(path, json_key), f"required field of {cls.__name__} is missing"))
    for key, item in value.items():
        attribute = by_json.get(key)
        if attribute is None or item is None:
            continue
        where = _join(path, key)
        if (cls.__name__, attribute) in _QUANTITY_MAPS:
            _check_quantity_map(item, where, problems)
        elif (cls.__name__, attribute) in _QUANTITY_SCALARS:
            _check_quantity(item, where, problems)
        else:
            _check_swagger_value(item, cls.openapi_types[attribute], where, problems)


def _check_swagger_value(value, type_name: str, path: str, problems):
    if type_name.startswith("list["):
        if not isinstance(value, list):
            problems.append((path, f"expected a list, got {_kind_of(value)}"))
            return
        for i, item in enumerate(value):
            _check_swagger_value(item, type_name[5:-1], f"{path}[{i}]", problems)
    elif type_name.startswith("dict("):
        inner = type_name[type_name.index(",") + 1 : -1].strip()
        if not isinstance(value, Mapping):
            problems.append((path, f"expected a mapping, got {_kind_of(value)}"))
            return
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append((path, f"expected string keys, got {_kind_of(key)} {key!r}"))
            else:
                _check_swagger_value(item, inner, _key(path, key), problems)
    elif type_name == "object":
        return  # free-form (IntOrString fields, raw extensions): anything JSON
    elif type_name in _PRIMITIVES:
        allowed, words = _PRIMITIVES[type_name]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            problems.append((path, f"expected {words}, got {_kind_of(value)} {value!r}"))
    else:
        cls = _resolve_swagger(type_name)
        if cls is None:
            if not isinstance(value, Mapping):
                problems.append((path, f"expected a mapping ({type_name}), got {_kind_of(value)}"))
            return
        _check_swagger_model(value, cls, path, problems)


def _check_quantity_map(value, path, problems):
    if not isinstance(value, Mapping):
        problems.append((path, f"expected a mapping of resource quantities, got {_kind_of(value)}"))
        return
    for key, item in value.items():
        _check_quantity(item, _key(path, key), problems)


def _check_quantity(value, path, problems):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        problems.append((path, f"expected a resource quantity (e.g. '8', '32Gi'), got {_kind_of(value)}"))
    elif isinstance(value, str) and not _QUANTITY.match(value):
        problems.append((path, f"expected a resource quantity (e.g. '8', '500m', '32Gi'), got {value!r}"))


# --------------------------------------------------------------------------- pydantic models


def _pydantic_checker(cls):
    def check(manifest, problems):
        _check_pydantic_model(manifest, cls, "", problems)

    return check


def _check_pydantic_model(value, cls: type[BaseModel], path, problems):
    if not isinstance(value, Mapping):
        problems.append(
            (path or "<top level>", f"expected a mapping ({cls.__name__}), got {_kind_of(value)}")
        )
        return
    if not cls.__pydantic_complete__:
        cls.model_rebuild()
    fields = {(field.alias or name): (name, field) for name, field in cls.model_fields.items()}
    for key in value:
        if key not in fields:
            problems.append(
                (_join(path, key), f"unknown field (expected one of: {', '.join(sorted(fields))})")
            )
    for key, (_, field) in sorted(fields.items()):
        if field.is_required() and value.get(key) is None:
            problems.append((_join(path, key), f"required field of {cls.__name__} is missing"))
    validators = cls.__pydantic_decorators__.field_validators.values()
    for key, item in value.items():
        if key not in fields or item is None:
            continue
        name, field = fields[key]
        where = _join(path, key)
        before = len(problems)
        _check_pydantic_value(item, field.annotation, where, problems)
        if len(problems) > before:
            continue
        for validator in validators:
            if name in validator.info.fields and validator.info.mode == "after":
                try:
                    validator.func(item)
                except (ValueError, TypeError) as exc:
                    problems.append((where, f"{exc}; got {item!r}"))


def _check_pydantic_value(value, annotation, path, problems):
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        if value is None and len(present) < len(args):
            return
        if len(present) == 1:
            _check_pydantic_value(value, present[0], path, problems)
        else:
            _check_leaf(value, annotation, path, problems)
    elif origin is list:
        if not isinstance(value, list):
            problems.append((path, f"expected a list, got {_kind_of(value)}"))
            return
        for i, item in enumerate(value):
            _check_pydantic_value(item, args[0], f"{path}[{i}]", problems)
    elif origin is dict:
        if not isinstance(value, Mapping):
            problems.append((path, f"expected a mapping, got {_kind_of(value)}"))
            return
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append((path, f"expected string keys, got {_kind_of(key)} {key!r}"))
            else:
                _check_pydantic_value(item, args[1], _key(path, key), problems)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if "actual_instance" in annotation.model_fields:
            _check_one_of(value, annotation, path, problems)
        else:
            _check_pydantic_model(value, annotation, path, problems)
    else:
        _check_leaf(value, annotation, path, problems)


def _check_one_of(value, cls, path, problems):
    """The generator's oneOf wrappers (IntOrString, Quantity) hold a bare JSON scalar."""
    if "Quantity" in cls.__name__:
        _check_quantity(value, path, problems)
        return
    try:
        cls.from_dict(value)
    except (ValueError, TypeError):
        kinds = " or ".join(sorted(getattr(cls.model_construct(), "one_of_schemas", ())))
        problems.append((path, f"expected {kinds or 'a scalar'}, got {_kind_of(value)} {value!r}"))


def _check_leaf(value, annotation, path, problems):
    try:
        _adapter(annotation).validate_python(value)
    except ValidationError as exc:
        message = exc.errors()[0]["msg"]
        problems.append((path, f"{message[0].lower()}{message[1:]}; got {_kind_of(value)} {value!r}"))


@functools.cache
def _adapter(annotation) -> TypeAdapter:
    return TypeAdapter(annotation)


# --------------------------------------------------------------------------- paths


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def _key(path: str, key: str) -> str:
    """Map keys are data, not field names: `labels['app.kubernetes.io/name']`, but plain words read as
    fields: `pytorchReplicaSpecs.Master`."""
    return _join(path, key) if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key) else f"{path}[{key!r}]"


def _kind_of(value) -> str:
    return "null" if value is None else type(value).__name__
