"""Regenerate eebus_bridge/generated/ from proto/ (betterproto2, grpclib async client and server).

Usage: python tools/gen_grpc.py [OUT_DIR]

Without OUT_DIR the committed package is replaced. The test suite calls this with a temp dir
and compares, so a change to proto/ without a regeneration fails CI.
Needs the test extras (grpcio-tools, betterproto2-compiler); nothing here is used at run time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE_DIR = ROOT / "eebus_bridge" / "generated"

_MARKER = '''"""Generated gRPC code for the eebus_grpc_api wire interface. DO NOT EDIT.

Made by tools/gen_grpc.py from proto/ with betterproto2-compiler (grpclib, async).
"""

# trio_asyncio before grpclib: grpclib keeps a reference to asyncio.current_task at import, and
# on Python >= 3.12 only trio_asyncio's replacement of it sees trio-asyncio's loop.
import trio_asyncio  # noqa: F401
'''


def proto_files() -> list[str]:
    return sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Write the generated package (with its marker __init__.py) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "__init__.py").write_text(_MARKER)
    # The plugin (protoc-gen-python_betterproto2) is installed next to this interpreter.
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_betterproto2_out={out_dir}",
            "--python_betterproto2_opt=client_generation=async,server_generation=async",
            *proto_files(),
        ],
        check=True,
        env=env,
        cwd=PROTO_DIR,
        stdout=subprocess.DEVNULL,
    )
    # betterproto2 overwrites the package __init__.py with an empty one: put the marker back.
    (out_dir / "__init__.py").write_text(_MARKER)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        generate(Path(argv[1]))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "generated"
        generate(fresh)
        shutil.rmtree(PACKAGE_DIR, ignore_errors=True)
        shutil.copytree(fresh, PACKAGE_DIR)
    print(f"regenerated {PACKAGE_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
