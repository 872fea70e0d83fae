"""A local path on a cluster: a place every node reaches, or one line before any work starts.

Ray tasks and Ray Train's workers read and write paths from whatever node they run on: the
checkpoints of `--storage`, the dataset of `--data`, ingest's SOURCE and DEST, predict's image
folder. Each is checked here (`check_shared`; `check_storage` for --storage). A URI (s3://, gs://, hdfs://) names the same place from every node. A
local path names each node's own folder, unless it is on a network filesystem that every node
mounts; Ray Train 2.60 finds out only after the first epoch (its storage marker check), so it is
checked here, before anything starts:

- one alive node: any path (the driver and the workers share its disk);
- more nodes: a path is accepted only if every alive node reports it on the same network
  filesystem mount (type in NETWORK_FILESYSTEMS, same source and root), as its own
  /proc/self/mountinfo says, read by a zero-CPU task pinned to that node.

Nodes that join later (an autoscaler's) cannot be asked: on an autoscaling cluster pass a URI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines.errors import UserError
from pipelines.storage import is_uri

# Filesystems whose files live on a server that several hosts mount (NFS also covers AWS EFS,
# GCP Filestore and Azure NetApp; SMB covers Azure Files).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "ceph", "fuse.ceph", "glusterfs", "fuse.glusterfs",
    "gpfs", "beegfs", "wekafs", "fuse.juicefs", "fuse.gcsfuse", "fuse.s3fs", "fuse.sshfs",
})
MOUNTINFO = "/proc/self/mountinfo"
ASK_TIMEOUT_S = 120.0  # for every node's answer together (a node starts a worker process to answer)


@dataclass(frozen=True)
class Mount:
    fstype: str
    source: str  # device or server export, e.g. /dev/vda or fs-1234.efs.aws.com:/
    root: str  # the folder of that filesystem mounted here
    point: str  # where it is mounted

    def shared_with(self, other: "Mount | None") -> bool:
        return (other is not None and self.fstype in NETWORK_FILESYSTEMS
                and (self.fstype, self.source, self.root) == (other.fstype, other.source, other.root))


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline and backslash in paths as \\040, \\011, \\012, \\134."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """/proc/self/mountinfo lines: `ID PARENT MAJ:MIN ROOT POINT OPTIONS [TAGS...] - TYPE SOURCE SUPER`."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or len(fields) < dash + 3:
            continue
        mounts.append(Mount(fstype=fields[dash + 1], source=_unescape(fields[dash + 2]),
                            root=_unescape(fields[3]), point=_unescape(fields[4])))
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount holding absolute `path`: the last one mounted at its longest containing mount point."""
    best = None
    for mount in mounts:
        point = mount.point.rstrip("/") or "/"
        if path == point or path.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) >= len(best.point.rstrip("/") or "/"):
                best = mount
    return best


def node_mount(path: str) -> Mount | None:
    """On this node: the mount that holds `path`, or the nearest folder above it that exists
    (None where the OS has no mountinfo)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing) and existing != os.path.dirname(existing):
        existing = os.path.dirname(existing)
    try:
        with open(MOUNTINFO) as f:
            mounts = parse_mountinfo(f.read())
    except OSError:
        return None
    return mount_of(os.path.realpath(existing), mounts)


# What goes wrong when a path is one node's own folder, by the option that named it.
CONSEQUENCES = {
    "--storage": "train workers on the others cannot write there (Ray Train would fail after the first epoch)",
    "--data": "the tasks that read it on the others would find nothing there",
    "SOURCE": "ingest tasks on the others would find no files there (a silently partial dataset)",
    "DEST": "ingest tasks on the others would write their shards to their own disks",
}


def refusal(storage: str, mounts: dict[str, Mount | None], option: str = "--storage") -> str | None:
    """The one-line error for a local `storage` path, given as `option`, on a cluster whose alive
    nodes (name -> what that node mounts there, None if it could not tell) are `mounts`; None when
    it is accepted."""
    if len(mounts) <= 1:
        return None
    reports = list(mounts.values())
    if reports[0] is not None and all(reports[0].shared_with(m) for m in reports[1:]):
        return None
    fix = (f"pass {option} s3://BUCKET/PREFIX (or another URI pyarrow opens, e.g. gs://), or a folder on a "
           "network filesystem that every node mounts (NFS, SMB, Lustre, CephFS, ...)")
    local = [(name, m) for name, m in mounts.items() if m is None or m.fstype not in NETWORK_FILESYSTEMS]
    if local:
        name, m = local[0]
        where = f"{m.fstype} {m.source} at {m.point}" if m is not None else "a filesystem it could not tell"
        return (f"{option} {storage} is a folder on each node's own disk (node {name}: {where}), but the Ray "
                f"cluster has {len(mounts)} nodes and {CONSEQUENCES[option]}; {fix}")
    seen = "; ".join(f"node {name}: {m.fstype} {m.source}{m.root if m.root != '/' else ''}" for name, m in mounts.items())
    return f"{option} {storage} is not the same filesystem on every node ({seen}); {fix}"


def check_storage(storage: str) -> None:
    """UserError (one line) when `storage` (a path or a URI) is not one place for every alive node
    of the connected Ray cluster. Needs Ray initialised."""
    check_shared(storage, "--storage")


def check_shared(storage: str, option: str) -> None:
    """As check_storage, for the path that `option` names (a key of CONSEQUENCES)."""
    if is_uri(storage) and not storage.startswith("file://"):
        return

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    path = os.path.abspath(storage[len("file://"):] if storage.startswith("file://") else storage)
    message = refusal(storage, _ask_nodes(nodes, path), option)
    if message:
        raise UserError(message)


def _ask_nodes(nodes: list[dict], path: str) -> dict[str, Mount | None]:
    """node name -> node_mount(path) as that node answers (None if it does not, in time)."""
    ask = ray.remote(num_cpus=0, max_retries=0)(node_mount)
    refs = {f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})":
            ask.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(path)
            for n in nodes}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=ASK_TIMEOUT_S)
    answers = {}
    for name, ref in refs.items():
        try:
            answers[name] = ray.get(ref) if ref in ready else None
        except ray.exceptions.RayError:
            answers[name] = None  # the node died meanwhile: it cannot vouch for the path
    return answers
