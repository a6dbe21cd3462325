"""Generate the Python modules for proto/*.proto, or check that the committed ones are current.

The Workload API proto has no package, so its messages would collide with any client library's
vendored copy in protobuf's default descriptor pool (py-spiffe ships one). The generated module is
rewritten to load into Ensign's private pool (ensign.proto._pool) instead.

    python scripts/gen_proto.py          # regenerate into proto/
    python scripts/gen_proto.py --check  # exit 1 if proto/ differs from a fresh generation
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PRIVATE_POOL_FILES = {"workload.proto"}


def _generate(out: Path) -> list[Path]:
    sources = sorted(PROTO_DIR.glob("*.proto"))
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-Iensign/proto={PROTO_DIR}",
        f"--python_out={out}", f"--pyi_out={out}", f"--grpclib_python_out={out}",
        *[str(s) for s in sources],
    ]
    subprocess.run(cmd, check=True, env=env)
    gen = out / "ensign" / "proto"
    for src in sources:
        if src.name in PRIVATE_POOL_FILES:
            _use_private_pool(gen / (src.stem + "_pb2.py"))
    return sorted(p for p in gen.iterdir() if p.is_file())


def _use_private_pool(path: Path) -> None:
    text = path.read_text()
    anchor = "from google.protobuf.internal import builder as _builder\n"
    if anchor not in text or "_descriptor_pool.Default().AddSerializedFile(" not in text:
        raise SystemExit(f"gen_proto: unexpected generated code in {path.name}")
    text = text.replace(anchor, anchor + "from ensign.proto import _pool as _private_pool\n")
    text = text.replace(
        "_descriptor_pool.Default().AddSerializedFile(", "_private_pool.POOL.AddSerializedFile("
    )
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated files are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = _generate(Path(tmp))
        if args.check:
            stale = [
                p.name
                for p in generated
                if not (PROTO_DIR / p.name).exists()
                or not filecmp.cmp(p, PROTO_DIR / p.name, shallow=False)
            ]
            if stale:
                print(f"gen_proto: stale generated files: {', '.join(stale)}; run `make proto`",
                      file=sys.stderr)
                return 1
            print(f"gen_proto: {len(generated)} generated files are current")
            return 0
        for p in generated:
            shutil.copyfile(p, PROTO_DIR / p.name)
        print(f"gen_proto: wrote {len(generated)} files to proto/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
