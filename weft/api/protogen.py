"""Regenerate weft/api/v1/*_pb2*.py(i) from the .proto files: `python -m weft.api.protogen`.

Protos are compiled at their import path (weft/api/v1/x.proto) so the generated modules import
each other as `weft.api.v1.x_pb2`. mypy-protobuf writes the .pyi stubs that strict mypy reads.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

API_DIR = Path(__file__).resolve().parent / "v1"
ROOT = API_DIR.parent.parent.parent  # the directory holding the `weft` package
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    """A mypy-protobuf plugin next to this interpreter (the virtualenv's bin/), or on PATH."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install mypy-protobuf into this environment")
    return found


def mypy_plugin_args() -> list[str]:
    """protoc's --plugin arguments for mypy-protobuf's .pyi stubs (--mypy_out, --mypy_grpc_out);
    demo.protogen uses them too."""
    return [
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
    ]


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto into `out_dir` (laid out as weft/api/v1/...); return the files."""
    from grpc_tools import protoc  # a dev dependency, needed only here

    protos = sorted(str(p.relative_to(ROOT)) for p in API_DIR.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        *mypy_plugin_args(),
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    generated = out_dir / API_DIR.relative_to(ROOT)
    return sorted(p for p in generated.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weft.api.protogen", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: in place)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
