"""Debian root file systems for the packaging tests: cached tarballs, unpacked per test, used with chroot(8).

The amd64 root (minbase + python3) is made by debootstrap on first use; the arm64 one is the
gateway image's root file system (deploy/image/rootfs.sh), whose programs run under
qemu-user-static through binfmt_misc. Both are cached under SENSEGATE_CACHE
(~/.cache/sensegate), keyed by what goes into them, so a re-run only unpacks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CACHE = Path(os.environ.get("SENSEGATE_CACHE", Path.home() / ".cache" / "sensegate"))
MIRROR = os.environ.get("SENSEGATE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def amd64_tarball() -> Path:
    """A bookworm minbase + python3 root of this machine's architecture, made with debootstrap once."""
    tarball = CACHE / f"bookworm-minbase-python3-{host_arch()}.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is missing: run hil/system-deps.sh test (or apt-get install debootstrap)")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / "debootstrap.tmp"
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3", "bookworm", str(work), MIRROR],
        check=True,
        capture_output=True,
        timeout=900,
    )
    subprocess.run(["tar", "-C", str(work), "-cf", str(tarball) + ".tmp", "."], check=True, timeout=300)
    os.replace(str(tarball) + ".tmp", tarball)
    shutil.rmtree(work, ignore_errors=True)
    return tarball


def arm64_tarball() -> Path:
    """A Debian 12 arm64 minbase + python3 root (deploy/image/rootfs.sh base: cached, built on first use)."""
    res = subprocess.run(
        [str(ROOT / "deploy" / "image" / "rootfs.sh"), "base"],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "SENSEGATE_CACHE": str(CACHE)},
    )
    if res.returncode != 0:
        pytest.fail(f"deploy/image/rootfs.sh failed:\n{res.stderr[-3000:]}")
    return Path(res.stdout.strip().splitlines()[-1])


def unpack(tarball: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-C", str(dest), "-xf", str(tarball)], check=True, timeout=600)
    return dest


def sh(root: Path, *cmd: str, check: bool = True, timeout: float = 300, env: dict[str, str] | None = None,
       ) -> subprocess.CompletedProcess[str]:
    """Run a command inside the root with an empty environment (no host pip config leaks in)."""
    res = subprocess.run(["chroot", str(root), *cmd], env={**CLEAN_ENV, **(env or {})}, capture_output=True,
                         text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def source_tree(dest: Path, commit: str | None = None) -> Path:
    """This checkout's files (tracked and new), or the tree of an earlier commit, copied to ``dest``."""
    dest.mkdir(parents=True)
    if commit is not None:
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-xf", "-", "-C", str(dest)], input=archive, check=True)
        return dest
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    for rel in filter(None, (f.decode() for f in files)):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def edit(path: Path, before: str, after: str) -> None:
    text = path.read_text()
    assert before in text, f"{path}: {before!r} not found"
    path.write_text(text.replace(before, after, 1))


def set_version(src: Path, version: str) -> None:
    init = src / "gateway" / "__init__.py"
    old = init.read_text().split('__version__ = "', 1)[1].split('"', 1)[0]
    edit(init, f'__version__ = "{old}"', f'__version__ = "{version}"')


def build_deb(src: Path, out: Path, wheels_of: Path, arch: str, wheelhouse_only: bool = True) -> Path:
    """Package the source tree ``src`` offline: the dependency wheels come from an earlier package.

    ``wheelhouse_only=False`` lets PyPI supply what that package lacks (an older tree's
    dependency that the newer one dropped)."""
    out.mkdir(parents=True, exist_ok=True)
    wheelhouse = out / "wheelhouse"
    if not wheelhouse.exists():
        x = out / "deb-x"
        subprocess.run(["dpkg-deb", "-x", str(wheels_of), str(x)], check=True)
        shutil.copytree(x / "usr/share/sensegate/wheels", wheelhouse)
        shutil.rmtree(x)
        for w in wheelhouse.glob("sensegate-*.whl"):
            w.unlink()
    res = subprocess.run([str(ROOT / "deploy/debian/build.sh"), str(out)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "SENSEGATE_SRC": str(src), "WHEELHOUSE": str(wheelhouse),
                                           "DEB_ARCH": arch,
                                           "WHEELHOUSE_ONLY": "1" if wheelhouse_only else "0"})
    assert res.returncode == 0, res.stderr[-3000:]
    return Path(res.stdout.strip().splitlines()[-1])
