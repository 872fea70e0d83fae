"""A real multi-node Ray cluster on this machine: `ray start --head` plus `ray start --address`
nodes, each its own raylet (as on a cluster, where each host runs one), for the tests that need
nodes to die and join. Its processes are found and ended by their own ids, never by name.

Token authentication: a Ray 2.60 cluster started by `ray.init()` has it on unless RAY_AUTH_MODE
says otherwise. `ray start --head` turns it on only when it finds a token, and a second `ray
start --address` or a driver given an address never turns it on by itself (they read
RAY_AUTH_MODE and the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). So
the cluster follows the session's RAY_AUTH_MODE (default: token) and every process started for
it, drivers included, gets the mode and the token explicitly in `env`: the session's own token
when it names one, else a new one in the cluster's folder (never ~/.ray, which other clusters on
this machine may read).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.support import free_port

VENV_BIN = Path(sys.executable).parent
# A dead node is declared dead after about period x threshold (Ray's defaults: 3 s x 5), generous
# enough for a loaded 2-core machine.
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_timeout_ms": 5000, "health_check_failure_threshold": 6}
START_TIMEOUT_S = 300


def auth_env(folder: Path) -> dict[str, str]:
    """RAY_AUTH_MODE and the token source that every process of the cluster gets (see above)."""
    mode = os.environ.get("RAY_AUTH_MODE", "token").lower()
    if mode != "token":
        return {"RAY_AUTH_MODE": mode}
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return {"RAY_AUTH_MODE": "token"}  # the session's token, inherited with the environment
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def token_of(env: dict) -> str | None:
    if env.get("RAY_AUTH_MODE") != "token":
        return None
    return env.get("RAY_AUTH_TOKEN") or Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()


@dataclass
class Node:
    port: int  # its raylet's node manager port: how its processes are told apart on this machine
    node_id: str = ""
    pgid: int = 0  # the process group its `ray start` made (its raylet and agents)
    raylet_pid: int = 0


@dataclass
class RayCluster:
    root: Path  # short (Unix socket paths under it are limited to ~107 bytes)
    env: dict
    gcs_port: int
    dashboard_port: int
    object_store_bytes: int | None = 150_000_000  # per node; None: Ray's default (30% of RAM)
    agent_port: int = 0  # the job agent's HTTP port; 0: one the OS picks
    head: Node | None = None
    workers: list[Node] = field(default_factory=list)

    @classmethod
    def start(cls, head_cpus: int = 0, object_store_bytes: int | None = 150_000_000,
              agent_port: int = 0) -> "RayCluster":
        """A head node (GCS, dashboard/job server, and `head_cpus` CPUs: 0 keeps every task and
        train worker off the driver's node) on free loopback ports. Its job agent binds a port
        the OS picks unless `agent_port` names one (Ray's default, a fixed 52365, is shared by
        every Ray on the machine)."""
        root = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
        gcs_port = free_port()
        # RAY_ADDRESS in every process of the cluster: Ray's own actors that look "their" cluster
        # up (Ray Train's PlacementGroupCleaner) would otherwise find several on this machine.
        env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **auth_env(root),
               "RAY_ADDRESS": f"127.0.0.1:{gcs_port}"}
        cluster = cls(root, env, gcs_port, free_port(), object_store_bytes, agent_port)
        try:
            cluster.head = cluster._ray_start(
                "--head", f"--port={cluster.gcs_port}", f"--num-cpus={head_cpus}", "--include-dashboard=true",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={cluster.dashboard_port}",
                f"--ray-client-server-port={free_port()}", f"--system-config={json.dumps(HEALTH_CHECKS)}")
            cluster._wait_dashboard()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def address(self) -> str:
        """The GCS address a driver passes as RAY_ADDRESS."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def token(self) -> str | None:
        """The cluster's auth token (None when token authentication is off)."""
        return token_of(self.env)

    def add_node(self, cpus: int = 2) -> Node:
        return self._ray_start(f"--address={self.address}", f"--num-cpus={cpus}")

    def kill_raylet(self, node: Node) -> int:
        """SIGKILL the node's raylet, as when its host dies: its workers go with it and the GCS
        declares the node dead after its health checks. Returns the raylet's pid."""
        os.kill(node.raylet_pid, signal.SIGKILL)
        return node.raylet_pid

    def state(self, kind: str, *filters: str) -> list[dict]:
        """`ray list KIND` through the dashboard (the state API), as JSON."""
        cmd = ["ray", "list", kind, "--address", self.dashboard, "--format", "json", "--limit", "10000", "--detail"]
        for f in filters:
            cmd += ["--filter", f]
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120, check=True).stdout
        return json.loads(out)

    def stop(self) -> None:
        """SIGKILL every process of the cluster, then remove its folder: first each node's
        process group (its `ray start` daemons: GCS, raylet, agents), so that no new worker
        starts, then what is left of it: workers (which make their own process groups) carry
        this cluster's RAY_ADDRESS in their environment."""
        groups = {node.pgid for node in [self.head, *self.workers] if node is not None and node.pgid}
        for _ in range(2):
            for proc in psutil.process_iter(["pid"]):
                try:
                    if os.getpgid(proc.pid) in groups or proc.environ().get("RAY_ADDRESS") == self.address:
                        proc.kill()
                except (ProcessLookupError, psutil.Error):
                    pass
            time.sleep(1)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- internals

    def _ray_start(self, *args: str) -> Node:
        port = free_port()
        cmd = ["ray", "start", *args, f"--node-manager-port={port}", f"--temp-dir={self.root}",
               f"--dashboard-agent-listen-port={self.agent_port}", "--disable-usage-stats"]
        if self.object_store_bytes:
            cmd.append(f"--object-store-memory={self.object_store_bytes}")
        proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # its daemons keep this process group
        node = Node(port=port, pgid=proc.pid)
        if self.head is None:
            self.head = node  # from here on, stop() ends what this `ray start` left
        else:
            self.workers.append(node)
        try:
            out, _ = proc.communicate(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{out[-3000:]}")
        node.raylet_pid = self._raylet_pid(node)
        raylet = psutil.Process(node.raylet_pid).cmdline()
        node.node_id = next(a.split("=", 1)[1] for a in raylet if a.startswith("--node_id="))
        return node

    def _raylet_pid(self, node: Node) -> int:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = proc.info["cmdline"] or []
            if cmd and cmd[0].endswith("raylet") and f"--node_manager_port={node.port}" in cmd:
                return proc.pid
        raise RuntimeError(f"no raylet with node manager port {node.port}")

    def _wait_dashboard(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        request = urllib.request.Request(f"{self.dashboard}/api/version",
                                         headers={"Authorization": f"Bearer {self.token}"} if self.token else {})
        while True:
            try:
                urllib.request.urlopen(request, timeout=5).read()
                return
            except OSError as err:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the dashboard at {self.dashboard} did not answer: {err}") from err
                time.sleep(0.5)
