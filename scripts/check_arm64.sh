#!/usr/bin/env bash
# Check kws on 64-bit ARM (what a Raspberry Pi 3/4/5 with 64-bit Pi OS runs) from an x86-64 Debian host:
# build a Debian Bookworm arm64 root with debootstrap, run it under qemu-user emulation, install kws
# there with scripts/install.sh (apt packages, user, /opt/kws virtualenv with the aarch64 wheels
# from PyPI, config, unit), then run `kws info` and `kws detect` on Speech Commands clips. Then the
# fallback: a second virtualenv without ai-edge-litert, with tflite-runtime and numpy<2, must detect
# the same keywords and say that it uses tflite-runtime.
#
#   sudo nice scripts/check_arm64.sh [--dir /var/tmp/kws-arm64] [--mirror URL] [--fresh] [--no-fallback]
#
# Slow (the first run 20 to 60 min, mostly pip under emulation); resumable: the root and pip's cache
# stay in --dir, finished steps are skipped, `--fresh` starts over. Needs root, Debian mirrors and PyPI.
# Not part of pytest.
set -euo pipefail

readonly PROGRAM=check_arm64.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHECKOUT=$(dirname "$SCRIPT_DIR")
readonly SCRIPT_DIR CHECKOUT

DIR=/var/tmp/kws-arm64
MIRROR=http://deb.debian.org/debian
SUITE=bookworm
FRESH=0
FALLBACK=1
SHARED="${KWS_SHARED:-$(dirname "$CHECKOUT")/shared}"
# Test-set clips the bundled model detects (tests/conftest.py KEYWORD_CLIPS).
CLIPS=(yes/3b4f8f24_nohash_0.flac stop/37fc5d97_nohash_2.flac)

die() {
    echo "$PROGRAM: error: $*" >&2
    exit 2
}

while (($#)); do
    case "$1" in
        --dir) DIR="${2:?--dir needs a folder}"; shift ;;
        --mirror) MIRROR="${2:?--mirror needs a URL}"; shift ;;
        --fresh) FRESH=1 ;;
        --no-fallback) FALLBACK=0 ;;
        -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

((EUID == 0)) || die "run as root (debootstrap, chroot and mount need it): sudo $0"
[[ "$(uname -m)" == x86_64 || "$(uname -m)" == aarch64 ]] || die "run this on an x86-64 (or aarch64) Debian host"
for clip in "${CLIPS[@]}"; do
    [[ -f "$SHARED/data/speech_commands_test_a/$clip" ]] \
        || die "clip $SHARED/data/speech_commands_test_a/$clip not found: set KWS_SHARED to the shared folder"
done

ROOTFS="$DIR/root"
mkdir -p "$DIR"
STARTED=$SECONDS

step() {
    echo
    echo "=== $* ($((SECONDS - STARTED)) s)"
}

# qemu emulates the CPU of a Raspberry Pi 4 (Cortex-A72: NEON, no dot product, no SVE), not its "max" CPU.
readonly EMULATED_CPU=cortex-a72

in_root() {
    # A command inside the arm64 root, with a clean environment; pip trusts the system's CAs (below).
    chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt QEMU_CPU="$EMULATED_CPU" "$@"
}

MOUNTS=()
unmount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -l "${MOUNTS[i]}" 2>/dev/null || true
    done
    MOUNTS=()
}
trap unmount_all EXIT

mount_once() {
    # mount_once TARGET MOUNT-ARGS...: mount unless something is mounted there already (a crashed run).
    local target="$1"
    shift
    [[ -e "$target" ]] || mkdir -p "$target"
    findmnt -rn --mountpoint "$target" >/dev/null || mount "$@" "$target"
    MOUNTS+=("$target")
}

# ---- host: tools and binfmt_misc ---------------------------------------------------------------------

