"""A small kustomize-subset renderer, enough to build deploy/k8s without the kustomize binary.

Follows kustomize v5 semantics for the fields it implements, and refuses (``KustomizeError``) any
kustomization field it does not implement, so a manifest is never "rendered" by silently ignoring part of it.
When ``kubectl`` is on PATH, tests/deploy compares this renderer's output with ``kubectl kustomize``.

Implemented, per kustomization:
- ``resources``: YAML files (several documents each) and directories holding a kustomization (built first,
  with their own transformations);
- ``configMapGenerator`` (``literals``, ``envs``, ``files``; ``behavior`` create/merge/replace; ``options``)
  and ``generatorOptions``; generated ConfigMaps get kustomize's content-hash suffix at the end of the build;
- ``patches`` (file ``path`` or inline ``patch``; optional ``target`` by kind/name/namespace) and the legacy
  ``patchesStrategicMerge``: strategic merge, lists of built-in kinds merged by their schema's merge keys
  (containers and env by name, volumeMounts by mountPath, ...), lists of custom resources replaced,
  ``$patch: delete|replace`` and null deletes;
- ``namespace``, ``namePrefix``, ``nameSuffix``, ``commonLabels``, ``labels`` (``includeSelectors``,
  ``includeTemplates``), ``commonAnnotations``, ``images``, ``replicas``;
- name references: when a ConfigMap, Secret, ServiceAccount, PersistentVolumeClaim or Deployment of the build
  is renamed (prefix, suffix, hash), references to it in pod templates and HPA ``scaleTargetRef`` follow.

Not implemented (raises): JSON 6902 patches, ``components``, ``secretGenerator``, ``replacements``, ``vars``,
helm charts, remote resources. Label selectors inside affinity terms are not touched by ``commonLabels``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = frozenset(
    {
        "apiVersion",
        "kind",
        "resources",
        "namespace",
        "namePrefix",
        "nameSuffix",
        "commonLabels",
        "labels",
        "commonAnnotations",
        "patches",
        "patchesStrategicMerge",
        "images",
        "replicas",
        "configMapGenerator",
        "generatorOptions",
    }
)
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PersistentVolume",
        "StorageClass",
        "PriorityClass",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "APIService",
        "IngressClass",
        "CSIDriver",
        "RuntimeClass",
        "Node",
    }
)
WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not implement, or is malformed."""


Obj = dict[str, Any]


@dataclass
class Resource:
    obj: Obj
    names: list[str] = field(default_factory=list)  # every name this resource has had, oldest first
    generated: bool = False
    hash_suffix: bool = False

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    def matches(self, kind: str | None, name: str | None) -> bool:
        return (kind is None or kind == self.kind) and (name is None or name in self.names)


# --------------------------------------------------------------------------------------------- entry point


def build(path: Path) -> list[Obj]:
    """Render the kustomization in directory ``path`` (like ``kustomize build path``)."""
    resources = _build_level(path.resolve())
    for res in resources:
        if res.generated and res.hash_suffix:
            _rename(resources, res, f"{res.name}-{config_map_hash(res.obj)}")
    return [res.obj for res in resources]


