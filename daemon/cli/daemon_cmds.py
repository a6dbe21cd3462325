"""`ensign daemon` and `ensign config ...`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ensign.daemon.errors import ConfigError, UsageError
from ensign.daemon.files import DirLock
from ensign.daemon.observe import logs
from ensign.daemon.observe.sdnotify import notify

from .common import read_input

if TYPE_CHECKING:  # the config's pydantic models: imported by the commands using them
    from ensign.daemon import config as config_mod


def register(sub: Any) -> None:
    p = sub.add_parser("daemon", help="run the daemon in the foreground")
    p.add_argument("--config", type=Path, help="config file (default $ENSIGN_CONFIG or "
                   "/etc/ensign/ensign.toml)")
    p.add_argument("--dev", action="store_true",
                   help="run on an embedded default config with everything under --state-dir")
    p.add_argument("--state-dir", type=Path,
                   help="state directory for --dev (default ./.ensign); only with --dev")
    p.set_defaults(func=run_daemon)

    c = sub.add_parser("config", help="validate or print configuration")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND",
                            parser_class=type(c))
    check = csub.add_parser("check", help="validate a config file")
    check.add_argument("--config", type=Path)
    check.set_defaults(func=config_check)
    defaults = csub.add_parser("defaults", help="print every key with its default value")
    defaults.set_defaults(func=config_defaults)

    ca = sub.add_parser("ca", help="a node CA signed by an offline organisation root")
    casub = ca.add_subparsers(dest="ca_command", required=True, metavar="SUBCOMMAND",
                              parser_class=type(ca))
    req = casub.add_parser("request-csr", help="make the node CA key and a CSR for the org root")
    req.add_argument("--out", type=Path, metavar="FILE",
                     help="where to write the CSR (PEM; default: print it)")
    inst = casub.add_parser("install-signed", help="install the certificate the org root signed")
    inst.add_argument("cert", type=Path, help="the signed node CA certificate (PEM)")
    inst.add_argument("--root", type=Path, required=True, help="the org root certificate (PEM)")
    for p in (req, inst):
        p.add_argument("--config", type=Path, help="config naming data_dir and trust_domain")
    req.set_defaults(func=ca_request_csr)
    inst.set_defaults(func=ca_install_signed)


def run_daemon(args: argparse.Namespace) -> int:
    # the config's pydantic models and the registry: imported by the commands that use them
    from ensign.daemon import config as config_mod

    from . import dev

    if args.dev and args.config:
        raise UsageError("--dev and --config exclude each other")
    if args.state_dir is not None and not args.dev:
        raise UsageError("--state-dir goes with --dev (a configured daemon keeps its state in "
                         "data_dir)")
    state_dir = args.state_dir or Path(".ensign")
    cfg = config_mod.dev_config(state_dir) if args.dev else config_mod.load(args.config)
    # Held until exit, taken before anything is written: a second daemon on the same
    # directories would rewrite the env file, stop the swtpm, fork the audit chain. The
    # data_dir lock is Daemon.run's, taken first thing (after a fleet's database check, which
    # writes nothing: a node that cannot reach its database leaves no data_dir behind).
    state_lock = DirLock.take(state_dir, "state directory") if args.dev else None
    logs.setup(cfg.log_level)
    if args.dev:
        dev.forget_env(state_dir)

    from ensign.daemon.app import Daemon  # the whole daemon: imported only when running one

    async def serve() -> int:
        # Built inside the running loop: grpclib binds its server to the loop it sees.
        daemon = Daemon(cfg, config_path=None if args.dev else
                        (args.config or config_mod.resolve_path()))

        async def ready() -> None:  # both sockets serve
            if args.dev:
                await dev.ready(cfg, state_dir, daemon.node.roles, daemon.node.registry)
            notify(f"READY=1\nSTATUS=serving {cfg.socket_path}")

        return await daemon.run(ready)

    try:
        return asyncio.run(serve())
    finally:
        notify("STOPPING=1")
        if state_lock is not None:
            state_lock.release()


def config_check(args: argparse.Namespace) -> int:
    from ensign.daemon import config as config_mod

    cfg = config_mod.load(args.config)
    problems = attestor_problems(cfg)
    if problems:
        raise ConfigError(f"{args.config or config_mod.resolve_path()}: " + "; ".join(problems))
    print(f"config ok: trust domain {cfg.trust_domain}, socket {cfg.socket_path}")
    return 0


def attestor_problems(cfg: config_mod.Config) -> list[str]:
    """Each enabled attestor built as the daemon builds it, asked what keeps it from working
    (a trusted_root that cannot be read, ...): `attestors.<name>.<key>: why`."""
    from ensign.attestors import BUILTIN

    out = []
    for name, factory in BUILTIN.items():
        section = getattr(cfg.attestors, name)
        if section.enabled and name != "tpm":  # the TPM is checked when the daemon opens it
            problem = factory(section).problem()
            if problem is not None:
                out.append(f"attestors.{name}.{problem}")
    return out


def config_defaults(args: argparse.Namespace) -> int:
    from ensign.daemon import config as config_mod

    sys.stdout.write(config_mod.to_toml(config_mod.Config()))
    return 0


def ca_request_csr(args: argparse.Namespace) -> int:
    from ensign.daemon import config as config_mod
    from ensign.daemon.issuing.ca_offline import request_csr

    cfg = config_mod.load(args.config)
    csr = request_csr(cfg.data_dir, cfg.trust_domain, cfg.ca.key_type)
    if args.out is None:
        sys.stdout.write(csr.decode())
        return 0
    args.out.write_bytes(csr)
    print(f"wrote {args.out}: have the organisation root sign it, then "
          "`ensign ca install-signed CERT --root ROOT`")
    return 0


def ca_install_signed(args: argparse.Namespace) -> int:
    from ensign.daemon import config as config_mod
    from ensign.daemon.issuing.ca_offline import install_signed

    cfg = config_mod.load(args.config)
    cert = read_input(args.cert, "certificate")
    root = read_input(args.root, "root certificate")
    until = install_signed(cfg.data_dir, cfg.trust_domain, cert, root)
    print(f"installed the node CA (valid until {until}); restart the daemon to use it")
    return 0
