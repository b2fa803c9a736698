#!/bin/bash -e
# pi-gen sub-stage: install the sensegate .deb (built with `make deb DEB_ARCH=arm64`) into the
# image, and, if present, a provision.conf (+ broker-ca.pem, ops*.pem) for first-boot
# provisioning. pi-gen runs this from this directory, as root, with ROOTFS_DIR set.
arch=${ARCH:-arm64}
deb=$(ls files/sensegate_*_"${arch}".deb 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "${deb}" ]; then
	echo "stage-sensegate: put sensegate_*_${arch}.deb into $(pwd)/files (make deb DEB_ARCH=${arch})" >&2
	exit 1
fi
install -m 644 "${deb}" "${ROOTFS_DIR}/tmp/sensegate.deb"
on_chroot << CHROOT
dpkg -i /tmp/sensegate.deb
rm -f /tmp/sensegate.deb
CHROOT

# First-boot provisioning material for every gateway flashed from this image (optional; a
# technician can also drop these files onto the boot partition after flashing).
if [ -f files/provision.conf ]; then
	dest="${ROOTFS_DIR}/boot/firmware/sensegate"
	install -d "${dest}"
	install -m 644 files/provision.conf "${dest}/"
	for f in files/broker-ca.pem files/ops*.pem files/sensegate.yaml; do
		if [ -f "${f}" ]; then install -m 644 "${f}" "${dest}/"; fi
	done
fi
