"""`eebus-bridge everest-module install|manifest`: put the module where EVerest's manager looks.

The manager starts `<prefix>/libexec/everest/modules/<Name>/module.py` with `python3`, or with
`<module dir>/.venv/bin/python3` when that exists (spec/everest.md). So the install writes
manifest.yaml and module.py there and, when this command runs from a virtualenv, a `.venv`
link to it: EVerest then runs the module with exactly the interpreter and packages that ran
this command. From a system interpreter no link is made; instead the command checks that the
`python3` EVerest will use can import the bridge.

everestpy is a compiled extension built for one Python version; when the prefix holds it, its
version tag must match the module's interpreter, or the module could not even import it.

Choices where the spec is silent:
- A missing prefix is created when its parent folder exists (`--prefix /tmp/ev`); a deeper
  missing path is most likely a typo and is refused.
- Files of the module folder other than ours (the sidecar binary usually lives there) are never
  touched; `--force` replaces only manifest.yaml, module.py and the `.venv` link, never a real
  `.venv` folder.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import attrs

MODULE_NAME = "PyEebusBridge"
MODULE_FILES = ("manifest.yaml", "module.py")
VENV_LINK = ".venv"
_EXTENSION_TAG = re.compile(r"\.cpython-(\d)(\d+)")
_IMPORT_CHECK = (
    "import sys, eebus_bridge.everest_module.launch; print(sys.implementation.cache_tag)"
)


class InstallError(Exception):
    """The module cannot be installed; `problems` says why, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@attrs.frozen
class Interpreter:
    """The Python EVerest will run module.py with."""

    cache_tag: str  # e.g. "cpython-311"
    venv: Path | None  # the virtualenv to link as .venv; None = EVerest's own python3
    description: str


@attrs.frozen
class InstallResult:
    module_dir: Path
    venv_link: Path | None
    notes: tuple[str, ...]


def package_file(name: str) -> str:
    """manifest.yaml or module.py as shipped in the package (works from a wheel)."""
    resource = importlib.resources.files("eebus_bridge.everest_module").joinpath(name)
    return resource.read_text("utf-8")


def manifest_text() -> str:
    return package_file("manifest.yaml")


