#!/usr/bin/env bash
# Regenerates deploy/requirements.lock: the exact, hashed runtime dependencies the image
# installs (deploy/Dockerfile). Run it with Python 3.11 on Linux (the image's), from anywhere:
#   deploy/refresh-lock.sh
# It pins every package of pyproject.toml's [project].dependencies and what they need, nothing
# of the extras. The versions are those installed in .venv when it exists (what `make test`
# ran against, given to the resolver as constraints), else the newest that resolve: after
# changing a dependency, run `make test`, then this, and commit the lock with the change.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check 'pip-tools==7.6.2'
# pip-compile builds the project's metadata to read its dependencies: in a copy, so that no
# egg-info lands in the work tree.
mkdir -p "$work/src/deploy"
cp pyproject.toml README.md "$work/src/"
constraints=()
if [[ -x .venv/bin/pip ]]; then
  .venv/bin/pip freeze --exclude-editable >"$work/src/tested-versions.txt"
  constraints=(--constraint tested-versions.txt)
fi
(
  cd "$work/src"
  CUSTOM_COMPILE_COMMAND='deploy/refresh-lock.sh' "$work/venv/bin/pip-compile" --quiet \
    --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
    "${constraints[@]}" --output-file deploy/requirements.lock pyproject.toml
)
cp "$work/src/deploy/requirements.lock" deploy/requirements.lock
echo "deploy/requirements.lock: $(grep -c '==' deploy/requirements.lock) pinned packages"
