#!/usr/bin/env bash
# Build the sensegate .deb: the agent as a wheelhouse that postinst installs into its own venv
# (/opt/venvs/sensegate) with pip --no-index, so installing needs no network at all.
#
#   deploy/debian/build.sh [OUT_DIR]
#
# Environment:
#   DEB_ARCH    target Debian architecture (default: this machine's, dpkg --print-architecture);
#               amd64 and arm64 are supported (PyPI has manylinux wheels for every dependency).
#   WHEELHOUSE  a directory of wheels to build from instead of PyPI (offline builds); it must
#               hold every dependency for the target, plus pip, setuptools and wheel.
#   WHEELHOUSE_ONLY  1 (default): the wheelhouse alone, no network; 0: the wheelhouse first and
#               PyPI for what it lacks (an older tree's dependencies that this one dropped)
#   PIP         the pip used at build time (default: .venv/bin/pip)
#   DEB_REVISION  Debian revision (default 1)
#   SENSEGATE_SRC  package this source tree instead of this checkout's files (tests build a
#               second, newer package from a changed copy to test upgrades)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)
pip=${PIP:-$repo/.venv/bin/pip}
arch=${DEB_ARCH:-$(dpkg --print-architecture)}
src=${SENSEGATE_SRC:-}
base=${src:-$repo}  # where the packaged files come from
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "${src:-$repo}/gateway/__init__.py")
revision=${DEB_REVISION:-1}
# Debian 12 (bookworm) and Raspberry Pi OS bookworm ship Python 3.11 and glibc 2.36.
pyver=3.11
case "$arch" in
  amd64) machine=x86_64 ;;
  arm64) machine=aarch64 ;;
  *) echo "build.sh: no manylinux wheels for $arch on PyPI; build on the target instead (see docs/deploying.md)" >&2
     exit 2 ;;
esac
platforms=()
for tag in manylinux_2_36 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_24 \
           manylinux2014 manylinux_2_17 manylinux2010 manylinux1; do
  platforms+=(--platform "${tag}_${machine}")
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
wheels=$root/usr/share/sensegate/wheels
mkdir -p "$wheels" "$work/src"

# 1. the source as the developer sees it (tracked and new files, nothing git ignores)
if [ -n "$src" ]; then
  cp -a "$src/." "$work/src/"
else
  (cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - --ignore-failed-read 2>/dev/null) \
    | tar -xf - -C "$work/src"
fi

# 2. the sensegate wheel (pure Python), with the build tools of the build venv (offline too)
index=()
if [ -n "${WHEELHOUSE:-}" ]; then
  index=(--find-links "$WHEELHOUSE")
  [ "${WHEELHOUSE_ONLY:-1}" = 0 ] || index=(--no-index "${index[@]}")
fi
"$pip" wheel -q --no-deps --no-build-isolation "${index[@]}" -w "$wheels" "$work/src"
wheel=$(ls "$wheels"/sensegate-"$version"-*.whl)

# 3. its dependencies (core + the 'all' extra) and pip itself, as binary wheels for the target
"$repo/.venv/bin/python" - "$wheel" > "$work/requirements.txt" <<'PY'
import sys, zipfile
from email.parser import Parser
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    msg = Parser().parsestr(z.read(meta).decode())
for req in msg.get_all("Requires-Dist") or []:
    spec, _, marker = req.partition(";")
    marker = marker.strip()
    if not marker or marker.replace(" ", "") in ('extra=="all"', "extra=='all'"):
        print(spec.strip())
print("pip")
print("setuptools")  # `sensegate driver install DIR` builds offline
print("wheel")
PY
"$pip" download -q "${index[@]}" --only-binary=:all: --dest "$wheels" \
  --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" "${platforms[@]}" \
  -r "$work/requirements.txt"

# 4. files
install -D -m 0644 "$base/systemd/sensegate.service" "$root/lib/systemd/system/sensegate.service"
install -D -m 0644 "$base/deploy/rpi/sensegate-firstboot.service" "$root/lib/systemd/system/sensegate-firstboot.service"
# the unit drop-in for a TPM-backed device key, installed by hand where wanted (older trees have none)
[ -f "$base/systemd/sensegate-tpm.conf" ] && \
  install -D -m 0644 "$base/systemd/sensegate-tpm.conf" "$root/usr/share/sensegate/systemd/sensegate-tpm.conf"
install -D -m 0755 "$base/deploy/rpi/sensegate-firstboot" "$root/usr/lib/sensegate/sensegate-firstboot"
mkdir -p "$root/etc/sensegate" "$root/usr/bin"
"$repo/.venv/bin/python" -c 'import sys; sys.path.insert(0, sys.argv[1]); from gateway.provision import DEFAULT_CONFIG; print(DEFAULT_CONFIG, end="")' \
  "$work/src" > "$root/etc/sensegate/sensegate.yaml"
# the same default, as this version shipped it: the next upgrade's preinst compares a locally
# edited sensegate.yaml with it to move the edits into a drop-in (no conffile prompt)
install -D -m 0644 "$root/etc/sensegate/sensegate.yaml" "$root/usr/share/sensegate/sensegate.yaml"
ln -s /opt/venvs/sensegate/bin/sensegate "$root/usr/bin/sensegate"
install -D -m 0644 "$base/docs/deploying.md" "$root/usr/share/doc/sensegate/deploying.md"
install -D -m 0644 "$base/deploy/debian/copyright" "$root/usr/share/doc/sensegate/copyright"

# 5. control files
mkdir -p "$root/DEBIAN"
for f in preinst postinst prerm postrm; do
  [ -f "$base/deploy/debian/$f" ] || continue  # (older trees have no preinst)
  sed "s/@VERSION@/$version-$revision/g" "$base/deploy/debian/$f" > "$root/DEBIAN/$f"
  chmod 0755 "$root/DEBIAN/$f"
done
echo /etc/sensegate/sensegate.yaml > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version-$revision/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" "$base/deploy/debian/control.in" > "$root/DEBIAN/control"

deb="$out/sensegate_${version}-${revision}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
