# shellcheck shell=bash
# Helpers shared by scripts/test, scripts/bench and scripts/quickstart.
# Sourced, not run: callers have already set -euo pipefail and cd'd to the root.

# Prints a section header that stands out in a CI log.
section() {
    printf '\n==================== %s ====================\n' "$*"
}

# Puts rustup's cargo on PATH when a non-login shell (CI) lacks it.
ensure_cargo_on_path() {
    if ! command -v cargo >/dev/null && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null || {
        echo "cargo not found: install Rust with rustup first" >&2
        return 1
    }
}

# ensure_apt BINARY:PACKAGE...: installs the packages whose binary is missing.
# Runs apt-get update only when something must be installed, so a warm machine
# never touches the network.
ensure_apt() {
    local missing=() pair
    for pair in "$@"; do
        [[ -x "${pair%%:*}" ]] || command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    ((${#missing[@]} == 0)) && return 0
    apt_install "${missing[@]}"
}

# apt_install PACKAGE...: apt-get update, then install, as root or with sudo.
apt_install() {
    echo "installing with apt-get: $*"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || {
            echo "need root or sudo to install $*" >&2
            return 1
        }
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends "$@"
}
