"""`eebus-bridge everest-module install|manifest`: files, link, refusals, everestpy version.

The command runs in-process (cli.main) for speed; the end-to-end tests run it as a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from eebus_bridge.cli import main
from eebus_bridge.everest_module import InstallError, install_module, manifest_text
from eebus_bridge.everest_module.install import Interpreter, package_file, running_interpreter
from tests._everest_module import module_dir
from tests._util import read_only_folder

THIS_TAG = sys.implementation.cache_tag
Install = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def install(capsys: pytest.CaptureFixture[str]) -> Install:
    def run(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
        code = main(["everest-module", "install", "--prefix", str(prefix), *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def test_install_writes_manifest_module_and_venv_link(tmp_path: Path, install: Install) -> None:
    result = install(tmp_path)
    assert result.returncode == 0, result.stderr
    folder = module_dir(tmp_path)
    assert (folder / "manifest.yaml").read_text() == manifest_text()
    assert (folder / "module.py").read_text() == package_file("module.py")
    link = folder / ".venv"
    assert link.is_symlink()
    assert link.resolve() == Path(sys.prefix).resolve()
    assert (link / "bin" / "python3").exists()
    # The snippet to paste into config.yaml.
    assert "module: PyEebusBridge" in result.stdout
    assert "eebus_energy_sink:" in result.stdout
    assert "implementation_id: external_limits" in result.stdout


def test_install_refuses_to_overwrite_without_force_and_keeps_other_files(
    tmp_path: Path, install: Install
) -> None:
    assert install(tmp_path).returncode == 0
    folder = module_dir(tmp_path)
    sidecar = folder / "eebus_grpc_api"
    sidecar.write_text("the sidecar binary")
    (folder / "module.py").write_text("old")
    again = install(tmp_path)
    assert again.returncode == 2
    assert "already holds manifest.yaml, module.py, .venv; --force replaces them" in again.stderr
    assert (folder / "module.py").read_text() == "old"
    forced = install(tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (folder / "module.py").read_text() == package_file("module.py")
    assert sidecar.read_text() == "the sidecar binary"


def test_install_with_another_name(tmp_path: Path, install: Install) -> None:
    result = install(tmp_path, "--name", "PyEebusBridgeTest")
    assert result.returncode == 0, result.stderr
    assert (module_dir(tmp_path, "PyEebusBridgeTest") / "module.py").exists()
    assert "module: PyEebusBridgeTest" in result.stdout
    bad = install(tmp_path, "--name", "../escape")
    assert bad.returncode == 2
    assert "must be a plain folder name" in bad.stderr


def test_missing_prefix_is_created_only_below_an_existing_folder(
    tmp_path: Path, install: Install
) -> None:
    created = install(tmp_path / "ev")
    assert created.returncode == 0, created.stderr
    assert f"note: created {tmp_path / 'ev'}" in created.stderr
    missing = install(tmp_path / "no" / "such" / "prefix")
    assert missing.returncode == 2
    assert f"--prefix {tmp_path / 'no' / 'such' / 'prefix'}: no such folder" in missing.stderr
    assert not (tmp_path / "no").exists()


def test_prefix_that_is_a_file_is_refused(tmp_path: Path, install: Install) -> None:
    (tmp_path / "file").write_text("")
    result = install(tmp_path / "file")
    assert result.returncode == 2
    assert "not a folder" in result.stderr


def test_no_write_permission_is_a_clear_error(tmp_path: Path, install: Install) -> None:
    with read_only_folder(tmp_path):  # chmod, or chattr +i where the tests run as root
        result = install(tmp_path)
    assert result.returncode == 2
    assert "permission denied" in result.stderr


def test_a_libexec_that_is_a_file_is_a_clear_error(tmp_path: Path, install: Install) -> None:
    (tmp_path / "libexec").write_text("")
    result = install(tmp_path)
    assert result.returncode == 2
    assert f"error: cannot write {tmp_path / 'libexec'}" in result.stderr


def _everestpy(prefix: Path, tag: str, lib: str = "lib") -> Path:
    folder = prefix / lib / "everest" / "everestpy" / "everest" / "framework"
    folder.mkdir(parents=True)
    extension = folder / f"everestpy.{tag}-x86_64-linux-gnu.so"
    extension.write_bytes(b"\x7fELF")
    return extension


def test_everestpy_for_another_python_is_refused(tmp_path: Path, install: Install) -> None:
    extension = _everestpy(tmp_path, "cpython-399")
    result = install(tmp_path)
    assert result.returncode == 2
    assert f"everestpy in {tmp_path} is built for cpython-399 ({extension})" in result.stderr
    assert f"but the module would run on {THIS_TAG}" in result.stderr
    assert not module_dir(tmp_path).exists()


def test_everestpy_for_this_python_is_accepted(tmp_path: Path, install: Install) -> None:
    _everestpy(tmp_path, THIS_TAG, lib="lib64")
    result = install(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no everestpy extension found" not in result.stderr


def test_without_a_virtualenv_no_link_is_made(tmp_path: Path, install: Install) -> None:
    system = Interpreter(cache_tag=THIS_TAG, venv=None, description="/usr/bin/python3")
    result = install_module(tmp_path, interpreter=system)
    assert result.venv_link is None
    assert not (result.module_dir / ".venv").exists()
    assert any("EVerest runs the module with /usr/bin/python3" in n for n in result.notes)


def _python3_on_path(folder: Path, script: str) -> str:
    folder.mkdir()
    python3 = folder / "python3"
    python3.write_text(script)
    python3.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def test_system_python3_must_import_the_bridge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)  # as if run from a system interpreter
    # EVerest's python3 without eebus-bridge installed.
    broken = "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'eebus_bridge'\" >&2\nexit 1\n"
    monkeypatch.setenv("PATH", _python3_on_path(tmp_path / "broken", broken))
    with pytest.raises(InstallError) as error:
        running_interpreter()
    assert "cannot import eebus_bridge (ModuleNotFoundError" in str(error.value)
    # A python3 that has it (here: this virtualenv's interpreter).
    working = f'#!/bin/sh\nexec "{sys.executable}" "$@"\n'
    monkeypatch.setenv("PATH", _python3_on_path(tmp_path / "working", working))
    interpreter = running_interpreter()
    assert interpreter.venv is None
    assert interpreter.cache_tag == THIS_TAG


def test_manifest_verb_prints_the_manifest() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eebus_bridge", "everest-module", "manifest"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout == manifest_text()
    assert "eebus_energy_sink:" in result.stdout
