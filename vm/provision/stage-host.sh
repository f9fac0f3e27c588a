#!/usr/bin/env bash
# Stages on the host what lab VMs are provisioned from, since guests have no network: the
# project's files (weft-src.tar.gz) and a wheelhouse of its Python dependencies.
#
# usage: stage-host.sh [SHIP_DIR]      (default vm/.vagrant/weft-ship; the Vagrantfile passes its own)
#
# The Vagrantfile runs this before up/provision/reload of every VM, so it is idempotent and quick
# once done: the wheelhouse is rebuilt only when pyproject.toml changed. Building it needs PyPI
# (from the host) the first time; WEFT_WHEELHOUSE=DIR copies a prepared wheelhouse instead.
set -euo pipefail

PROJECT=$(cd "$(dirname "$0")/../.." && pwd)
SHIP=${1:-$PROJECT/vm/.vagrant/weft-ship}
PYTHON=${WEFT_STAGE_PYTHON:-$PROJECT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=/usr/bin/python3

say() { printf '[weft-stage] %s\n' "$*"; }
die() { printf '[weft-stage] ERROR: %s\n' "$*" >&2; exit 1; }

command -v git >/dev/null || die "git is needed to list the project's files: apt-get install git"
git -C "$PROJECT" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
  || die "$PROJECT is not a git checkout: stage from a clone of the repository"

mkdir -p "$SHIP"
# Every VM's trigger runs this, possibly in parallel: one at a time.
exec 9>"$SHIP/.lock"
flock 9

# Tracked and untracked-but-not-ignored files: what a clone plus the working changes contain,
# without .venv, caches or vm/.vagrant.
say "packing $PROJECT into $SHIP/weft-src.tar.gz"
(cd "$PROJECT" && git ls-files -z --cached --others --exclude-standard \
  | tar --null --files-from=- --ignore-failed-read -czf "$SHIP/weft-src.tar.gz.new" 2>/dev/null)
mv "$SHIP/weft-src.tar.gz.new" "$SHIP/weft-src.tar.gz"

wheels="$SHIP/wheelhouse"
stamp="$wheels/.weft-stamp"
# Rebuilt when the dependencies or this recipe change.
recipe="pip-wheel v2 $(sha256sum "$PROJECT/pyproject.toml" | cut -d' ' -f1)"
if [ -n "${WEFT_WHEELHOUSE:-}" ]; then
  [ -d "$WEFT_WHEELHOUSE" ] || die "WEFT_WHEELHOUSE=$WEFT_WHEELHOUSE is not a directory"
  say "copying the wheelhouse from $WEFT_WHEELHOUSE"
  mkdir -p "$wheels"
  cp -u "$WEFT_WHEELHOUSE"/*.whl "$wheels/"
elif [ "$(cat "$stamp" 2>/dev/null)" != "$recipe" ]; then
  say "building the wheelhouse in $wheels with $PYTHON (needs PyPI, once)"
  mkdir -p "$wheels"
  # The runtime dependencies only (guests run Weft, not its tests). setuptools and wheel: the
  # guest builds the project (editable) without an index; pip: node.sh installs it from its
  # wheel, much faster in an emulated guest than ensurepip. The host's Python is Debian 12's 3.11,
  # like the guests', so the binary wheels (grpcio, cryptography, uvloop) fit them.
  "$PYTHON" -m pip wheel -q --disable-pip-version-check --wheel-dir "$wheels" \
    "${PROJECT}" "setuptools>=68" wheel pip \
    || die "pip could not build the wheelhouse; check PyPI access or set WEFT_WHEELHOUSE"
  # The project itself is installed from source in the guest, never from a stale wheel.
  rm -f "$wheels"/weft_mesh-*.whl
  echo "$recipe" >"$stamp"
fi
say "ready: $(find "$wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$SHIP" | cut -f1) in $SHIP"
