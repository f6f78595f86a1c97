#!/bin/sh
# Boots the Pi image's own kernel and root file system under qemu-system-aarch64 (machine
# "virt", not a Pi: qemu cannot emulate a Pi 4/5 here), with the box's port 8080 forwarded to
# 127.0.0.1:PORT. Checks the userland, units and service; says nothing about Pi hardware.
#   images/pi/qemu-boot.sh IMAGE PORT [SERIAL_LOG]
set -eu
img="$1"; port="$2"; log="${3:-/dev/stdout}"
command -v qemu-system-aarch64 >/dev/null || { echo "install qemu-system-arm" >&2; exit 1; }
work="$(mktemp -d)"
qpid=""
trap 'test -n "$qpid" && kill "$qpid" 2>/dev/null; rm -rf "$work"' EXIT
trap 'exit 143' TERM INT
# Kernel and initrd come from the image's FAT partition.
line="$(sfdisk -d "$img" | grep 'type=c' | head -n 1)"
start="$(echo "$line" | sed 's/.*start= *\([0-9]*\).*/\1/')"
size="$(echo "$line" | sed 's/.*size= *\([0-9]*\).*/\1/')"
dd if="$img" of="$work/boot.vfat" bs=512 skip="$start" count="$size" status=none
kernel="$(mdir -b -i "$work/boot.vfat" ::/ | grep -o 'vmlinuz-[^ ]*' | head -n 1)"
initrd="$(mdir -b -i "$work/boot.vfat" ::/ | grep -o 'initrd.img-[^ ]*' | head -n 1)"
mcopy -i "$work/boot.vfat" "::/$kernel" "$work/vmlinuz"
mcopy -i "$work/boot.vfat" "::/$initrd" "$work/initrd"
# snapshot=on keeps the image pristine: first boot's writes go to a temporary file.
# cortex-a76 is the Pi 5's core (llama.cpp loads the same CPU variant as on the board). "max"
# would add pointer authentication, which trixie's kernel and userland use throughout and
# qemu emulates very slowly: a loaded build VM then starves the guest into lockups.
qemu-system-aarch64 -M virt -cpu cortex-a76 -smp 2 -m 2048 -nographic -no-reboot \
  -kernel "$work/vmlinuz" -initrd "$work/initrd" \
  -append "root=LABEL=mgsroot rw console=ttyAMA0 panic=-1 systemd.show_status=1" \
  -drive if=none,file="$img",format=raw,snapshot=on,id=hd -device virtio-blk-pci,drive=hd \
  -netdev user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:"$port"-:8080 -device virtio-net-pci,netdev=n0 \
  -serial "file:$log" -monitor none &
qpid=$!
wait "$qpid"
