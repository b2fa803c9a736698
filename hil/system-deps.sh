#!/usr/bin/env bash
# Debian packages the tests and the demo run for real: installed with apt-get when we are root,
# otherwise we say exactly which ones to install. Usage: hil/system-deps.sh [demo|test|image]
set -euo pipefail
what=${1:-test}

# command-or-file to look for -> Debian package that provides it
declare -A need=(
  [mosquitto]=mosquitto
)
if [ "$what" = test ]; then
  need+=(
    [coap-client-notls]=libcoap3-bin
    [gpsd]=gpsd
    [gpsfake]=gpsd-clients
    [dbus-daemon]=dbus
    [/usr/include/dbus-1.0/dbus/dbus.h]=libdbus-1-dev
    [/usr/include/glib-2.0/glib.h]=libglib2.0-dev
    [pkg-config]=pkg-config
    [ffmpeg]=ffmpeg
    [curl]=curl
    [systemd-analyze]=systemd
    [debootstrap]=debootstrap
    [ip]=iproute2
    [faketime]=faketime
    [cc]=gcc
    [snmpd]=snmpd
    [snmptrap]=snmp
    [softhsm2-util]=softhsm2
    # a TPM 2.0 simulator behind tpm2-pkcs11 (tests/gateway/test_tpm.py)
    [swtpm]=swtpm
    [tpm2-abrmd]=tpm2-abrmd
    [tpm2_ptool]=libtpm2-pkcs11-tools
    ['/usr/lib/*/pkcs11/libtpm2_pkcs11.so']=libtpm2-pkcs11-1
    ['/usr/lib/*/libtss2-tcti-tabrmd.so.0']=libtss2-tcti-tabrmd0
    ['/usr/lib/*/libtss2-tcti-swtpm.so.0']=libtss2-tcti-swtpm0
    # the fleet ingest's tests: a NATS cluster (JetStream, MQTT) and PostgreSQL from initdb
    [nats-server]=nats-server
    # the fleet page is checked in a real headless browser through WebDriver (tests/fleet)
    [chromium]=chromium
    [chromedriver]=chromium-driver
    ['/usr/lib/postgresql/*/bin/initdb']=postgresql
  )
fi
# the arm64 package on arm64 (tests/packaging/test_arm64.py: qemu-user-static + binfmt_misc) and
# the image built and booted under qemu-system-aarch64 (make image, make image-check)
if [ "$what" = test ] || [ "$what" = image ]; then
  need+=(
    [debootstrap]=debootstrap
    [/usr/bin/qemu-aarch64-static]=qemu-user-static
    [update-binfmts]=binfmt-support
    [qemu-system-aarch64]=qemu-system-arm
    [parted]=parted
    [mkfs.vfat]=dosfstools
    [mcopy]=mtools
    [mkfs.ext4]=e2fsprogs
    [ssh]=openssh-client
    [ssh-keygen]=openssh-client
  )
fi

missing=()
for probe in "${!need[@]}"; do
  if [[ $probe == /* ]]; then
    compgen -G "$probe" >/dev/null || missing+=("${need[$probe]}")  # a path, or a glob of paths
  else
    command -v "$probe" >/dev/null 2>&1 || [ -x "/usr/sbin/$probe" ] || missing+=("${need[$probe]}")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  # the packaged services are not wanted: tests start their own on free ports
  for svc in mosquitto gpsd gpsd.socket tpm2-abrmd nats-server postgresql; do
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  done
else
  echo "sensegate: these Debian packages are needed for 'make $what' and are missing:" >&2
  echo "    sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
