"""demo.protogen: the committed ratings stubs are exactly what the .proto generates today."""

from __future__ import annotations

from pathlib import Path

from demo.protogen import GENERATED_NAMES, PACKAGE_DIR, generate


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    generated = generate(tmp_path)
    assert sorted(p.name for p in generated) == sorted(GENERATED_NAMES)
    stale = [
        path.name
        for path in generated
        if path.read_bytes() != (PACKAGE_DIR / path.name).read_bytes()
    ]
    assert not stale, f"stale generated files {stale}: run `python -m demo.protogen` and commit"
