"""Regenerate demo/ratings_pb2*.py from demo/proto/ratings.proto (run: python -m demo.protogen)."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from weft.api.protogen import mypy_plugin_args

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_FILE = PACKAGE_DIR / "proto" / "ratings.proto"
GENERATED_NAMES = (
    "ratings_pb2.py",
    "ratings_pb2.pyi",
    "ratings_pb2_grpc.py",
    "ratings_pb2_grpc.pyi",
)


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules into out_dir and return their paths.

    The .proto is compiled from a staging copy at `demo/ratings.proto` so the generated stub
    imports `from demo import ratings_pb2`, which works when `demo` is imported as a package.
    mypy-protobuf writes the .pyi stubs, so the services type-check against real message types.
    """
    from grpc_tools import protoc  # heavy; only the generator needs it

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="demo-protogen-") as tmp:
        staging = Path(tmp) / "src"
        (staging / "demo").mkdir(parents=True)
        shutil.copyfile(PROTO_FILE, staging / "demo" / "ratings.proto")
        generated = Path(tmp) / "out"
        generated.mkdir()
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{staging}",
                *mypy_plugin_args(),
                f"--python_out={generated}",
                f"--grpc_python_out={generated}",
                f"--mypy_out={generated}",
                f"--mypy_grpc_out={generated}",
                str(staging / "demo" / "ratings.proto"),
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed with status {status} on {PROTO_FILE}")
        paths = []
        for name in GENERATED_NAMES:
            target = out_dir / name
            shutil.copyfile(generated / "demo" / name, target)
            paths.append(target)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.protogen",
        description="Regenerate the ratings gRPC stubs from demo/proto/ratings.proto.",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=PACKAGE_DIR,
        help="where to write the generated modules (default: the demo package itself)",
    )
    args = parser.parse_args(argv)
    for path in generate(args.out_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
