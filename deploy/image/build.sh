#!/usr/bin/env bash
# The Raspberry Pi image a technician flashes: Debian 12 (bookworm) arm64 for the Pi 3 and 4
# (Debian's linux-image-arm64 and raspi-firmware packages), sensegate installed and enabled,
# first-boot provisioning from sensegate/provision.conf on the boot partition.
#
#   deploy/image/build.sh OUT.img SENSEGATE_ARM64.deb
#
# Layout, as Debian's own Raspberry Pi images: an MBR with a FAT boot partition labelled
# RASPIFIRM (firmware, kernel, initrd, config.txt, cmdline.txt; /boot/firmware on the Pi, the
# partition any PC can write) and an ext4 root labelled RASPIROOT. The file systems are made
# from directories (mkfs.ext4 -d, mtools) and written into the image at their offsets: no loop
# mount, no device-mapper (kpartx, which vmdb2 needs, does not work on kernels without it, as on
# this project's CI machines). The root comes from deploy/image/rootfs.sh (cached).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT.img SENSEGATE.deb}
deb=${2:?usage: build.sh OUT.img SENSEGATE.deb}
[ "$(id -u)" = 0 ] || { echo "build.sh: needs root (chroot to install the package)" >&2; exit 1; }
boot_mib=256
root_mib=${SENSEGATE_IMAGE_ROOT_MIB:-2560}  # grown to the card's size on the first boot
tarball=$("$here/rootfs.sh" image)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/sensegate-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"
tar -C "$root" -xf "$tarball"

# sensegate, installed as on a running Pi (postinst builds its venv under qemu-user-static)
cp "$deb" "$root/tmp/sensegate.deb"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 chroot "$root" dpkg -i /tmp/sensegate.deb
rm -f "$root/usr/sbin/policy-rc.d" "$root/tmp/sensegate.deb"
# the byte code the service loads (PYTHONOPTIMIZE=2 into its pycache, as the unit sets them),
# compiled here so that the first start on the card does not spend its time compiling
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTHONOPTIMIZE=2 PYTHONPYCACHEPREFIX=/var/cache/sensegate/pycache \
    chroot "$root" sh -c 'v=$(readlink -f /opt/venvs/sensegate); "$v/bin/python" -m compileall -q -j 0 -o 2 \
    /usr/lib/python3.11 "$v/lib"' >/dev/null || true
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$root" chown -R sensegate:sensegate /var/cache/sensegate
chmod 0750 "$root/var/cache/sensegate"
install -m 0755 "$here/sensegate-growroot" "$root/usr/lib/sensegate/sensegate-growroot"
install -m 0644 "$here/sensegate-growroot.service" "$root/etc/systemd/system/sensegate-growroot.service"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$root" systemctl enable systemd-networkd systemd-timesyncd ssh \
    sensegate.service sensegate-firstboot.service sensegate-growroot.service >/dev/null

# the system around it
echo sensegate > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tsensegate\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
cat > "$root/etc/fstab" <<'FSTAB'
LABEL=RASPIROOT /              ext4 rw,noatime,commit=60 0 1
LABEL=RASPIFIRM /boot/firmware vfat rw,noatime,umask=0077 0 2
FSTAB
cat > "$root/etc/systemd/network/80-wired-dhcp.network" <<'NET'
# any wired interface (eth0 on a Pi, virtio on a test machine): DHCP
[Match]
Type=ether
[Network]
DHCP=yes
NET
# SSH for the field team: keys only; host keys are made on the first boot, never shipped
mkdir -p "$root/etc/ssh/sshd_config.d" "$root/etc/systemd/system/ssh.service.d"
printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n' \
    > "$root/etc/ssh/sshd_config.d/50-sensegate.conf"
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
    > "$root/etc/systemd/system/ssh.service.d/host-keys.conf"
rm -f "$root"/etc/ssh/ssh_host_* "$root/etc/machine-id"
touch "$root/etc/machine-id"  # systemd makes one on the first boot
# the root file system is found by its label on any card or USB disk (the firmware's default is
# mmcblk0p2), now and after every kernel upgrade (raspi-firmware rewrites cmdline.txt from this)
sed -i 's#root=[^ ]*#root=LABEL=RASPIROOT#' "$root/boot/firmware/cmdline.txt"
sed -i 's/^#ROOTPART=.*/ROOTPART="LABEL=RASPIROOT"/' "$root/etc/default/raspi-firmware"
grep -q '^ROOTPART="LABEL=RASPIROOT"' "$root/etc/default/raspi-firmware"
# unattended upgrades never stop at a question about a configuration file this image changed
# (raspi-firmware's above, ssh's): keep the local version, take the package's where untouched
printf 'Dpkg::Options {\n  "--force-confdef";\n  "--force-confold";\n};\n' \
    > "$root/etc/apt/apt.conf.d/50sensegate-no-conffile-prompt"

# the two file systems, then the image
firmware=$work/firmware
mv "$root/boot/firmware" "$firmware"
mkdir "$root/boot/firmware"
mkfs.vfat -n RASPIFIRM -C "$work/boot.fs" $((boot_mib * 1024)) >/dev/null
mcopy -s -i "$work/boot.fs" "$firmware"/* ::
mkfs.ext4 -q -L RASPIROOT -d "$root" "$work/root.fs" "${root_mib}M"
rm -f "$out"
truncate -s $(((4 + boot_mib + root_mib) * 1024 * 1024)) "$out"
parted -s "$out" mklabel msdos \
    mkpart primary fat32 4MiB $((4 + boot_mib))MiB \
    mkpart primary ext4 $((4 + boot_mib))MiB 100%
dd if="$work/boot.fs" of="$out" bs=1M seek=4 conv=notrunc,sparse status=none
dd if="$work/root.fs" of="$out" bs=1M seek=$((4 + boot_mib)) conv=notrunc,sparse status=none
echo "$out"
