# shellcheck shell=bash
# Sourced by scripts/run and scripts/test (not run on its own): virtual environments for this
# checkout. Call from the repo root.

# pip, quiet, without the warnings about index locations that this machine's pip.conf may name
pip_install() {  # pip_install VENV_DIR ARGS...
  local dir="$1"
  shift
  "$dir/bin/python" -m pip install -q "$@" 2>&1 | { grep -v -E "^WARNING: (Location|Url) '" || true; }
}

# ensure_venv EXTRA [DIR [PYTHON...]]: DIR (default .venv) made with the first working PYTHON.
ensure_venv() {
  local extra="$1" dir="${2:-.venv}" py stamp want
  shift $(($# < 2 ? $# : 2))
  [ $# -gt 0 ] || set -- "${VENV_PYTHON:-}" python3.11 python3
  if ! "$dir/bin/python" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
    for py in "$@"; do
      [ -n "$py" ] && "$py" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null && break
      py=""
    done
    [ -n "$py" ] || { echo "${0##*/}: need Python >= 3.10 (set VENV_PYTHON=...)" >&2; exit 1; }
    echo "${0##*/}: creating $dir with $("$py" -c 'import sys; print(sys.executable)')" >&2
    rm -rf "$dir"
    "$py" -m venv "$dir"
  fi
  # Extension modules in src/ (a compiled build made in this tree rather than by
  # scripts/compiled-wheel) would be imported instead of the .py files: remove them.
  if [ -n "$(find src -name '*.so' -print -quit)" ]; then
    echo "${0##*/}: removing compiled modules from src/ (build them with scripts/compiled-wheel)" >&2
    find src -name '*.so' -delete
  fi
  stamp="$dir/.installed-$extra"
  want="$(cat pyproject.toml <("$dir/bin/python" -VV) | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "${0##*/}: installing -e .[$extra] into $dir" >&2
    pip_install "$dir" --upgrade pip
    pip_install "$dir" -e ".[$extra]"
    echo "$want" >"$stamp"
  fi
}

# ensure_compiled_venv DIR PYTHON: DIR with the compiled build (scripts/compiled-wheel) and the
# dev extra, installed from the wheel, not editable; rebuilt when pyproject.toml or src/ changed.
ensure_compiled_venv() {
  local dir="$1" py="$2" want wheels wheel
  if ! "$dir/bin/python" -c '' 2>/dev/null; then
    echo "${0##*/}: creating $dir with $("$py" -c 'import sys; print(sys.executable)')" >&2
    rm -rf "$dir"
    "$py" -m venv "$dir"
    pip_install "$dir" --upgrade pip
  fi
  want="$({ cat pyproject.toml; find src -name '*.py' | LC_ALL=C sort | xargs cat
    "$dir/bin/python" -VV; } | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$dir/.installed-compiled" 2>/dev/null)" != "$want" ]; then
    echo "${0##*/}: building the compiled wheel and installing it with [dev] into $dir" >&2
    wheels="$(mktemp -d)"
    wheel="$(scripts/compiled-wheel "$dir/bin/python" "$wheels")"
    "$dir/bin/python" -m pip uninstall -q -y sleipnir 2>/dev/null || true
    pip_install "$dir" "$wheel[dev]"
    rm -rf "$wheels"
    echo "$want" >"$dir/.installed-compiled"
  fi
}

# A Python 3.12 or newer, if this machine has one (on PATH, or installed by pyenv).
find_python_312() {
  local py
  for py in python3.13 python3.12 "$(pyenv root 2>/dev/null)"/versions/3.1[23]*/bin/python3; do
    "$py" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null && { echo "$py"; return; }
  done
}

