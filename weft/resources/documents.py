"""Operator YAML in, validated resources out: files, directories and stdin, many documents each.

This is the one place that parses operator YAML. Every problem in a batch is collected and reported
together, each naming the file, the document index, the resource and the field path, so one run of
`weft apply` shows everything to fix; nothing is applied unless the whole batch is valid.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from weft.errors import ConfigError, UsageError
from weft.model import Kind, Metadata, Resource, ResourceKey
from weft.resources.fields import DNS_LABEL, DNS_SUBDOMAIN, FieldError, Fields
from weft.resources.kinds import API_VERSIONS, SPEC_PARSERS

YAML_SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Document:
    """One YAML document: where it came from (file, 0-based index in that file) and its body."""

    source: str
    index: int
    body: object


@dataclass(frozen=True)
class ParsedResource:
    """A valid resource with the normalized document the store keeps and `weft get` shows."""

    key: ResourceKey
    resource: Resource
    document: Mapping[str, Any]


class InvalidResourcesError(UsageError):
    """One or more documents are invalid; `problems` has one ConfigError per bad document."""

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        lines = [p.message for p in problems]
        super().__init__(
            f"{len(problems)} invalid document(s), nothing was applied:\n  " + "\n  ".join(lines),
            hint="fix the fields named above and run the command again",
        )
        self.problems = tuple(problems)


def read_documents(paths: Sequence[str], stdin: TextIO | None = None) -> list[Document]:
    """Read every YAML document of the given files, directories (*.yaml, *.yml, *.json) or '-'."""
    docs: list[Document] = []
    problems: list[ConfigError] = []
    for name in paths:
        for source, text in _sources(name, stdin):
            try:
                bodies = list(yaml.safe_load_all(text))
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                where = f" at line {mark.line + 1}" if mark is not None else ""
                problems.append(
                    ConfigError(
                        source,
                        "(yaml)",
                        f"valid YAML{where}",
                        str(getattr(err, "problem", None) or err).split("\n")[0],
                    )
                )
                continue
            docs.extend(Document(source, i, b) for i, b in enumerate(bodies) if b is not None)
    if problems:
        raise InvalidResourcesError(problems)
    return docs


def _sources(name: str, stdin: TextIO | None) -> Iterable[tuple[str, str]]:
    if name == "-":
        if stdin is None:
            raise UsageError("'-' given but there is no standard input to read")
        yield "<stdin>", stdin.read()
        return
    path = Path(name)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
        if not files:
            raise UsageError(f"{name}: no *.yaml, *.yml or *.json files in this directory")
    elif path.is_file():
        files = [path]
    else:
        raise UsageError(f"{name}: no such file or directory", hint="check the path given to -f")
    for file in files:
        try:
            yield str(file), file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"{file}: cannot be read: {err}") from err


def _label(body: object) -> str:
    """A best-effort 'Kind ns/name' for error messages about a document that may be garbage."""
    if not isinstance(body, Mapping):
        return "?"
    kind = body.get("kind")
    meta = body.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    ns = meta.get("namespace") if isinstance(meta, Mapping) else None
    parts = [str(kind) if isinstance(kind, str) else "?"]
    if isinstance(name, str):
        parts.append(f"{ns}/{name}" if isinstance(ns, str) else name)
    return " ".join(parts)


def _metadata(kind: Kind, f: Fields) -> Metadata:
    name_pattern = DNS_LABEL if kind is Kind.NAMESPACE else DNS_SUBDOMAIN
    name = f.text("name", pattern=name_pattern, what="a lowercase DNS name")
    namespace = f.opt_text("namespace", pattern=DNS_LABEL, what="a namespace name (DNS label)")
    if not kind.namespaced:
        if namespace is not None:
            raise FieldError(f.child_path("namespace"), "no namespace: a Namespace is cluster-wide")
        namespace = ""
    meta = Metadata(
        name=name,
        namespace=DEFAULT_NAMESPACE if namespace is None else namespace,
        labels=f.string_map("labels", labels=True),
        annotations=f.string_map("annotations"),
    )
    f.done()
    return meta


def _normalized(kind: Kind, api_version: str, meta: Metadata, spec: object) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": meta.name}
    if meta.namespace:
        metadata["namespace"] = meta.namespace
    if meta.labels:
        metadata["labels"] = dict(meta.labels)
    if meta.annotations:
        metadata["annotations"] = dict(meta.annotations)
    document: dict[str, Any] = {"apiVersion": api_version, "kind": kind.value, "metadata": metadata}
    if spec is not None:
        # Through JSON so the stored form is exactly what the wire and `weft get -o json` carry.
        document["spec"] = json.loads(json.dumps(spec))
    return document


def parse_body(body: object) -> ParsedResource:
    """Validate one document body; raises FieldError naming the first bad field."""
    f = Fields(body, "")
    kind_text = f.text("kind", what="a resource kind")
    kind = next((k for k in Kind if k.value == kind_text), None)
    if kind is None:
        raise FieldError("kind", "one of " + ", ".join(k.value for k in Kind), kind_text)
    api_version = f.text("apiVersion")
    if api_version not in API_VERSIONS[kind]:
        raise FieldError(
            "apiVersion", " or ".join(repr(v) for v in API_VERSIONS[kind]), api_version
        )
    meta = _metadata(kind, f.fields("metadata"))
    spec_raw = f.raw("spec")
    spec = None if spec_raw is None else Fields(spec_raw, "spec")
    resource = SPEC_PARSERS[kind](meta, spec)
    f.done()
    return ParsedResource(
        ResourceKey(kind, meta.namespace, meta.name),
        resource,
        _normalized(kind, api_version, meta, spec_raw),
    )


def parse_documents(docs: Sequence[Document]) -> list[ParsedResource]:
    """Validate a whole batch; raises InvalidResourcesError listing every bad document."""
    parsed: list[ParsedResource] = []
    problems: list[ConfigError] = []
    first_seen: dict[ResourceKey, Document] = {}
    for doc in docs:
        where = f"{doc.source} document {doc.index} ({_label(doc.body)})"
        try:
            item = parse_body(doc.body)
        except FieldError as err:
            problems.append(ConfigError(where, err.path, err.expected, err.got))
            continue
        except RecursionError:
            problems.append(ConfigError(where, "(document)", "a document nested less deeply"))
            continue
        earlier = first_seen.get(item.key)
        if earlier is not None:
            problems.append(
                ConfigError(
                    where,
                    "metadata.name",
                    f"a name not already used by {earlier.source} document {earlier.index}",
                    str(item.key),
                )
            )
            continue
        first_seen[item.key] = doc
        parsed.append(item)
    if problems:
        raise InvalidResourcesError(problems)
    return parsed


def parse_stored(document: Mapping[str, Any]) -> ParsedResource:
    """Re-read a document the controller stored or sent; it was valid when written."""
    try:
        return parse_body(document)
    except FieldError as err:
        raise ConfigError("stored resource", err.path, err.expected, err.got) from err


def to_yaml(documents: Sequence[Mapping[str, Any]]) -> str:
    return yaml.safe_dump_all(
        [dict(d) for d in documents], sort_keys=False, default_flow_style=False
    )
