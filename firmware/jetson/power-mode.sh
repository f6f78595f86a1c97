#!/bin/sh
# Chooses the Jetson power mode (nvpmodel) from the board the probe reports, and optionally
# pins clocks. Run at boot by mongars-edge-power.service; see firmware/jetson/README.md.
#
# Why these modes: token generation is memory-bandwidth bound, and the higher modes raise the
# EMC (memory) clock as well as the GPU/CPU clocks. We pick the highest mode the stock
# cooler and power supply sustain without throttling, never MAXN (it exceeds the stock
# supply's budget on Nano/NX and trips over-current throttling under long generations).
#
# MONGARS_SYSROOT (tests) reads a recorded board instead of /; DRY_RUN=1 prints the choice.
set -eu
SYSROOT="${MONGARS_SYSROOT:-/}"
BIN="${MONGARS_BIN:-/usr/bin/mongars-edge}"
[ -f /etc/default/mongars-edge-power ] && . /etc/default/mongars-edge-power
# MONGARS_POWER_MODE=NAME in /etc/default/mongars-edge-power overrides the choice.
override="${MONGARS_POWER_MODE:-}"
# Pinning clocks removes DVFS ramp-up (a slightly faster first token) but costs idle power on
# a box that is idle most of the day, so it is off unless asked for.
clocks="${MONGARS_JETSON_CLOCKS:-0}"

board="$("$BIN" probe --json --sysroot "$SYSROOT" 2>/dev/null | sed -n 's/^ *"board": "\([^"]*\)".*/\1/p' | head -n 1)"
conf="$SYSROOT/etc/nvpmodel.conf"
[ "$SYSROOT" = / ] && conf=/etc/nvpmodel.conf
if [ ! -f "$conf" ]; then
  echo "mongars-edge-power: no $conf (not L4T?); leaving power settings alone" >&2
  exit 0
fi

case "$board" in
  # Orin Nano Super (JetPack 6.2) has 25W; earlier Orin Nano releases top out at 15W.
  jetson-orin-nano) wanted="25W 15W" ;;
  # Orin NX 16GB has 25W, NX 8GB 20W.
  jetson-orin-nx) wanted="25W 20W 15W" ;;
  # AGX Orin: 50W is the highest non-MAXN mode and runs cool under the stock heatsink.
  jetson-agx-orin) wanted="50W 30W" ;;
  *) wanted="" ;;
esac
[ -n "$override" ] && wanted="$override"

# IDs differ between releases and modules, names are stable: find the ID by name
# (AGX Orin prefixes them with MODE_).
mode_id=""; mode_name=""
for want in $wanted; do
  line="$(grep -E "<[[:space:]]*POWER_MODEL[[:space:]]+ID=[0-9]+[[:space:]]+NAME=(MODE_)?$want[[:space:]]*>" "$conf" | head -n 1 || true)"
  if [ -n "$line" ]; then
    mode_id="$(printf '%s' "$line" | sed 's/.*ID=\([0-9]*\).*/\1/')"
    mode_name="$(printf '%s' "$line" | sed 's/.*NAME=\([^ >]*\).*/\1/')"
    break
  fi
done
if [ -z "$mode_id" ]; then
  echo "mongars-edge-power: board '$board': none of [$wanted] in $conf; keeping the current mode" >&2
  exit 0
fi
echo "mongars-edge-power: board '$board' -> power mode $mode_name (id $mode_id), jetson_clocks=$clocks"
[ "${DRY_RUN:-0}" = 1 ] && exit 0
# Some modes change the number of online CPUs; nvpmodel asks before rebooting, so answer no
# (-f avoids the prompt on releases that have it); the new mode applies fully after reboot.
echo no | nvpmodel -m "$mode_id" || echo "mongars-edge-power: nvpmodel -m $mode_id failed" >&2
if [ "$clocks" = 1 ] && command -v jetson_clocks >/dev/null; then
  jetson_clocks || echo "mongars-edge-power: jetson_clocks failed" >&2
fi
exit 0
