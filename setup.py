"""Builds weft._native, the agent's compiled HBONE data path (weft/native/); the rest is pyproject.

The extension is optional: where it cannot be built (no libssl headers, e.g. a Vagrant guest
provisioned offline), installation goes on and the agent runs its Python data path.
"""

from glob import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "weft._native",
            sources=sorted(glob("weft/native/*.c")),
            depends=sorted(glob("weft/native/*.h")),
            libraries=["ssl", "crypto"],
            # hidden: the engine's files share functions (native.h) that must not be exported
            extra_compile_args=[
                "-O2",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-fvisibility=hidden",
            ],
            optional=True,
        )
    ]
)
