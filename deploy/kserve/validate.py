"""Check KServe InferenceService manifests against KServe's own generated models.

`kubernetes-validate --strict` (what `make lint` runs on deploy/k8s/) knows the built-in kinds only:
an InferenceService is a custom resource, for which it has no schema, so it would pass a misspelt
field unseen until the cluster's webhook, or the controller, dropped or refused it. Here the schema
comes from the installed SDKs: ``kserve.models`` for the InferenceService and its specs, and
``kubernetes.client.models`` for the Kubernetes types nested in them (V1Container, V1Probe, ...).
Every generated class lists its fields in ``attribute_map`` (python name -> YAML key) and their
types in ``openapi_types`` ('str', 'int', 'bool', 'object', 'list[V1Container]',
'dict(str, str)', 'List[V1HTTPHeader]', 'Dict[str, str]' or a class name).

Errors, each with its path (``spec.predictor.containers[0].readinessProbe.httpGet.pathx``):
apiVersion or kind other than serving.kserve.io/v1beta1 InferenceService; an unknown field, with
the close matches; a value of the wrong type (strict: the YAML int 2 is not a 'str', true is not an
'int'); a required field missing. Required comes from the models too: the Kubernetes ones are
pydantic models (``model_fields[...].is_required()``), and the setter of a required field of a
KServe model raises "must not be `None`" under client-side validation, which is asked field by field.

Not checked: values ('object' fields such as httpGet.port take an int or a string, as the
generated code declares), enums, ranges, and the KServe and Knative webhooks' own rules. Resource
quantities are 'str' in the Kubernetes models: quote them (cpu: "2"), as deploy/k8s/ does.

    python deploy/kserve/validate.py FILE...   # exit 1 with the errors listed, 0 when all are valid
"""

from __future__ import annotations

import datetime
import difflib
import functools
import re
import sys

import kserve
import kserve.models
import kubernetes.client
import yaml
from kserve.configuration import Configuration

API_VERSION, KIND = "serving.kserve.io/v1beta1", "InferenceService"
SCALARS = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "datetime": (str, datetime.datetime),
    "date": (str, datetime.date),
    # Quantities ("2", 1536Mi, 0.5) that the KServe models name without defining a class for them.
    "ResourceQuantity": (str, int, float),
    "V1beta1MetricQuantity": (str, int, float),
}
LIST = re.compile(r"^(?:list|List)\[(.+)\]$")
DICT = re.compile(r"^(?:dict\(str, (.+)\)|Dict\[str, (.+)\])$")
# KServe spells some Kubernetes types by their Go package: K8sIoApiAppsV1DeploymentStrategy is V1DeploymentStrategy.
GO_PACKAGE = re.compile(r"^K8sIoApi[A-Z][a-z]+(V\d+(?:alpha\d+|beta\d+)?)([A-Z]\w*)$")


@functools.cache
def model(name: str) -> type | None:
    """The generated class called ``name`` in the KServe or the Kubernetes SDK, or None."""
    if match := GO_PACKAGE.match(name):
        name = match.group(1) + match.group(2)
    for module in (kserve.models, kserve, kubernetes.client):
        found = getattr(module, name, None)
        if isinstance(found, type) and hasattr(found, "openapi_types"):
            return found
    return None


@functools.cache
def required(cls: type) -> frozenset[str]:
    """The python names of the fields that ``cls`` requires (see the module docstring for how)."""
    if hasattr(cls, "model_fields"):  # the kubernetes client's pydantic models
        return frozenset(name for name, field in cls.model_fields.items() if field.is_required())
    probe = cls.__new__(cls)  # KServe's models: ask each setter, with client-side validation on
    probe.local_vars_configuration = Configuration()
    probe.local_vars_configuration.client_side_validation = True
    names = set()
    for name in cls.openapi_types:
        try:
            setattr(probe, name, None)
        except ValueError as error:
            if "must not be `None`" in str(error):
                names.add(name)
    return frozenset(names)


def check(value: object, type_name: str, path: str) -> list[str]:
    """The errors in ``value`` read as ``type_name``, a type as ``openapi_types`` spells it."""
    if type_name == "object":
        return []
    if scalar := SCALARS.get(type_name):
        if isinstance(value, scalar) and not (isinstance(value, bool) and bool not in scalar):
            return []
        return [f"{path}: expected {type_name}, got {type(value).__name__} {value!r}"]
    if match := LIST.match(type_name):
        if not isinstance(value, list):
            return [f"{path}: expected {type_name}, got {type(value).__name__}"]
        return [error for i, item in enumerate(value) for error in check(item, match.group(1), f"{path}[{i}]")]
    if match := DICT.match(type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected {type_name}, got {type(value).__name__}"]
        item_type = match.group(1) or match.group(2)
        errors = [f"{path}: key {key!r} is not a string" for key in value if not isinstance(key, str)]
        return errors + [error for key, item in value.items() for error in check(item, item_type, f"{path}.{key}")]
    cls = model(type_name)
    if cls is None:
        return [f"{path}: no generated model for type {type_name}: cannot check this field"]
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({type_name}), got {type(value).__name__} {value!r}"]
    fields = {key: name for name, key in cls.attribute_map.items()}
    errors = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = ", ".join(difflib.get_close_matches(str(key), fields, n=3))
            errors.append(f"{where}: unknown field of {type_name}" + (f"; did you mean {close}?" if close else ""))
        elif item is not None:
            errors += check(item, cls.openapi_types[fields[key]], where)
    for name in sorted(required(cls)):
        key = cls.attribute_map[name]
        if value.get(key) is None:
            errors.append(f"{path}.{key}: required by {type_name}, missing" if path else f"{key}: required, missing")
    return errors


def validate(document: object) -> list[str]:
    """The errors in one parsed manifest; empty when it is a valid InferenceService."""
    if not isinstance(document, dict):
        return [f"expected a mapping, got {type(document).__name__}"]
    errors = []
    got = document.get("apiVersion"), document.get("kind")
    if got != (API_VERSION, KIND):
        errors.append(f"apiVersion/kind: expected {API_VERSION} {KIND}, got {got[0]} {got[1]}")
    return errors + check(document, "V1beta1InferenceService", "")


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    failed = False
    for path in paths:
        with open(path, encoding="utf-8") as file:
            documents = [document for document in yaml.safe_load_all(file) if document is not None]
        for index, document in enumerate(documents):
            where = path if len(documents) == 1 else f"{path} (document {index + 1})"
            errors = validate(document)
            failed |= bool(errors)
            print("\n".join(f"{where}: {error}" for error in errors) if errors else f"{where}: valid {KIND}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
