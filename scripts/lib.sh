# shellcheck shell=bash
# Shared helpers for scripts/test and scripts/run-local. Source it; do not run it.
#
# Both scripts build pushgate through `build_pushgate`, with one feature list and one set of
# cargo settings, so the binary scripts/test builds is the one scripts/run-local runs and
# neither rebuilds what the other compiled.
#
# Installs what the tests and the local run need when it is missing (a fresh Debian machine has
# none of it): Prosody 0.12 + prosody-modules (mod_cloud_notify) from Debian, and the Python
# packages of tests/e2e/requirements.txt from PyPI (slixmpp, and Synapse for the Matrix tests:
# ~30 s more on a fresh machine, nothing once installed); the `openssl` CLI (the APNs end-to-end
# tests make .p12 files with it, including legacy RC2-40 ones); Kamailio 5.6 + http_client and
# sipp for the SIP end-to-end tests.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive

# Cargo features of the builds the tests run: the legacy FCM XMPP (CCS) provider is left out of
# a default build (docs/fcm.md), but its tests run.
# shellcheck disable=SC2034 # read by the scripts that source this file
PUSHGATE_FEATURES="fcm-xmpp"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run as root, or through sudo when we are not root (never prompts under CI=true).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [ "${CI:-}" = "true" ]; then sudo -n "$@"; else sudo "$@"; fi
    else
        die "need root for: $*"
    fi
}

# Where Debian's prosody-modules puts community modules (loaded by name, no plugin_paths).
have_cloud_notify() {
    local d
    for d in /usr/lib/prosody/modules /usr/local/lib/prosody/modules; do
        if [ -e "$d/mod_cloud_notify/mod_cloud_notify.lua" ] || [ -e "$d/mod_cloud_notify.lua" ]; then
            return 0
        fi
    done
    return 1
}

# The prosody package may start a system-wide Prosody (systemd host, or an init script that
# policy-rc.d lets through). Tests never use its ports, but do not leave it running.
stop_system_prosody() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        if systemctl is-active --quiet prosody 2>/dev/null || systemctl is-enabled --quiet prosody 2>/dev/null; then
            log "stopping and disabling the system prosody service"
            as_root systemctl disable --now prosody >/dev/null 2>&1 || true
        fi
    elif [ -x /etc/init.d/prosody ] && [ -s /run/prosody/prosody.pid ] \
        && kill -0 "$(cat /run/prosody/prosody.pid)" 2>/dev/null; then
        log "stopping the system prosody service"
        as_root /etc/init.d/prosody stop >/dev/null 2>&1 || true
    fi
}

# Debian packages the tests need: Prosody + prosody-modules, and the openssl CLI.
ensure_prosody() {
    if command -v prosody >/dev/null 2>&1 && command -v prosodyctl >/dev/null 2>&1 && have_cloud_notify \
        && command -v openssl >/dev/null 2>&1; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "prosody + prosody-modules or openssl are missing and there is no apt-get: install Prosody 0.12, prosody-modules (mod_cloud_notify) and the openssl CLI by hand"
    log "installing prosody, prosody-modules and openssl (Debian packages)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        prosody prosody-modules openssl
    stop_system_prosody
    command -v prosody >/dev/null 2>&1 || die "prosody is still missing after apt-get install"
    have_cloud_notify || die "mod_cloud_notify is still missing after installing prosody-modules"
    command -v openssl >/dev/null 2>&1 || die "openssl is still missing after apt-get install"
}

# ejabberd 23.01 (Debian) for tests/e2e/test_ejabberd.py, which starts it as a plain Erlang VM
# from a temp dir: the package's system service is stopped and disabled, its files are all we use.
have_ejabberd() {
    command -v erl >/dev/null 2>&1 && dpkg -L ejabberd 2>/dev/null | grep -q '/ejabberd-[^/]*/ebin$'
}

stop_system_ejabberd() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        if systemctl is-active --quiet ejabberd 2>/dev/null || systemctl is-enabled --quiet ejabberd 2>/dev/null; then
            log "stopping and disabling the system ejabberd service"
            as_root systemctl disable --now ejabberd >/dev/null 2>&1 || true
        fi
    elif [ -x /etc/init.d/ejabberd ]; then
        as_root /etc/init.d/ejabberd stop >/dev/null 2>&1 || true
    fi
}

ensure_ejabberd() {
    if have_ejabberd; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "ejabberd is missing and there is no apt-get: install ejabberd 23.01 by hand"
    log "installing ejabberd (Debian package)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold ejabberd
    stop_system_ejabberd
    have_ejabberd || die "ejabberd is still missing after apt-get install"
}

