"""Operator YAML <-> the domain model: the one package that parses and validates resources."""

from weft.resources.documents import (
    Document,
    InvalidResourcesError,
    ParsedResource,
    parse_body,
    parse_documents,
    parse_stored,
    read_documents,
    to_yaml,
)
from weft.resources.fields import FieldError

__all__ = [
    "Document",
    "FieldError",
    "InvalidResourcesError",
    "ParsedResource",
    "parse_body",
    "parse_documents",
    "parse_stored",
    "read_documents",
    "to_yaml",
]