step "host tools"
missing=()
for package in debootstrap qemu-user-static binfmt-support; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if ((${#missing[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "host: $(uname -m), $(qemu-aarch64-static --version | head -1), debootstrap $(dpkg-query -W -f='${Version}' debootstrap)"

# Running arm64 programs in the root needs the kernel's binfmt_misc to hand them to qemu.
if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
        || die "binfmt_misc is not mounted and cannot be (a container without the privilege?): arm64 programs cannot run here"
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    update-binfmts --enable qemu-aarch64 || die "cannot register qemu-aarch64 with binfmt_misc (update-binfmts --enable qemu-aarch64 failed)"
fi
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "binfmt_misc handler qemu-aarch64 is disabled: update-binfmts --enable qemu-aarch64"
echo "binfmt_misc: qemu-aarch64 $(grep -E '^(interpreter|flags)' /proc/sys/fs/binfmt_misc/qemu-aarch64 | tr '\n' ' ')"

# ---- the arm64 root -----------------------------------------------------------------------------------

remove_root() {
    # Unmount what a killed run left mounted inside (/dev is the host's!) before deleting anything.
    local target
    while read -r target; do
        umount -l "$target"
    done < <(findmnt -rn -o TARGET | grep -F "$ROOTFS/" | sort -r)
    rm -rf --one-file-system "$ROOTFS"
}

if ((FRESH)) && [[ -e "$ROOTFS" ]]; then
    step "--fresh: removing $ROOTFS"
    remove_root
    rm -f "$DIR"/.stage1-done "$DIR"/.stage2-done
fi

if [[ ! -e "$DIR/.stage1-done" ]]; then
    step "debootstrap, first stage: $SUITE arm64 from $MIRROR into $ROOTFS"
    remove_root
    debootstrap --arch=arm64 --foreign --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$MIRROR"
    touch "$DIR/.stage1-done"
fi
# The binfmt handler may lack the F flag (then qemu must be inside the root): copying it does no harm.
install -m 0755 /usr/bin/qemu-aarch64-static "$ROOTFS/usr/bin/qemu-aarch64-static"
if [[ ! -e "$DIR/.stage2-done" ]]; then
    step "debootstrap, second stage (inside the root, emulated)"
    chroot "$ROOTFS" /debootstrap/debootstrap --second-stage
    touch "$DIR/.stage2-done"
fi

mount_once "$ROOTFS/proc" -t proc proc
mount_once "$ROOTFS/sys" -t sysfs sysfs
mount_once "$ROOTFS/dev" --bind /dev
mount_once "$ROOTFS/dev/pts" --bind /dev/pts
# qemu-user (7.2) shows arm64 programs the host's x86 /proc/cpuinfo, and the cpuinfo library inside
# ai-edge-litert then crashes Interpreter() (segmentation fault). A Pi 4's /proc/cpuinfo instead:
cpuinfo="$DIR/cpuinfo"
for ((core = 0; core < 4; core++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$core"
done >"$cpuinfo"
printf 'Revision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1 (emulated)\n' >>"$cpuinfo"
mount_once "$ROOTFS/proc/cpuinfo" --bind "$cpuinfo"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"   # apt must not start services in the root
chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"
# The host's own CAs (e.g. of a TLS-inspecting proxy between this machine and PyPI) for apt and pip.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null \
    && ! diff -rq /usr/local/share/ca-certificates "$ROOTFS/usr/local/share/ca-certificates" >/dev/null 2>&1; then
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    in_root update-ca-certificates >/dev/null   # (slow under emulation: only when they changed)
fi

step "the root"
echo "uname -m: $(in_root uname -m); emulated CPU: $EMULATED_CPU; $(grep -m1 Model "$ROOTFS/proc/cpuinfo")"
grep PRETTY_NAME "$ROOTFS/etc/os-release"

# ---- kws, as scripts/install.sh installs it ----------------------------------------------------------

step "copy this checkout to /usr/src/kws in the root, and the clips to /usr/src/clips"
rm -rf "$ROOTFS/usr/src/kws" "$ROOTFS/usr/src/clips"
mkdir -p "$ROOTFS/usr/src/kws" "$ROOTFS/usr/src/clips"
(cd "$CHECKOUT" && tar -c --exclude=__pycache__ --exclude='*.pyc' pyproject.toml README.md kws training models systemd scripts) \
    | tar -x -C "$ROOTFS/usr/src/kws"
for clip in "${CLIPS[@]}"; do
    cp "$SHARED/data/speech_commands_test_a/$clip" "$ROOTFS/usr/src/clips/${clip%%/*}.flac"
done
CLIP_PATHS=()
for clip in "${CLIPS[@]}"; do
    CLIP_PATHS+=("/usr/src/clips/${clip%%/*}.flac")
done

step "systemd in the root, as Raspberry Pi OS has it (not running: a chroot)"
# shellcheck disable=SC2016  # (dpkg-query's format, not the shell's)
if ! in_root dpkg-query -W -f='${Status}' systemd 2>/dev/null | grep -q 'install ok installed'; then
    in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd
fi
in_root systemctl --version | head -1

step "scripts/install.sh --no-start, inside the root"
in_root /usr/src/kws/scripts/install.sh --no-start

step "what was installed"
in_root ls -l /etc/kws /etc/systemd/system/kws.service /opt/kws/bin/kws
in_root id kws
in_root /opt/kws/bin/python -c 'import platform, sys; print("python", sys.version.split()[0], platform.machine())'
in_root /opt/kws/bin/python -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -iE '^(numpy|scipy|ai-edge-litert|tflite-runtime|sounddevice|soundfile|kws) '

step "kws info (as the user kws)"
in_root runuser -u kws -- /opt/kws/bin/kws info
in_root runuser -u kws -- /opt/kws/bin/kws info --json >"$DIR/info.json"
for clip in "${CLIP_PATHS[@]}"; do
    step "kws detect $clip --config /etc/kws/kws.toml (as the user kws)"
    in_root runuser -u kws -- /opt/kws/bin/kws detect --config /etc/kws/kws.toml "$clip" --json | tee "$DIR/detect-$(basename "$clip" .flac).jsonl"
    [[ -s "$DIR/detect-$(basename "$clip" .flac).jsonl" ]] || die "no detection in $clip on arm64 (ai-edge-litert)"
done

# ---- the fallback interpreter: tflite-runtime with numpy<2, no ai-edge-litert -------------------------

if ((FALLBACK)); then
    step "fallback: /opt/kws-tflite, a virtualenv with tflite-runtime and numpy<2 and without ai-edge-litert"
    [[ -x "$ROOTFS/opt/kws-tflite/bin/python" ]] || in_root python3 -m venv /opt/kws-tflite
    # kws's dependencies from pyproject.toml, except the interpreters; then kws itself without dependencies.
    mapfile -t requirements < <(in_root python3 -c '
import tomllib
for r in tomllib.load(open("/usr/src/kws/pyproject.toml", "rb"))["project"]["dependencies"]:
    if not r.startswith(("ai-edge-litert", "tflite-runtime", "numpy")):
        print(r)')
    in_root /opt/kws-tflite/bin/python -m pip install --quiet --disable-pip-version-check \
        "numpy<2" "tflite-runtime==2.14.*" "${requirements[@]}"
    in_root /opt/kws-tflite/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall /usr/src/kws
    if in_root /opt/kws-tflite/bin/python -c 'import ai_edge_litert' 2>/dev/null; then
        die "ai_edge_litert imports in /opt/kws-tflite: the fallback check would not check anything"
    fi
    echo "ai_edge_litert does not import in /opt/kws-tflite (as intended)"
    in_root /opt/kws-tflite/bin/python -m pip list --disable-pip-version-check 2>/dev/null \
        | grep -iE '^(numpy|ai-edge-litert|tflite-runtime|kws) '
    step "fallback: kws info"
    in_root runuser -u kws -- /opt/kws-tflite/bin/kws info
    in_root runuser -u kws -- /opt/kws-tflite/bin/kws info --json >"$DIR/info-tflite.json"
    for clip in "${CLIP_PATHS[@]}"; do
        step "fallback: kws detect $clip"
        in_root runuser -u kws -- /opt/kws-tflite/bin/kws detect --config /etc/kws/kws.toml "$clip" --json | tee "$DIR/detect-tflite-$(basename "$clip" .flac).jsonl"
        [[ -s "$DIR/detect-tflite-$(basename "$clip" .flac).jsonl" ]] || die "no detection in $clip on arm64 (tflite-runtime)"
    done
fi

# ---- summary ------------------------------------------------------------------------------------------

step "summary"
python3 - "$DIR" "${CLIP_PATHS[@]}" <<'EOF'
import json, sys
from pathlib import Path

folder = Path(sys.argv[1])
for name in ("info.json", "info-tflite.json"):
    if (folder / name).exists():
        info = json.loads((folder / name).read_text())
        print(f"{name}: model {info['model']}, interpreter {info['backend']} {info['backend_version']}, kws {info['kws_version']}")
for clip in sys.argv[2:]:
    stem = Path(clip).stem
    for prefix in ("detect", "detect-tflite"):
        path = folder / f"{prefix}-{stem}.jsonl"
        if path.exists():
            found = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            print(f"{prefix} {stem}.flac: " + ", ".join(f"{d['keyword']} {d['score']:.3f} at {d['offset_s']} s" for d in found))
EOF
echo "arm64 check passed in $((SECONDS - STARTED)) s (root kept in $ROOTFS)"
