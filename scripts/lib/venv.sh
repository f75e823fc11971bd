# shellcheck shell=bash
# The project's Python tools live in its own virtual environment, .venv
# (git-ignored); nothing is pip-installed anywhere else. Sourced by the
# scripts, from the repository's root:
#   . scripts/lib/venv.sh
#   venv_install tools/requirements-test.txt ...   # create .venv, install
#   venv_path                                      # .venv/bin first on PATH
# A requirements file is installed only when it (or a file it includes with
# `-r`) changed since its last install: a copy of what was installed is kept
# in .venv/.installed/, so a second run costs a few milliseconds.

venv_dir=${venv_dir:-$PWD/.venv}
venv_bin=$venv_dir/bin

# Prints a requirements file with its `-r other.txt` includes expanded.
# shellcheck disable=SC2094 # it only reads
venv_expand() {
  local file=$1 line
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
      "-r "*) venv_expand "$(dirname "$file")/${line#-r }" ;;
      *) printf '%s\n' "$line" ;;
    esac
  done < "$file"
}

venv_create() {
  [ -x "$venv_bin/python" ] && "$venv_bin/python" -c '' 2>/dev/null && return 0
  command -v python3 >/dev/null || {
    echo "python3 is required (Python 3 with venv and pip)" >&2
    return 1
  }
  echo "==> creating the project's Python environment ${venv_dir#"$PWD"/}" >&2
  if ! python3 -m venv --clear "$venv_dir" 2>/dev/null; then
    # Debian's own python3 has venv in a package of its own.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "==> installing python3-venv (apt-get)" >&2
      local v
      v=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv "python$v-venv" >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv "python$v-venv" >&2; } ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2
    fi
    python3 -m venv --clear "$venv_dir" || {
      echo "python3 -m venv failed: install Python's venv module (Debian: apt-get install python3-venv)" >&2
      return 1
    }
  fi
}

# Creates .venv if needed and installs each requirements file that changed.
# Serialised by a lock (in .run/, beside the venv), so that two scripts
# started at once do not race.
venv_install() {
  mkdir -p "$(dirname "$venv_dir")/.run"
  (
    flock 9
    venv_create
    mkdir -p "$venv_dir/.installed"
    local req stamp
    for req in "$@"; do
      stamp="$venv_dir/.installed/$(printf '%s' "$req" | tr '/' '_')"
      if ! venv_expand "$req" | cmp -s - "$stamp" 2>/dev/null; then
        echo "==> installing $req into ${venv_dir#"$PWD"/}" >&2
        "$venv_bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
        venv_expand "$req" > "$stamp"
      fi
    done
  ) 9>"$(dirname "$venv_dir")/.run/venv.lock"
}

# Puts .venv/bin first on PATH, so that python3, moto_server, schemathesis
# (and the tests' `python3 -m openapi_python_client`) are the project's.
venv_path() {
  case ":$PATH:" in
    *":$venv_bin:"*) ;;
    *) PATH="$venv_bin:$PATH" ;;
  esac
  export PATH VIRTUAL_ENV="$venv_dir"
}
