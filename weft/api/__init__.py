"""Weft API definitions (protobuf) and their generated code."""
