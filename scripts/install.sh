#!/usr/bin/env bash
# Install kws as a systemd service on Raspberry Pi OS (or Debian) Bookworm or Trixie.
#
#   sudo scripts/install.sh                 install or upgrade from this checkout, enable and start kws
#   sudo scripts/install.sh --uninstall     remove the service, /opt/kws and the user kws; keep config and data
#   scripts/install.sh --dry-run            print every action, change nothing
#
# What it does, each step only when needed (a second run changes nothing):
#   apt-get install the system packages kws needs (PortAudio, libsndfile, python3-venv)
#   the system user kws (group kws, also in audio), home /var/lib/kws
#   a virtualenv /opt/kws with kws pip-installed (from this checkout, or --source DIR|WHEEL)
#   /etc/kws/kws.toml: the commented default config, written only if there is none (yours is never touched)
#   /var/lib/kws/models: for your own models (the service may write only under /var/lib/kws)
#   /etc/systemd/system/kws.service from systemd/kws.service; daemon-reload, enable, (re)start
#
# Output: "+ CMD" is an action taken, "(dry run) CMD" one that would be, "(--root, not run) CMD" a
# system command (apt-get, useradd, systemctl, chown) left out because of --root, "ok: ..." a step
# with nothing to do.
set -euo pipefail

readonly PROGRAM=install.sh
readonly SERVICE=kws
readonly SERVICE_USER=kws
readonly PREFIX=/opt/kws
readonly CONFIG_DIR=/etc/kws
readonly CONFIG_FILE=/etc/kws/kws.toml
readonly STATE_DIR=/var/lib/kws
readonly UNIT_FILE=/etc/systemd/system/kws.service
readonly SOURCE_STAMP=/opt/kws/.kws-source   # what pip last installed, to skip an unchanged re-install
APT_PACKAGES=(python3 python3-venv libportaudio2 libsndfile1 ca-certificates)

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHECKOUT=$(dirname "$SCRIPT_DIR")
readonly SCRIPT_DIR CHECKOUT

usage() {
    cat <<EOF
usage: sudo scripts/install.sh [options]

  --dry-run        print every action and change nothing (needs no root)
  --uninstall      stop and remove the service, $PREFIX and the user $SERVICE_USER;
                   keeps $CONFIG_DIR (your config) and $STATE_DIR (models, recordings, captures)
  --no-start       install and enable, but do not start (or restart) the service
  --root DIR       install under DIR instead of / (for tests): every path is prefixed
                   with DIR, and apt-get, useradd, chown and systemctl are shown, not run
                   (the virtualenv's scripts then name DIR/opt/kws: not for building images)
  --source PATH    what pip installs: a kws source folder or wheel (default: $CHECKOUT)
  --python PATH    the Python that makes the virtualenv (default: /usr/bin/python3)
  --skip-pip       make the virtualenv but do not pip install kws into it (tests)
  -h, --help       this help
EOF
}

die() {
    echo "$PROGRAM: error: $*" >&2
    exit 2
}

ARGS=("$@")
DRY_RUN=0
UNINSTALL=0
START=1
SKIP_PIP=0
ROOT=""
SOURCE="$CHECKOUT"
PYTHON=/usr/bin/python3

while (($#)); do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --no-start) START=0 ;;
        --skip-pip) SKIP_PIP=1 ;;
        --root | --source | --python)
            (($# >= 2)) || die "$1 needs a value"
            case "$1" in
                --root) ROOT="$2" ;;
                --source) SOURCE="$2" ;;
                --python) PYTHON="$2" ;;
            esac
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

if [[ -e "$SOURCE" ]]; then
    SOURCE=$(realpath "$SOURCE")
