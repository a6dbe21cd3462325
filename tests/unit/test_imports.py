"""What an `ensign` command pays for before it runs, and the package surfaces that lazy
re-exports (ensign.daemon.lazy) must keep whole.

Every CLI call imports the CLI and builds its parser (all subcommands); the libraries below are
for the daemon or for one command, and imported by those alone. Checked in a fresh interpreter
by what it loaded, not by a time.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import REPO

#: Third-party libraries no CLI start needs: PostgreSQL (a fleet), aiohttp (HTTPS, federation),
#: Sigstore verification, Envoy's protos (SDS), OCSF/JSON Schema, the TPM libraries, PyJWT,
#: Prometheus. Each costs tens of milliseconds on every call.
HEAVY_LIBRARIES = (
    "psycopg", "psycopg_pool", "aiohttp", "sigstore", "sigstore_models", "envoy", "xds", "udpa",
    "jsonschema", "ocsf_emitter", "ocsf_json_schema", "tpm2_pytss", "jwt", "prometheus_client",
)
#: Ensign's own parts that pull those in or build many pydantic models: the daemon, the api
#: services, the fleet, the config (imported only by the commands that read one).
HEAVY_MODULES = (
    "ensign.daemon.app", "ensign.daemon.wiring", "ensign.daemon.state", "ensign.daemon.api.front",
    "ensign.daemon.fleet", "ensign.daemon.registry.postgres", "ensign.daemon.federation",
    "ensign.daemon.config", "ensign.attestors._sigstore_verify", "ensign.daemon.cli.apply_file",
)

CLI_START = """
import json, sys
import ensign.daemon.cli
ensign.daemon.cli.build_parser()
print(json.dumps(sorted(sys.modules)))
"""


def _loaded(code: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    modules: list[str] = json.loads(r.stdout)
    return modules


def test_cli_start_imports_no_heavy_library_or_daemon_part() -> None:
    loaded = _loaded(CLI_START)
    assert "ensign.daemon.cli.workload_cmds" in loaded  # the parser was built
    heavy = sorted({m.split(".")[0] for m in loaded if m.split(".")[0] in HEAVY_LIBRARIES}
                   | {h for h in HEAVY_MODULES for m in loaded
                      if m == h or m.startswith(h + ".")})
    assert heavy == [], "import these in the command that needs them: " + ", ".join(heavy)


DAEMON_START = """
import asyncio, json, signal, sys
from pathlib import Path
from ensign.daemon.app import Daemon
from ensign.daemon.config import parse
tmp = Path(sys.argv[1])
config = parse({"trust_domain": "example.org", "socket_path": str(tmp / "a.sock"),
                "admin_socket_path": str(tmp / "adm.sock"), "data_dir": str(tmp / "data")})
daemon = Daemon(config)
async def ready():
    daemon._on_signal(signal.SIGTERM)
assert asyncio.run(daemon.run(ready)) == 0
print(json.dumps(sorted(sys.modules)))
"""


def test_a_node_without_fleet_https_federation_or_tpm_starts_without_their_libraries(
        tmp_path: Path) -> None:
    """PostgreSQL's driver, aiohttp and tpm2-pytss load only on the nodes configured to use
    them (wiring.py imports them where it builds them): a plain node serves without them."""
    r = subprocess.run([sys.executable, "-c", DAEMON_START, str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout.strip().splitlines()[-1]))
    assert "ensign.daemon.wiring" in loaded and "grpclib.server" in loaded  # it did start
    assert sorted({m.split(".")[0] for m in loaded}
                  & {"psycopg", "psycopg_pool", "aiohttp", "tpm2_pytss"}) == []


EVERY_ERROR = """
import importlib, json, pkgutil
import ensign.attestors, ensign.daemon
from ensign.daemon.errors import EnsignError
for pkg in (ensign.daemon, ensign.attestors):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
print(json.dumps({n: [c.grpc_status.name, c.exit_code] for n, c in EnsignError._by_name.items()}))
"""

CLI_EXIT_CODES = """
import json, sys
from grpclib.const import Status
import ensign.daemon.cli
from ensign.daemon.cli import common
from ensign.daemon.errors import exit_code_for
ensign.daemon.cli.build_parser()
out = {}
for name, (status, _) in json.loads(sys.stdin.read()).items():
    common._remote_error[0] = name
    out[name] = exit_code_for(Status[status], common.remote_error())
