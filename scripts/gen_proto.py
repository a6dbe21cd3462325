"""Generate the Python modules for proto/*.proto, or check that the committed ones are current.

The Workload API proto has no package, so its messages would collide with any client library's
vendored copy in protobuf's default descriptor pool (py-spiffe ships one). The generated module is
rewritten to load into Ensign's private pool (ensign.proto._pool) instead.

Envoy's SDS messages come from the `xds-protos` package (generated from envoyproxy/data-plane-api
by the gRPC project, under their canonical names in the default pool, where nothing else of ours
lives). Only grpclib's service mapping for them is generated here, from the descriptors that
package holds: proto/sds_grpc.py, checked for drift like the rest.

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
#: proto files of xds-protos whose grpclib service mapping we generate, and its module name here
XDS_SERVICES = {"envoy/service/secret/v3/sds.proto": "sds_grpc.py"}


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
    _generate_xds(out, gen, env)
    return sorted(p for p in gen.iterdir() if p.is_file())


def _generate_xds(out: Path, gen: Path, env: dict[str, str]) -> None:
    """grpclib mappings for xds-protos services: protoc reads the installed descriptors."""
    import importlib

    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd: object) -> None:
        name = fd.name  # type: ignore[attr-defined]
        if name in seen:
            return
        seen.add(name)
        for dep in fd.dependencies:  # type: ignore[attr-defined]
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)  # type: ignore[attr-defined]
        files.file.append(proto)

    for source in XDS_SERVICES:
        add(importlib.import_module(source[:-len(".proto")].replace("/", ".") + "_pb2").DESCRIPTOR)
    desc = out / "xds.pb"
    desc.write_bytes(files.SerializeToString())
    xds_out = out / "xds"
    xds_out.mkdir()
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"--descriptor_set_in={desc}",
                    f"--grpclib_python_out={xds_out}", *XDS_SERVICES], check=True, env=env)
    for source, module in XDS_SERVICES.items():
        shutil.copyfile(xds_out / (source[:-len(".proto")] + "_grpc.py"), gen / module)


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