# Kamailio 5.6 with its HTTP client module, and sipp (Debian sip-tester), for
# tests/e2e/test_sip.py: Kamailio runs from a temp dir in the foreground with
# etc/examples/kamailio-pushgate.cfg; the package's system service is stopped and disabled.
have_kamailio() {
    command -v kamailio >/dev/null 2>&1 && command -v sipp >/dev/null 2>&1 \
        && dpkg -L kamailio-utils-modules 2>/dev/null | grep -q '/http_client\.so$'
}

stop_system_kamailio() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        if systemctl is-active --quiet kamailio 2>/dev/null || systemctl is-enabled --quiet kamailio 2>/dev/null; then
            log "stopping and disabling the system kamailio service"
            as_root systemctl disable --now kamailio >/dev/null 2>&1 || true
        fi
    elif [ -x /etc/init.d/kamailio ] && [ -s /run/kamailio/kamailio.pid ] \
        && kill -0 "$(cat /run/kamailio/kamailio.pid)" 2>/dev/null; then
        log "stopping the system kamailio service"
        as_root /etc/init.d/kamailio stop >/dev/null 2>&1 || true
    fi
}

ensure_kamailio() {
    if have_kamailio; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "kamailio, kamailio-utils-modules or sipp is missing and there is no apt-get: install Kamailio 5.6 with http_client and sipp 3.6 by hand"
    log "installing kamailio, kamailio-utils-modules and sip-tester (Debian packages)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        kamailio kamailio-utils-modules sip-tester
    stop_system_kamailio
    have_kamailio || die "kamailio (with http_client.so) or sipp is still missing after apt-get install"
}

python_deps_ok() {
    python3 - "$REPO_ROOT/tests/e2e/requirements.txt" <<'PY' >/dev/null 2>&1
import importlib.metadata, re, sys
import cryptography, h2, pytest, slixmpp
assert slixmpp.__version__.startswith("1.17"), slixmpp.__version__
# every exact pin (matrix-synapse) by its metadata: importing Synapse takes a second
for line in open(sys.argv[1]):
    pin = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s*#]+)", line.strip())
    if pin:
        assert importlib.metadata.version(pin[1]) == pin[2], pin[0]
PY
}

ensure_python_deps() {
    command -v python3 >/dev/null 2>&1 || die "python3 is missing"
    if python_deps_ok; then
        return 0
    fi
    log "installing Python test dependencies (tests/e2e/requirements.txt)"
    local pip=(python3 -m pip install -q --disable-pip-version-check --no-input -r "$REPO_ROOT/tests/e2e/requirements.txt")
    if ! "${pip[@]}" 2>"${TMPDIR:-/tmp}/pushgate-pip.err"; then
        if grep -q externally-managed "${TMPDIR:-/tmp}/pushgate-pip.err"; then
            # Debian's own python3 (PEP 668): no system-wide pip installs without this flag
            "${pip[@]}" --break-system-packages
        else
            cat "${TMPDIR:-/tmp}/pushgate-pip.err" >&2
            die "pip install failed"
        fi
    fi
    python_deps_ok || die "Python test dependencies still not importable after pip install"
}

# A free TCP port on 127.0.0.1 (bind 0, read, close).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# `cargo SUBCOMMAND ARGS...` over the whole workspace with the shared settings. Incremental
# compilation is part of the profile: a different CARGO_INCREMENTAL rebuilds the workspace crates.
pushgate_cargo() {
    local sub="$1"
    shift
    CARGO_INCREMENTAL=0 cargo "$sub" --workspace --features "$PUSHGATE_FEATURES" "$@"
}

# Build every target of the workspace (dev profile), as `cargo test` needs it. All targets, not
# just the binary: dev-dependencies switch on features of shared crates (tempfile's rustix wants
# bitflags/std, proptest's regex wants regex-syntax/unicode, ...), and `cargo build --bin
# pushgate` alone would compile those crates and everything above them (sqlx, sea-orm, reqwest,
# tracing-subscriber, the workspace crates) a second time without them.
build_pushgate() {
    pushgate_cargo build --all-targets
}

# The binary build_pushgate leaves behind, or $PUSHGATE_BIN when set.
pushgate_bin() {
    local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
    case "$target" in
        /*) ;;
        *) target="$REPO_ROOT/$target" ;;
    esac
    printf '%s\n' "${PUSHGATE_BIN:-$target/debug/pushgate}"
}
