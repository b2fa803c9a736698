#!/usr/bin/env bash
# Let this (amd64) machine run arm64 programs: binfmt_misc mounted and qemu-aarch64 enabled
# (qemu-user-static registers it with the F flag, so chroots need no copy of the emulator).
set -euo pipefail
entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
if [ "$(uname -m)" = aarch64 ]; then exit 0; fi
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e "$entry" ] || ! grep -q '^enabled' "$entry"; then
    update-binfmts --enable qemu-aarch64
fi
grep -q '^enabled' "$entry" || { echo "binfmt.sh: qemu-aarch64 is not enabled in binfmt_misc" >&2; exit 1; }
grep -q '^flags: .*F' "$entry" || { echo "binfmt.sh: qemu-aarch64 lacks the F flag (install qemu-user-static)" >&2; exit 1; }