def config_map_hash(obj: Obj) -> str:
    """kustomize v5's name suffix of a generated ConfigMap: sha256 of its kind and data, 10 letters, with the
    characters that could spell words swapped (0->g, 1->h, 3->k, a->m, e->t)."""
    encoded: dict[str, Any] = {"kind": "ConfigMap", "name": "", "data": obj.get("data") or {}}
    if obj.get("binaryData"):
        encoded["binaryData"] = obj["binaryData"]
    digest = hashlib.sha256(json.dumps(encoded, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return digest[:10].translate(str.maketrans("013ae", "ghkmt"))


def load_yaml_documents(path: Path) -> list[Obj]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "metadata" not in doc:
            raise KustomizeError(f"{path}: every document must be a Kubernetes object with kind and metadata")
    return docs


def kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise KustomizeError(f"{directory}: no kustomization file")


# --------------------------------------------------------------------------------------------- one level


def _build_level(directory: Path) -> list[Resource]:
    kfile = kustomization_file(directory)
    spec = yaml.safe_load(kfile.read_text(encoding="utf-8")) or {}
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported kustomization fields {sorted(unknown)}")

    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            resources.extend(_build_level(target))
        elif target.is_file():
            resources.extend(
                Resource(obj=doc, names=[doc["metadata"]["name"]]) for doc in load_yaml_documents(target)
            )
        else:
            raise KustomizeError(f"{kfile}: resource {entry!r} is neither a file nor a directory")
    _check_unique(resources, kfile)

    generator_options = spec.get("generatorOptions", {})
    for generator in spec.get("configMapGenerator", []):
        _generate_config_map(resources, generator, generator_options, directory)

    for patch_file in spec.get("patchesStrategicMerge", []):
        for patch in load_yaml_documents(directory / patch_file):
            _apply_patch(resources, patch, target=None, origin=f"{kfile}: {patch_file}")
    for entry in spec.get("patches", []):
        if "path" in entry:
            patches = load_yaml_documents(directory / entry["path"])
        elif "patch" in entry:
            patches = [doc for doc in yaml.safe_load_all(entry["patch"]) if doc is not None]
        else:
            raise KustomizeError(f"{kfile}: a patch needs path or patch")
        for patch in patches:
            if isinstance(patch, list) or "op" in patch:
                raise KustomizeError(f"{kfile}: JSON 6902 patches are not implemented")
            _apply_patch(resources, patch, entry.get("target"), origin=f"{kfile}: {entry}")

    if "namespace" in spec:
        for res in resources:
            if res.kind not in CLUSTER_SCOPED:
                res.obj["metadata"]["namespace"] = spec["namespace"]
    prefix, suffix = spec.get("namePrefix", ""), spec.get("nameSuffix", "")
    if prefix or suffix:
        for res in list(resources):
            if res.kind not in ("Namespace", "CustomResourceDefinition"):
                _rename(resources, res, f"{prefix}{res.name}{suffix}")
    if "commonLabels" in spec:
        _add_labels(resources, spec["commonLabels"], selectors=True, templates=True)
    for label_spec in spec.get("labels", []):
        _add_labels(
            resources,
            label_spec.get("pairs", {}),
            selectors=bool(label_spec.get("includeSelectors")),
            templates=bool(label_spec.get("includeSelectors") or label_spec.get("includeTemplates")),
        )
    if "commonAnnotations" in spec:
        for res in resources:
            _set_map(res.obj, ("metadata", "annotations"), spec["commonAnnotations"])
            for template in _pod_template_metadata(res.obj):
                template.setdefault("annotations", {}).update(spec["commonAnnotations"])
    for replica in spec.get("replicas", []):
        for res in resources:
            if res.kind in WORKLOADS and replica["name"] in res.names:
                res.obj["spec"]["replicas"] = replica["count"]
    for image in spec.get("images", []):
        for res in resources:
            for container in _containers(res.obj):
                container["image"] = _replace_image(container.get("image", ""), image)
    return resources


def _check_unique(resources: list[Resource], origin: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for res in resources:
        key = (res.kind, res.obj["metadata"].get("namespace", ""), res.name)
        if key in seen:
            raise KustomizeError(f"{origin}: {key} is defined twice")
        seen.add(key)


# --------------------------------------------------------------------------------------------- generators


def _parse_env_lines(text: str, origin: str) -> dict[str, str]:
    data: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "=" not in stripped:
            raise KustomizeError(f"{origin}: {stripped!r} is not KEY=VALUE")
        key, value = stripped.split("=", 1)
        data[key] = value
    return data


def _generate_config_map(resources: list[Resource], generator: Obj, options: Obj, directory: Path) -> None:
    name = generator["name"]
    data: dict[str, str] = {}
    for literal in generator.get("literals", []):
        data.update(_parse_env_lines(literal, f"configMapGenerator {name}"))
    for env_file in generator.get("envs", []):
        data.update(_parse_env_lines((directory / env_file).read_text(encoding="utf-8"), env_file))
    for file_entry in generator.get("files", []):
        key, _, rel = file_entry.rpartition("=")
        data[key or Path(rel).name] = (directory / rel).read_text(encoding="utf-8")
    behavior = generator.get("behavior", "create")
    own_options = {**options, **generator.get("options", {})}
    disable_hash = bool(own_options.get("disableNameSuffixHash", False))
    existing = [res for res in resources if res.matches("ConfigMap", name)]
    if behavior == "create":
        if existing:
            raise KustomizeError(f"configMapGenerator {name}: already exists (use behavior merge or replace)")
        metadata: Obj = {"name": name}
        if own_options.get("labels"):
            metadata["labels"] = dict(own_options["labels"])
        if own_options.get("annotations"):
            metadata["annotations"] = dict(own_options["annotations"])
        obj: Obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
        resources.append(Resource(obj=obj, names=[name], generated=True, hash_suffix=not disable_hash))
        return
    if behavior not in ("merge", "replace"):
        raise KustomizeError(f"configMapGenerator {name}: unknown behavior {behavior!r}")
    if len(existing) != 1:
        raise KustomizeError(
            f"configMapGenerator {name}: behavior {behavior} needs exactly one ConfigMap {name}"
        )
    target = existing[0]
    if behavior == "merge":
        target.obj.setdefault("data", {}).update(data)
    else:
        target.obj["data"] = data
    if "disableNameSuffixHash" in own_options:
        target.hash_suffix = not disable_hash


# --------------------------------------------------------------------------------------------- patches


def _apply_patch(resources: list[Resource], patch: Obj, target: Obj | None, origin: str) -> None:
    if target:
        unknown = set(target) - {"kind", "name", "namespace", "group", "version"}
        if unknown:
            raise KustomizeError(f"{origin}: target selectors {sorted(unknown)} are not implemented")
        name_re = re.compile(f"^(?:{target['name']})$") if "name" in target else None
        matched = [
            res
            for res in resources
            if ("kind" not in target or target["kind"] == res.kind)
            and (name_re is None or any(name_re.match(n) for n in res.names))
            and ("namespace" not in target or res.obj["metadata"].get("namespace") == target["namespace"])
        ]
    else:
        matched = [res for res in resources if res.matches(patch.get("kind"), patch["metadata"].get("name"))]
    if not matched:
        raise KustomizeError(f"{origin}: patch matches no resource")
    for res in matched:
        # the patch's kind and name identify its target; they never rename it
        body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
        body["metadata"] = {
            k: v for k, v in body.get("metadata", {}).items() if k not in ("name", "namespace")
        }
        merged = strategic_merge(res.obj, body, core=_is_core(res.obj))
        res.obj.clear()
        res.obj.update(merged)


def strategic_merge(original: Any, patch: Any, core: bool = True, path: tuple[str, ...] = ()) -> Any:
    """Merge ``patch`` into a copy of ``original`` with kustomize's strategic-merge rules.

    ``core``: the object is a built-in Kubernetes kind, whose lists merge by the keys of its OpenAPI schema
    (containers by name, volumeMounts by mountPath, ...). Custom resources have no schema here, and kustomize
    replaces their lists whole. Merged lists keep the patch's order, then the original's other items."""
    if isinstance(patch, dict) and isinstance(original, dict):
        directive = patch.get("$patch")
        if directive == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        result = copy.deepcopy(original)
        for key, value in patch.items():
            if key == "$patch":
                continue
            if value is None:
                result.pop(key, None)
            elif key in result:
                result[key] = strategic_merge(result[key], value, core, (*path, key))
            else:
                result[key] = _strip_directives(value)
        return result
    if isinstance(patch, list) and isinstance(original, list):
        key = _merge_key(path) if core else None
        if key is None:
            return _strip_directives(patch)
        merged: list[Any] = []
        mentioned: set[Any] = set()
        for item in patch:
            mentioned.add(item.get(key))
            old = next((o for o in original if o.get(key) == item.get(key)), None)
            if item.get("$patch") == "delete":
                continue
            merged.append(
                _strip_directives(item) if old is None else strategic_merge(old, item, core, (*path, "[]"))
            )
        merged.extend(copy.deepcopy(o) for o in original if o.get(key) not in mentioned)
        return merged
    return _strip_directives(patch)


# patchMergeKey of the list fields of built-in kinds (from the Kubernetes OpenAPI schema) that appear in pod
# templates and Services; every other list of a built-in kind is replaced by a patch.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "conditions": "type",
}


def _merge_key(path: tuple[str, ...]) -> str | None:
    if not path:
        return None
    field_name = path[-1]
    if field_name == "ports":
        if len(path) >= 3 and path[-2] == "[]" and path[-3] in ("containers", "initContainers"):
            return "containerPort"
        return "port" if path == ("spec", "ports") else None
    return _MERGE_KEYS.get(field_name)


def _is_core(obj: Obj) -> bool:
    """A built-in kind: core group ("v1"), a group without dots ("apps/v1") or a *.k8s.io group."""
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if k != "$patch"}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy.deepcopy(value)


# --------------------------------------------------------------------------------------------- names


def _pod_specs(obj: Obj) -> Iterator[Obj]:
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind in WORKLOADS:
        yield spec.get("template", {}).get("spec", {})
    elif kind == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif kind == "Pod":
        yield spec


def _pod_template_metadata(obj: Obj) -> Iterator[Obj]:
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind in WORKLOADS:
        yield spec.setdefault("template", {}).setdefault("metadata", {})
    elif kind == "CronJob":
        template = spec.setdefault("jobTemplate", {}).setdefault("spec", {}).setdefault("template", {})
        yield template.setdefault("metadata", {})


def _containers(obj: Obj) -> Iterator[Obj]:
    for pod in _pod_specs(obj):
        for field_name in ("containers", "initContainers"):
            yield from pod.get(field_name, [])


def _references(obj: Obj, kind: str) -> Iterator[tuple[Obj, str]]:
    """(holder, key) pairs in ``obj`` whose value names an object of ``kind``."""
    if kind == "Deployment" and obj.get("kind") == "HorizontalPodAutoscaler":
        ref = obj.get("spec", {}).get("scaleTargetRef", {})
        if ref.get("kind") == "Deployment":
            yield ref, "name"
    for pod in _pod_specs(obj):
        if kind == "ServiceAccount" and "serviceAccountName" in pod:
            yield pod, "serviceAccountName"
        if kind == "Secret":
            for pull in pod.get("imagePullSecrets", []):
                yield pull, "name"
        for volume in pod.get("volumes", []):
            if kind == "ConfigMap" and "configMap" in volume:
                yield volume["configMap"], "name"
            if kind == "Secret" and "secret" in volume:
                yield volume["secret"], "secretName"
            if kind == "PersistentVolumeClaim" and "persistentVolumeClaim" in volume:
                yield volume["persistentVolumeClaim"], "claimName"
            for source in volume.get("projected", {}).get("sources", []):
                if kind == "ConfigMap" and "configMap" in source:
                    yield source["configMap"], "name"
                if kind == "Secret" and "secret" in source:
                    yield source["secret"], "name"
        for field_name in ("containers", "initContainers"):
            for container in pod.get(field_name, []):
                for env_from in container.get("envFrom", []):
                    if kind == "ConfigMap" and "configMapRef" in env_from:
                        yield env_from["configMapRef"], "name"
                    if kind == "Secret" and "secretRef" in env_from:
                        yield env_from["secretRef"], "name"
                for env in container.get("env", []):
                    source = env.get("valueFrom", {})
                    if kind == "ConfigMap" and "configMapKeyRef" in source:
                        yield source["configMapKeyRef"], "name"
                    if kind == "Secret" and "secretKeyRef" in source:
                        yield source["secretKeyRef"], "name"


def _rename(resources: list[Resource], res: Resource, new_name: str) -> None:
    old_name = res.name
    res.obj["metadata"]["name"] = new_name
    res.names.append(new_name)
    for other in resources:
        for holder, key in _references(other.obj, res.kind):
            if holder.get(key) == old_name:
                holder[key] = new_name


# --------------------------------------------------------------------------------------------- labels, images


def _set_map(obj: Obj, path: tuple[str, ...], values: dict[str, str]) -> None:
    node = obj
    for key in path:
        node = node.setdefault(key, {})
    node.update(values)


def _add_labels(resources: list[Resource], labels: dict[str, str], selectors: bool, templates: bool) -> None:
    for res in resources:
        obj, kind = res.obj, res.kind
        _set_map(obj, ("metadata", "labels"), labels)
        if templates:
            for metadata in _pod_template_metadata(obj):
                metadata.setdefault("labels", {}).update(labels)
        if not selectors:
            continue
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            continue
        if kind in WORKLOADS - {"Job"} or kind == "PodDisruptionBudget":
            _set_map(spec, ("selector", "matchLabels"), labels)
        elif kind == "Service":
            spec.setdefault("selector", {}).update(labels)
        elif kind == "NetworkPolicy":
            _set_map(spec, ("podSelector", "matchLabels"), labels)
            for rule_field, peer_field in (("ingress", "from"), ("egress", "to")):
                for rule in spec.get(rule_field, []):
                    for peer in rule.get(peer_field, []):
                        if "podSelector" in peer:
                            peer["podSelector"].setdefault("matchLabels", {}).update(labels)


_IMAGE_RE = re.compile(r"^(?P<name>[^@]+?)(?::(?P<tag>[^:/@]+))?(?:@(?P<digest>.+))?$")


def _replace_image(current: str, rule: Obj) -> str:
    match = _IMAGE_RE.match(current)
    if not match or match["name"] != rule["name"]:
        return current
    name = rule.get("newName", match["name"])
    if "digest" in rule:
        return f"{name}@{rule['digest']}"
    if "newTag" in rule:
        return f"{name}:{rule['newTag']}"
    if match["digest"]:
        return f"{name}@{match['digest']}"
    return f"{name}:{match['tag']}" if match["tag"] else str(name)
