#!/usr/bin/env bash
# A Debian 12 arm64 root file system, made once and cached as a tarball.
#
#   deploy/image/rootfs.sh [image|base]   prints the path of the cached tarball, building it if missing
#
# image: the gateway image's root (kernel, Pi firmware, systemd, ssh: rootfs-image.packages);
# base: minbase + python3, enough to install and run the package (make arm64-check).
# debootstrap --arch=arm64 runs the root's own programs under qemu-user-static through
# binfmt_misc (deploy/image/binfmt.sh sets that up); then apt-get installs the flavour's
# packages inside it. The tarball is keyed by a hash of this script and the package list, so
# any change makes a new one; SENSEGATE_CACHE (default ~/.cache/sensegate) is where it is kept.
# Environment: SENSEGATE_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${SENSEGATE_CACHE:-$HOME/.cache/sensegate}
mirror=${SENSEGATE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
flavour=${1:-image}
list=$here/rootfs-$flavour.packages
[ -f "$list" ] || { echo "rootfs.sh: no $list (flavours: image, base)" >&2; exit 2; }
key=$(cat "$here/rootfs.sh" "$list" | sha256sum | cut -c1-16)
tarball=$cache/rootfs-bookworm-arm64-$flavour-$key.tar
if [ -f "$tarball" ]; then echo "$tarball"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "rootfs.sh: needs root (debootstrap, chroot)" >&2; exit 1; }
"$here/binfmt.sh" >&2
mkdir -p "$cache"
work=$(mktemp -d "$cache/rootfs.XXXXXX")
root=$work/root
mounts=()
cleanup() {
    for ((i=${#mounts[@]}-1; i>=0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
log=$work/build.log
echo "rootfs.sh: debootstrap bookworm arm64 into $root (log: $log)" >&2
debootstrap --arch=arm64 --variant=minbase --components=main,non-free-firmware \
    bookworm "$root" "$mirror" >"$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }
cat > "$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main non-free-firmware
deb $mirror bookworm-updates main non-free-firmware
deb http://security.debian.org/debian-security bookworm-security main non-free-firmware
SOURCES
# the Pi firmware's kernel hooks copy into /boot/firmware, which must be a mount point then;
# what they put there is kept in the tarball under /boot/firmware (the image's FAT partition)
mkdir -p "$work/firmware" "$root/boot/firmware"
for m in proc sys dev dev/pts; do mkdir -p "$root/$m"; done
mount -t proc proc "$root/proc"; mounts+=("$root/proc")
mount -t sysfs sys "$root/sys"; mounts+=("$root/sys")
mount --bind /dev "$root/dev"; mounts+=("$root/dev")
mount -t devpts devpts "$root/dev/pts"; mounts+=("$root/dev/pts")
mount --bind "$work/firmware" "$root/boot/firmware"; mounts+=("$root/boot/firmware")
# no daemon starts inside the chroot
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
packages=$(grep -v '^\s*#' "$list" | xargs)
echo "rootfs.sh: apt-get install $packages" >&2
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
    chroot "$root" sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends $packages" \
    >>"$log" 2>&1 || { tail -40 "$log" >&2; exit 1; }
chroot "$root" apt-get clean
rm -f "$root/usr/sbin/policy-rc.d" "$root"/etc/ssh/ssh_host_*  # host keys: made on first boot
rm -rf "$root"/var/lib/apt/lists/*
for ((i=${#mounts[@]}-1; i>=0; i--)); do umount "${mounts[$i]}"; done
mounts=()
cp -a "$work/firmware/." "$root/boot/firmware/"
tar -C "$root" -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "$tarball"
