"""Paths every node of the Ray cluster must see as the driver does.

On a cluster, Ray Data reads the episodes, the teacher actor loads its checkpoint and Train
workers write checkpoints on whichever node Ray picks. A path on one machine's local disk then
fails deep inside a worker, minutes into a run. `check_shared_paths` asks every other node, once,
before anything starts, and fails in one line naming the path and the node.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError, TaskUnschedulableError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger(__name__)

PROBE_PREFIX = ".tdmpc_ray-shared-"
"""Name prefix of the probe file written into each output folder while the nodes look for it."""
TIMEOUT_S = 120.0
"""How long to wait for a node's answer before going on without it (a warning)."""


def fingerprint(path: str) -> str | None:
    """What this machine sees at `path`: None when nothing is there; for a file its size and the
    sha256 of its first MiB; for a folder its entries' names and sizes, one level down."""
    target = Path(path)
    if target.is_file():
        with open(target, "rb") as f:
            head = hashlib.sha256(f.read(1 << 20)).hexdigest()
        return f"file {target.stat().st_size} {head}"
    if target.is_dir():
        entries = sorted(
            (e.name, e.stat().st_size if e.is_file() else -1) for e in os.scandir(target)
        )
        return "dir " + hashlib.sha256(repr(entries).encode()).hexdigest()
    return None


@ray.remote(num_cpus=0)
def _fingerprints(paths: list[str]) -> list[str | None]:
    return [fingerprint(p) for p in paths]


def _local(paths: Mapping[str, str | os.PathLike | None]) -> dict[str, str]:
    """The entries of `paths` on a file system (URIs and unset ones left out), made absolute."""
    return {
        name: str(Path(path).resolve())
        for name, path in paths.items()
        if path is not None and "://" not in str(path)
    }


def _other_nodes() -> dict[str, str]:
    """Alive nodes other than the driver's: node id -> address."""
    here = ray.get_runtime_context().get_node_id()
    return {
        n["NodeID"]: n["NodeManagerAddress"]
        for n in ray.nodes()
        if n["Alive"] and n["NodeID"] != here
    }


def check_shared_paths(
    inputs: Mapping[str, str | os.PathLike | None],
    outputs: Mapping[str, str | os.PathLike | None] | None = None,
) -> None:
    """Fail with one line unless every node sees each of `inputs` (name -> path; files or
    folders the run reads) as the driver does, and sees a probe file written into each of
    `outputs` (folders the run writes; created here). URIs and None are skipped; so is a
    one-node cluster. Raises ValueError naming the path, its name and the node."""
    inputs, outputs = _local(inputs), _local(outputs or {})
    nodes = _other_nodes() if inputs or outputs else {}
    if not nodes:
        return
    probes = {}
    for name, folder in outputs.items():
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe = Path(folder) / f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        probe.write_text(probe.name)
        probes[name] = str(probe)
    try:
        paths = {**inputs, **probes}
        expected = [fingerprint(p) for p in paths.values()]
        refs = {
            node: _fingerprints.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            ).remote(list(paths.values()))
            for node in nodes
        }
        for node, ref in refs.items():
            try:
                seen = ray.get(ref, timeout=TIMEOUT_S)
            except GetTimeoutError:
                log.warning(
                    "node %s did not answer within %.0f s: its paths are not checked",
                    nodes[node],
                    TIMEOUT_S,
                )
                continue
            except TaskUnschedulableError:  # the node left since it was listed
                continue
            for (name, path), want, got in zip(paths.items(), expected, seen, strict=True):
                if got != want:
                    shown = outputs[name] if name in probes else path
                    what = "missing" if got is None else "different"
                    raise ValueError(
                        f"{name} {shown} is {what} on node {nodes[node]}: every node reads and "
                        "writes it, so put it on storage all nodes mount (NFS, a shared disk) "
                        "or give a URI (s3://, gs://) for outputs"
                    )
    finally:
        for probe in probes.values():
            Path(probe).unlink(missing_ok=True)
