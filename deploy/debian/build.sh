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
#   PIP         the pip used at build time (default: .venv/bin/pip)
#   DEB_REVISION  Debian revision (default 1)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)
pip=${PIP:-$repo/.venv/bin/pip}
arch=${DEB_ARCH:-$(dpkg --print-architecture)}
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$repo/gateway/__init__.py")
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
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - --ignore-failed-read 2>/dev/null) \
  | tar -xf - -C "$work/src"

# 2. the sensegate wheel (pure Python)
index=()
[ -n "${WHEELHOUSE:-}" ] && index=(--no-index --find-links "$WHEELHOUSE")
"$pip" wheel -q --no-deps "${index[@]}" -w "$wheels" "$work/src"
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
PY
"$pip" download -q "${index[@]}" --only-binary=:all: --dest "$wheels" \
  --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" "${platforms[@]}" \
  -r "$work/requirements.txt"

# 4. files
install -D -m 0644 "$repo/systemd/sensegate.service" "$root/lib/systemd/system/sensegate.service"
install -D -m 0644 "$repo/deploy/rpi/sensegate-firstboot.service" "$root/lib/systemd/system/sensegate-firstboot.service"
install -D -m 0644 "$repo/systemd/sensegate-tpm.conf" "$root/usr/share/sensegate/systemd/sensegate-tpm.conf"
install -D -m 0755 "$repo/deploy/rpi/sensegate-firstboot" "$root/usr/lib/sensegate/sensegate-firstboot"
mkdir -p "$root/etc/sensegate" "$root/usr/bin"
"$repo/.venv/bin/python" -c 'import sys; sys.path.insert(0, sys.argv[1]); from gateway.provision import DEFAULT_CONFIG; print(DEFAULT_CONFIG, end="")' \
  "$work/src" > "$root/etc/sensegate/sensegate.yaml"
ln -s /opt/venvs/sensegate/bin/sensegate "$root/usr/bin/sensegate"
install -D -m 0644 "$repo/docs/deploying.md" "$root/usr/share/doc/sensegate/deploying.md"
install -D -m 0644 "$here/copyright" "$root/usr/share/doc/sensegate/copyright"

# 5. control files
mkdir -p "$root/DEBIAN"
for f in postinst prerm postrm; do install -m 0755 "$here/$f" "$root/DEBIAN/$f"; done
echo /etc/sensegate/sensegate.yaml > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version-$revision/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" "$here/control.in" > "$root/DEBIAN/control"

deb="$out/sensegate_${version}-${revision}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
