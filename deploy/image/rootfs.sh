#!/usr/bin/env bash
# Debian 12 arm64 root file systems, made once and cached as tarballs.
#
#   deploy/image/rootfs.sh [image|base]   prints the path of the cached tarball, building it if missing
#
# base: debootstrap minbase + python3, enough to install and run the package (make arm64-check).
# image: the gateway image's root: base plus the kernel, Pi firmware, systemd and ssh
#   (rootfs-image.packages), with a small initramfs (initramfs-modules, MODULES=list).
# debootstrap --arch=arm64 runs the root's own programs under qemu-user-static through
# binfmt_misc (deploy/image/binfmt.sh sets that up). Each tarball is keyed by a hash of what
# goes into it (this script, the package lists, the module list), so any change makes a new one
# and a re-run only prints the path. Downloaded packages are kept in apt-bookworm-arm64/ beside
# the tarballs, so a rebuild after a change downloads nothing already fetched.
# Environment: SENSEGATE_CACHE (default ~/.cache/sensegate), SENSEGATE_DEBIAN_MIRROR (default
# http://deb.debian.org/debian).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${SENSEGATE_CACHE:-$HOME/.cache/sensegate}
mirror=${SENSEGATE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
flavour=${1:-image}
case $flavour in
    base) inputs=("$here/rootfs.sh" "$here/rootfs-base.packages") ;;
    image) inputs=("$here/rootfs.sh" "$here/rootfs-base.packages" "$here/rootfs-image.packages"
                   "$here/initramfs-modules") ;;
    *) echo "rootfs.sh: unknown flavour '$flavour' (flavours: image, base)" >&2; exit 2 ;;
esac
key=$(cat "${inputs[@]}" | sha256sum | cut -c1-16)
tarball=$cache/rootfs-bookworm-arm64-$flavour-$key.tar
if [ -f "$tarball" ]; then echo "$tarball"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "rootfs.sh: needs root (debootstrap, chroot)" >&2; exit 1; }
"$here/binfmt.sh" >&2
debs=$cache/apt-bookworm-arm64
mkdir -p "$cache" "$debs"
base=
if [ "$flavour" = image ]; then base=$("$here/rootfs.sh" base); fi
work=$(mktemp -d "$cache/rootfs.XXXXXX")
root=$work/root
mounts=()
umount_all() {
    for ((i=${#mounts[@]}-1; i>=0; i--)); do umount "${mounts[$i]}" || umount -l "${mounts[$i]}" || true; done
    mounts=()
}
cleanup() { umount_all; rm -rf --one-file-system "$work"; }
trap cleanup EXIT
bind() { mkdir -p "$2"; mount --bind "$1" "$2"; mounts+=("$2"); mount --make-rslave "$2"; }
log=$work/build.log
mkdir -p "$root"
if [ -z "$base" ]; then
    echo "rootfs.sh: debootstrap bookworm arm64 into $root (log: $log)" >&2
    debootstrap --arch=arm64 --variant=minbase --components=main,non-free-firmware --cache-dir="$debs" \
        bookworm "$root" "$mirror" >"$log" 2>&1 || { tail -30 "$log" >&2; exit 1; }
    cat > "$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main non-free-firmware
deb $mirror bookworm-updates main non-free-firmware
deb http://security.debian.org/debian-security bookworm-security main non-free-firmware
SOURCES
else
    echo "rootfs.sh: $flavour root from $base (log: $log)" >&2
    tar -C "$root" -xf "$base"
fi
if [ "$flavour" = image ]; then
    # a small initramfs, also for every later kernel upgrade on the gateway: only the modules
    # that reach the root file system (a hook: /etc/initramfs-tools/modules is the package's)
    mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/etc/initramfs-tools/hooks"
    printf '# sensegate image: initramfs with the modules listed in hooks/sensegate-modules\nMODULES=list\nCOMPRESS=gzip\n' \
        > "$root/etc/initramfs-tools/conf.d/sensegate.conf"
    {
        printf '#!/bin/sh\n# sensegate image: the modules that reach the root file system (MODULES=list)\n'
        printf '[ "$1" = prereqs ] && exit 0\n. /usr/share/initramfs-tools/hook-functions\n'
        printf 'manual_add_modules %s\n' "$(grep -v '^\s*#' "$here/initramfs-modules" | xargs)"
    } > "$root/etc/initramfs-tools/hooks/sensegate-modules"
    chmod 755 "$root/etc/initramfs-tools/hooks/sensegate-modules"
fi
# the Pi firmware's kernel hooks copy into /boot/firmware, which must be a mount point then;
# what they put there is kept in the tarball under /boot/firmware (the image's FAT partition)
mkdir -p "$work/firmware" "$root/boot/firmware"
mkdir -p "$root/proc" "$root/sys"
mount -t proc proc "$root/proc"; mounts+=("$root/proc")
mount -t sysfs sys "$root/sys"; mounts+=("$root/sys")
bind /dev "$root/dev"
mount -t devpts devpts "$root/dev/pts"; mounts+=("$root/dev/pts")
bind "$work/firmware" "$root/boot/firmware"
bind "$debs" "$root/var/cache/apt/archives"
# no daemon starts inside the chroot
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
list=$here/rootfs-$flavour.packages
packages=$(grep -v '^\s*#' "$list" | xargs)
echo "rootfs.sh: apt-get install $packages" >&2
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
    chroot "$root" sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends $packages" \
    >>"$log" 2>&1 || { tail -40 "$log" >&2; exit 1; }
rm -f "$root/usr/sbin/policy-rc.d" "$root"/etc/ssh/ssh_host_*  # host keys: made on first boot
rm -rf "$root"/var/lib/apt/lists/*
umount_all
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin
if [ "$flavour" = image ]; then
    cp -a "$work/firmware/." "$root/boot/firmware/"
    ls "$root"/boot/firmware/initrd.img* >/dev/null || { echo "rootfs.sh: no initrd in /boot/firmware" >&2; exit 1; }
fi
tar -C "$root" -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "$tarball"
