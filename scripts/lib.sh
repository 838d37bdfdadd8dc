# shellcheck shell=bash
# Shared helpers for mu2's scripts. Source it; do not execute it.
#
#   MU2_ROOT      the repository root (the parent of scripts/)
#   log MSG...    prints "mu2: MSG" to stderr
#   die MSG...    logs "mu2: error: MSG" and exits 1
#   need_root     dies unless running as uid 0
#   need_cmd CMD  dies unless CMD is on PATH
#   use_cargo     puts $HOME/.cargo/bin on PATH if cargo is not already there

MU2_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
export MU2_ROOT

# Everything the scripts compare or sort must not depend on the caller's locale.
export LC_ALL=C

log() {
    printf 'mu2: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "$(basename "$0") must run as root (try: sudo $0)"
}

need_cmd() {
    local cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' not found on PATH (run scripts/install-deps)"
    done
}

# rustup installs into $HOME/.cargo/bin, which a root shell, sudo or CI may not
# have on PATH.
use_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
        PATH="${HOME:-/root}/.cargo/bin:$PATH"
        export PATH
    fi
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found on PATH nor in ${HOME:-/root}/.cargo/bin: install a Rust toolchain (rustup) first"
}

# Where cargo puts its output, honouring CARGO_TARGET_DIR like cargo does.
cargo_target_dir() {
    local dir=${CARGO_TARGET_DIR:-$MU2_ROOT/target}
    [[ $dir == /* ]] || dir=$MU2_ROOT/$dir
    printf '%s\n' "$dir"
}

# The Rust target of the static guest binaries.
export MU2_GUEST_TARGET=x86_64-unknown-linux-gnu

# make_bundle_variant SRC DST ARG... — copy the OCI bundle SRC to DST (replacing
# DST) and set process.args in DST/config.json to ARG...
make_bundle_variant() {
    local src=$1 dst=$2
    shift 2
    [[ -f $src/config.json && -d $src/rootfs ]] || die "$src is not a bundle (run scripts/build-test-bundles)"
    rm -rf -- "$dst"
    mkdir -p -- "$(dirname -- "$dst")"
    cp -a -- "$src" "$dst"
    python3 - "$dst/config.json" "$@" <<'PY'
import json, sys
path, args = sys.argv[1], sys.argv[2:]
with open(path) as f:
    spec = json.load(f)
spec["process"]["args"] = args
spec["process"]["terminal"] = False
with open(path + ".tmp", "w") as f:
    json.dump(spec, f, indent=2)
    f.write("\n")
import os
os.replace(path + ".tmp", path)
PY
}

# now_ns — wall clock in nanoseconds.
now_ns() {
    date +%s%N
}

# start_private_containerd DIR: starts a containerd whose socket (DIR/c.sock),
# root and state all live under DIR (CRI plugin off), waits for its socket,
# and sets CTD_PID. stop_private_containerd DIR stops it and removes DIR.
start_private_containerd() {
    local dir=$1
    need_cmd containerd ctr
    cat >"$dir/config.toml" <<CONF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/c.sock"
CONF
    containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
    CTD_PID=$!
    echo "$CTD_PID" >"$dir/containerd.pid"
    for _ in $(seq 100); do [[ -S $dir/c.sock ]] && break; sleep 0.1; done
    [[ -S $dir/c.sock ]] || die "containerd did not start: $(tail -5 "$dir/containerd.log")"
}

stop_private_containerd() {
    local dir=$1 pid=${CTD_PID:-}
    [[ -f $dir/containerd.pid ]] && pid=$(<"$dir/containerd.pid")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf -- "$dir"
}