print(json.dumps(out))
"""


def test_cli_exits_with_the_code_of_every_error_class_the_daemon_can_name() -> None:
    """A refusal names its class (trailing `ensign-error`); the CLI exits with that class's
    code even when the command never imported the module defining it."""
    r = subprocess.run([sys.executable, "-c", EVERY_ERROR], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    classes = json.loads(r.stdout)
    assert {"AudienceMismatch", "RateLimited", "NoTpm", "InvalidRequest"} <= set(classes)
    r = subprocess.run([sys.executable, "-c", CLI_EXIT_CODES], input=r.stdout,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {name: code for name, (_, code) in classes.items()}


SURFACES = """
import importlib, json, pkgutil, types
PACKAGES = ["ensign.attestors", "ensign.daemon.actions", "ensign.daemon.anomaly",
            "ensign.daemon.api", "ensign.daemon.audit", "ensign.daemon.delegation",
            "ensign.daemon.federation", "ensign.daemon.fleet", "ensign.daemon.identity",
            "ensign.daemon.issuing", "ensign.daemon.registry", "ensign.daemon.server",
            "ensign.daemon.tpm"]
# Every submodule imported directly first: importing a submodule sets the package attribute of
# its name, which would hide a lazy re-export of the same name.
for name in PACKAGES:
    pkg = importlib.import_module(name)
    for info in pkgutil.iter_modules(pkg.__path__, name + "."):
        importlib.import_module(info.name)
out = {}
for name in PACKAGES:
    pkg = importlib.import_module(name)
    namespace = {}
    exec(f"from {name} import *", namespace)
    out[name] = {
        "all": sorted(pkg.__all__),
        "star": sorted(k for k in namespace if k != "__builtins__"),
        "modules": sorted(n for n in pkg.__all__
                          if isinstance(getattr(pkg, n), types.ModuleType)),
    }
print(json.dumps(out))
"""


def test_every_package_name_in_all_resolves_to_the_object_not_a_submodule() -> None:
    r = subprocess.run([sys.executable, "-c", SURFACES], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    surfaces = json.loads(r.stdout)
    for name, s in surfaces.items():
        assert s["star"] == s["all"], name
        # server exports its `bounds` module on purpose; any other module is a shadowed name
        assert s["modules"] == (["bounds"] if name == "ensign.daemon.server" else []), name


def _lazy_packages() -> list[Path]:
    inits = [REPO / "attestors" / "__init__.py", *sorted((REPO / "daemon").glob("*/__init__.py"))]
    return [p for p in inits if "lazy(__name__" in p.read_text()]


def _lazy_exports(tree: ast.Module) -> dict[str, str]:
    """{public name: ".submodule"} from the `lazy(__name__, {...})` call."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "lazy":
            mapping = ast.literal_eval(node.args[1])
            return {n.partition("=")[0]: m for m, names in mapping.items() for n in names}
    raise AssertionError("no lazy() call")


def _type_checking_imports(tree: ast.Module) -> dict[str, str]:
    """{bound name: ".submodule"} imported under `if TYPE_CHECKING:`."""
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module is not None
                sub = "." + imp.module.rsplit(".", 1)[-1] if imp.level == 0 else "." + imp.module
                out.update({a.asname or a.name: sub for a in imp.names})
    return out


def test_lazy_exports_match_their_typed_imports_and_shadow_no_submodule() -> None:
    """The two lists a lazy package keeps (for the type checker, for the runtime) name the same
    things from the same modules; and no lazy name is also a submodule's name (importing that
    submodule would bind the module in its place)."""
    packages = _lazy_packages()
    assert len(packages) >= 8  # api, actions, audit, attestors, delegation, issuing, ...
    for init in packages:
        tree = ast.parse(init.read_text())
        lazy = _lazy_exports(tree)
        assert lazy == _type_checking_imports(tree), init
        submodules = {p.stem for p in init.parent.glob("*.py")} | {
            p.parent.name for p in init.parent.glob("*/__init__.py")}
        assert sorted(set(lazy) & submodules) == [], init


def test_lazy_names_import_on_first_use_and_unknown_names_fail_as_usual() -> None:
    code = """
import sys
import ensign.daemon.registry as registry
assert "ensign.daemon.registry.postgres" not in sys.modules
from ensign.daemon.registry import PgStore
from ensign.daemon.registry.postgres import PgStore as Direct
assert PgStore is Direct and registry.Changes is sys.modules[
    "ensign.daemon.registry.postgres"].Changes
from ensign.attestors import load_sigstore_trust, verify_sigstore_bundle
from ensign.attestors._sigstore_verify import load_verifier, verify
assert load_sigstore_trust is load_verifier and verify_sigstore_bundle is verify
assert not hasattr(registry, "NoSuchName")
try:
    from ensign.daemon.api import NoSuchService
except ImportError as e:
    print(e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("cannot import name 'NoSuchService' from 'ensign.daemon.api'")