fi
if [[ -n "$ROOT" ]]; then
    [[ "$ROOT" == /* ]] || die "--root needs an absolute path, not $ROOT"
    ROOT="${ROOT%/}"
    [[ -n "$ROOT" ]] || die "--root / is the default; leave the option out"
    [[ -d "$ROOT" ]] || die "--root $ROOT is not a folder: create it first"
fi

# ---- actions -------------------------------------------------------------------------------------

CHANGED=0   # set when something was (or, in a dry run, would be) changed

quoted() {
    local out
    printf -v out '%q ' "$@"
    echo "${out% }"
}

# Run a command that changes files under ROOT (or prints it in a dry run).
act() {
    CHANGED=1
    if ((DRY_RUN)); then
        echo "(dry run) $(quoted "$@")"
    else
        echo "+ $(quoted "$@")"
        "$@"
    fi
}

# Run a command that changes the system outside the files under ROOT: packages, users, systemd.
# With --root it is never run, only shown.
system() {
    if [[ -n "$ROOT" ]]; then
        echo "(--root, not run) $(quoted "$@")"
    else
        act "$@"
    fi
}

ok() {
    echo "ok: $*"
}

# ---- checks --------------------------------------------------------------------------------------

ARCH="${KWS_ARCH:-$(uname -m)}"   # KWS_ARCH, KWS_OS_RELEASE: for the tests
OS_RELEASE="${KWS_OS_RELEASE:-/etc/os-release}"

check_os() {
    local os_release="$OS_RELEASE" arch="$ARCH"
    [[ -r "$os_release" ]] || die "cannot read $os_release: this installer supports Raspberry Pi OS or Debian, Bookworm or Trixie"
    local ID="" ID_LIKE="" VERSION_CODENAME="" PRETTY_NAME=""
    # shellcheck disable=SC1090
    source <(grep -E '^(ID|ID_LIKE|VERSION_CODENAME|PRETTY_NAME)=' "$os_release")
    if [[ "$ID" != debian && "$ID" != raspbian && " $ID_LIKE " != *" debian "* ]] \
        || [[ "$VERSION_CODENAME" != bookworm && "$VERSION_CODENAME" != trixie ]]; then
        die "unsupported OS ${PRETTY_NAME:-$ID $VERSION_CODENAME}: this installer supports Raspberry Pi OS or Debian, Bookworm or Trixie (elsewhere, install by hand: README, Run on a Raspberry Pi)"
    fi
    case "$arch" in
        aarch64 | x86_64) ;;   # ai-edge-litert has wheels
        armv7l)
            # 32-bit Pi OS: only tflite-runtime, whose last wheels (2.14) are for Python 3.8 to 3.11.
            [[ "$VERSION_CODENAME" == bookworm ]] || die "$TFLITE_32BIT (32-bit $VERSION_CODENAME has a newer one)"
            ;;
        *) die "unsupported architecture $arch: kws needs a 64-bit ARM (aarch64), 32-bit ARMv7 (armv7l, Bookworm) or x86-64 machine; a Pi Zero or Pi 1 (armv6l) has no TFLite interpreter wheels" ;;
    esac
    OS_NAME="${PRETTY_NAME:-$ID $VERSION_CODENAME}"
    if [[ "$arch" == armv7l ]]; then
        APT_PACKAGES+=(libopenblas0 libgfortran5)   # piwheels' numpy and scipy use the system's OpenBLAS
    fi
}

readonly TFLITE_32BIT="on 32-bit ARM (armv7l) kws needs Python 3.11 or older: its only TFLite interpreter there, tflite-runtime, has no wheels for newer Pythons; install 64-bit Raspberry Pi OS (Pi 3, 4, 5, Zero 2), or 32-bit Bookworm"

check_python() {
    [[ -x "$PYTHON" ]] || die "no Python at $PYTHON: sudo apt-get install python3 python3-venv (or give --python PATH)"
    local version
    version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
        || die "$PYTHON does not run: reinstall python3 (or give --python PATH)"
    # shellcheck disable=SC2015  # (either failing is an error)
    [[ "$version" =~ ^3\.([0-9]+)$ ]] && ((BASH_REMATCH[1] >= 9)) \
        || die "kws needs Python 3.9 or newer; $PYTHON is $version"

    if [[ "$ARCH" == armv7l ]] && ((BASH_REMATCH[1] > 11)); then
        die "$TFLITE_32BIT; $PYTHON is $version"
    fi
    echo "platform: $OS_NAME, $ARCH, Python $version ($PYTHON)"
}

# ---- install steps -------------------------------------------------------------------------------

install_packages() {
    local missing=() package
    for package in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$package")
        fi
    done
    if ((${#missing[@]} == 0)); then
        ok "system packages installed: ${APT_PACKAGES[*]}"
        return
    fi
    system env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    system env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

create_user() {
    if [[ -n "$ROOT" ]]; then
        system useradd --system --user-group --groups audio --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "kws keyword spotter" "$SERVICE_USER"
    elif getent passwd "$SERVICE_USER" >/dev/null; then
        if id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx audio; then
            ok "user $SERVICE_USER exists, in group audio"
        else
            system usermod --append --groups audio "$SERVICE_USER"
        fi
    else
        system useradd --system --user-group --groups audio --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "kws keyword spotter" "$SERVICE_USER"
    fi
}

# make_dir PATH MODE OWNER:GROUP
make_dir() {
    local path="$ROOT$1"
    if [[ -d "$path" ]]; then
        ok "$1 exists"
        return
    fi
    act install -d -m "$2" "$path"
    system chown "$3" "$path"
}

source_fingerprint() {
    # What pip would install: the wheel's bytes, or the files of a source folder that go into it.
    if [[ -f "$SOURCE" ]]; then
        sha256sum "$SOURCE" | cut -d' ' -f1
    else
        (cd "$SOURCE" && find pyproject.toml README.md kws training models -type f \
            ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 2>/dev/null | sort -z | xargs -0 sha256sum) \
            | sha256sum | cut -d' ' -f1
    fi
}

install_venv() {
    local venv="$ROOT$PREFIX"
    if [[ -x "$venv/bin/python" ]]; then
        ok "virtualenv $PREFIX exists"
    else
        act "$PYTHON" -m venv "$venv"
    fi
    if ((SKIP_PIP)); then
        echo "skipped (--skip-pip): pip install $SOURCE"
        return
    fi
    [[ -d "$SOURCE" && -f "$SOURCE/pyproject.toml" ]] || [[ -f "$SOURCE" && "$SOURCE" == *.whl ]] \
        || die "--source $SOURCE is neither a kws source folder (with pyproject.toml) nor a .whl file"
    local fingerprint
    fingerprint="$SOURCE $(source_fingerprint)"
    if [[ -x "$venv/bin/kws" && -f "$ROOT$SOURCE_STAMP" && "$(cat "$ROOT$SOURCE_STAMP")" == "$fingerprint" ]]; then
        ok "kws in $PREFIX is up to date with $SOURCE"
        return
    fi
    # (pip always re-installs a source folder; --upgrade also re-installs a wheel of the same version)
    act "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$SOURCE"
    if ((DRY_RUN)); then
        echo "(dry run) record $fingerprint in $SOURCE_STAMP"
    else
        echo "$fingerprint" >"$ROOT$SOURCE_STAMP"
    fi
    PACKAGE_CHANGED=1
}

install_config() {
    local target="$ROOT$CONFIG_FILE"
    if [[ -e "$target" ]]; then
        ok "$CONFIG_FILE exists: kept as it is"
        return
    fi
    act install -m 0640 "$CHECKOUT/systemd/kws.toml" "$target"
    system chown "root:$SERVICE_USER" "$target"
}

install_unit() {
    local target="$ROOT$UNIT_FILE"
    if [[ -f "$target" ]] && cmp -s "$CHECKOUT/systemd/kws.service" "$target"; then
        ok "$UNIT_FILE is up to date"
        return
    fi
    act install -D -m 0644 "$CHECKOUT/systemd/kws.service" "$target"
    UNIT_CHANGED=1
}

systemd_running() {
    [[ -z "$ROOT" && -d /run/systemd/system ]]
}

enable_and_start() {
    if [[ -n "$ROOT" ]]; then
        system systemctl daemon-reload
        system systemctl enable "$SERVICE"
        ((START)) && system systemctl restart "$SERVICE"
        return 0
    fi
    if ! command -v systemctl >/dev/null; then
        echo "systemctl not found (no systemd here): $UNIT_FILE is installed, but not enabled or started"
        return 0
    fi
    if ! systemd_running; then
        # A chroot or container: enable works on the files; nothing can be started.
        if [[ -e /etc/systemd/system/multi-user.target.wants/kws.service ]]; then
            ok "kws is enabled"
        else
            act systemctl enable "$SERVICE"
        fi
        echo "systemd is not running here (chroot or container?): kws starts at the next boot"
        return 0
    fi
    ((UNIT_CHANGED)) && act systemctl daemon-reload
    if systemctl is-enabled --quiet "$SERVICE" 2>/dev/null; then
        ok "kws is enabled"
    else
        act systemctl enable "$SERVICE"
    fi
    if ((!START)); then
        echo "not started (--no-start): sudo systemctl start kws"
    elif ! systemctl is-active --quiet "$SERVICE"; then
        act systemctl start "$SERVICE"
    elif ((UNIT_CHANGED || PACKAGE_CHANGED)); then
        act systemctl restart "$SERVICE"
    else
        ok "kws is running"
    fi
}

do_install() {
    UNIT_CHANGED=0
    PACKAGE_CHANGED=0
    if [[ -x "$PYTHON" ]]; then
        check_python   # before apt-get, when there is a Python already (Raspberry Pi OS has one)
        install_packages
    else
        install_packages
        ((DRY_RUN)) || check_python
    fi
    create_user
    make_dir "$CONFIG_DIR" 0750 "root:$SERVICE_USER"
    install_config
    make_dir "$STATE_DIR" 0750 "$SERVICE_USER:$SERVICE_USER"
    make_dir "$STATE_DIR/models" 0750 "$SERVICE_USER:$SERVICE_USER"
    install_venv
    install_unit
    enable_and_start
    if ((CHANGED)); then
        echo "done. Config: $CONFIG_FILE (then: sudo systemctl reload kws). Status: systemctl status kws. Log: journalctl -u kws -f"
    else
        echo "done: nothing to change"
    fi
}

# ---- uninstall -----------------------------------------------------------------------------------

do_uninstall() {
    local unit="$ROOT$UNIT_FILE"
    if [[ -e "$unit" ]]; then
        if [[ -n "$ROOT" ]] || systemd_running; then
            system systemctl disable --now "$SERVICE"
        else
            act systemctl disable "$SERVICE"
        fi
        act rm -f "$unit"
        if [[ -n "$ROOT" ]] || systemd_running; then
            system systemctl daemon-reload
        fi
    else
        ok "no $UNIT_FILE"
    fi
    if [[ -e "$ROOT$PREFIX" ]]; then
        act rm -rf "$ROOT$PREFIX"
    else
        ok "no $PREFIX"
    fi
    if [[ -n "$ROOT" ]]; then
        system userdel "$SERVICE_USER"
    elif getent passwd "$SERVICE_USER" >/dev/null; then
        act userdel "$SERVICE_USER"
    else
        ok "no user $SERVICE_USER"
    fi
    echo "kept $CONFIG_DIR (your config) and $STATE_DIR (models, recordings, captures);" \
        "to remove them too: sudo rm -r $ROOT$CONFIG_DIR $ROOT$STATE_DIR"
}

# ---- main ----------------------------------------------------------------------------------------

if ((!DRY_RUN)) && [[ -z "$ROOT" ]] && ((EUID != 0)); then
    die "run as root: sudo $0 ${ARGS[*]}"
fi
((DRY_RUN)) && echo "dry run: nothing is changed"
if ((UNINSTALL)); then
    do_uninstall
else
    check_os
    do_install
fi