def running_interpreter() -> Interpreter:
    """This interpreter when it is a virtualenv's; else the `python3` on PATH, if it can run us."""
    if sys.prefix != sys.base_prefix:
        return Interpreter(
            cache_tag=sys.implementation.cache_tag or "",
            venv=Path(sys.prefix),
            description=f"the virtualenv {sys.prefix}",
        )
    python3 = shutil.which("python3")
    if python3 is None:
        raise InstallError(["no python3 on PATH: EVerest starts module.py with python3"])
    try:
        result = subprocess.run(
            [python3, "-c", _IMPORT_CHECK], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError([f"cannot run {python3}: {exc}"]) from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise InstallError(
            [
                f"EVerest starts module.py with {python3}, which cannot import eebus_bridge "
                f"({last}); install eebus-bridge for that interpreter, or run this command from "
                "a virtualenv holding eebus-bridge (the module then gets a .venv link to it)"
            ]
        )
    return Interpreter(cache_tag=result.stdout.strip(), venv=None, description=python3)


def install_module(
    prefix: Path,
    *,
    name: str = MODULE_NAME,
    force: bool = False,
    interpreter: Interpreter | None = None,
) -> InstallResult:
    """Write `<prefix>/libexec/everest/modules/<name>/`; raises InstallError naming each problem."""
    _check_name(name)
    notes: list[str] = []
    prefix = Path(os.path.abspath(prefix))
    _ensure_prefix(prefix, notes)
    python = interpreter if interpreter is not None else running_interpreter()
    notes.extend(_check_everestpy(prefix, python))
    module_dir = prefix / "libexec" / "everest" / "modules" / name
    link = module_dir / VENV_LINK
    present = [
        module_dir / entry
        for entry in (*MODULE_FILES, VENV_LINK)
        if (module_dir / entry).exists() or (module_dir / entry).is_symlink()
    ]
    if present and not force:
        raise InstallError(
            [
                f"{module_dir} already holds {', '.join(p.name for p in present)}; "
                "--force replaces them (other files in the folder are kept)"
            ]
        )
    if link.is_dir() and not link.is_symlink():
        raise InstallError([f"{link} is a folder, not a link: remove it yourself to replace it"])
    try:
        module_dir.mkdir(parents=True, exist_ok=True)
        for file in MODULE_FILES:
            _write_atomically(module_dir / file, package_file(file))
        if link.is_symlink() or link.exists():
            link.unlink()
        if python.venv is not None:
            link.symlink_to(python.venv, target_is_directory=True)
    except PermissionError as exc:
        where = exc.filename or module_dir
        raise InstallError(
            [f"cannot write {where}: permission denied (run as the owner of {prefix})"]
        ) from None
    except OSError as exc:
        raise InstallError([f"cannot write {exc.filename or module_dir}: {exc.strerror}"]) from None
    if python.venv is None:
        notes.append(f"no .venv link: EVerest runs the module with {python.description}")
    if not (module_dir / "eebus_grpc_api").exists():
        notes.append(
            f"the default eebus_grpc_api_binary_path is {module_dir / 'eebus_grpc_api'}: copy "
            "the sidecar there or set eebus_grpc_api_binary_path"
        )
    return InstallResult(
        module_dir=module_dir,
        venv_link=link if python.venv is not None else None,
        notes=tuple(notes),
    )


def config_snippet(name: str = MODULE_NAME) -> str:
    """What to paste into EVerest's config.yaml (under active_modules)."""
    return f"""\
# In EVerest's config.yaml, under active_modules: replace `module: EEBUS` by
# `module: {name}` and keep every other line, or add a module like this one.
  eebus:
    module: {name}
    config_module:
      vendor_code: "<your EEBUS vendor code>"
      device_brand: "<brand>"
      device_model: "<model>"
      serial_number: "<serial number>"
      eebus_ems_ski_allowlist: "<SKI of the control box, 40 hex digits>"
    connections:
      eebus_energy_sink:
        - module_id: <the id of the EnergyNode to limit>
          implementation_id: external_limits
"""


def _check_name(name: str) -> None:
    if not name or "/" in name or "\0" in name or name.startswith("."):
        raise InstallError([f"--name {name!r}: must be a plain folder name"])


def _ensure_prefix(prefix: Path, notes: list[str]) -> None:
    if prefix.is_dir():
        return
    if prefix.exists():
        raise InstallError([f"--prefix {prefix}: not a folder"])
    if not prefix.parent.is_dir():
        raise InstallError(
            [
                f"--prefix {prefix}: no such folder (nor its parent {prefix.parent}); give "
                "EVerest's install prefix, the folder holding libexec/everest and etc/everest"
            ]
        )
    try:
        prefix.mkdir()
    except PermissionError:
        raise InstallError(
            [f"--prefix {prefix}: cannot create it: permission denied in {prefix.parent}"]
        ) from None
    notes.append(f"created {prefix}")


def _check_everestpy(prefix: Path, python: Interpreter) -> list[str]:
    """Refuse an everestpy built for another Python; a note when none is found."""
    folders = sorted(prefix.glob("lib*/everest/everestpy"))
    tags = {
        f"cpython-{match.group(1)}{match.group(2)}": extension
        for folder in folders
        for extension in sorted(folder.rglob("*.so"))
        if (match := _EXTENSION_TAG.search(extension.name))
    }
    if not tags:
        where = ", ".join(str(f) for f in folders) or f"{prefix}/lib*/everest/everestpy"
        return [f"no everestpy extension found in {where}: its Python version is not checked"]
    if python.cache_tag in tags:
        return []
    built_for = ", ".join(f"{tag} ({path})" for tag, path in sorted(tags.items()))
    raise InstallError(
        [
            f"everestpy in {prefix} is built for {built_for}, but the module would run on "
            f"{python.cache_tag} ({python.description}); create the virtualenv with the Python "
            "version EVerest was built with"
        ]
    )


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
