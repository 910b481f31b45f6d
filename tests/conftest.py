"""Shared fixtures: one local Ray per test session, and TD-MPC2 data set files built for real."""

from __future__ import annotations

import copyreg
import os
import pickle
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the multi-node tests last: their cluster replaces the session's local Ray."""
    items.sort(key=lambda item: item.path.name == "test_multinode.py")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[object]:
    """One local Ray instance for the whole session (starting Ray costs ~10 s here). Its
    workers' output stays in Ray's log files: forwarded to this process, a line from an earlier
    test's leftover actor (Ray Train's placement-group cleaner, say) lands in whatever a later
    test captures from stderr. It runs its dashboard, as a user's Ray does: Ray Train's
    placement-group cleaner asks the State API (the dashboard serves it) whether a run's
    controller is alive, and without it a Tune trial stopped early (ASHA, `max_t`) leaves its
    workers' placement group holding CPUs that a later test then waits for forever."""
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    if not ray.is_initialized():
        from tests.helpers import free_ports

        (port,) = free_ports(1)
        ray.init(num_cpus=2, include_dashboard=True, dashboard_port=port, log_to_driver=False)
    yield ray
    ray.shutdown()


LEAK_GRACE_S = 60.0
"""How long a finished test's placement groups may take to go (Ray Train's cleaner polls the
State API each second)."""


def _live_placement_groups(ray) -> dict[str, dict]:
    table = ray.util.placement_group_table()
    return {pg_id: pg for pg_id, pg in table.items() if pg["state"] != "REMOVED"}


@pytest.fixture(autouse=True)
def no_leaked_placement_groups() -> Iterator[None]:
    """Fail a test that leaves a placement group behind, and remove it: CPUs it holds make a
    later test wait forever for its workers or actors."""
    ray = sys.modules.get("ray")
    before = set(_live_placement_groups(ray)) if ray and ray.is_initialized() else set()
    yield
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    deadline = time.monotonic() + LEAK_GRACE_S
    while left := {k: v for k, v in _live_placement_groups(ray).items() if k not in before}:
        if time.monotonic() > deadline:
            from ray.util.placement_group import PlacementGroup

            for pg_id in left:
                pg = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id)))
                ray.util.remove_placement_group(pg)
            bundles = "; ".join(f"{k[:12]} {v['bundles']}" for k, v in left.items())
            pytest.fail(f"placement groups left behind: {bundles}")
        time.sleep(0.5)


def tdmpc2_episodes(
    episodes: int, steps: int = 501, obs_dim: int = 24, action_dim: int = 6, first: int = 0
) -> dict:
    """Episodes in TD-MPC2's public layout whose values say where they come from: in
    episode e (numbered from `first`), obs[t], action[t] and reward[t] hold 1000*e + t in their
    first entry (obs also 1000*e + t + d/64 in entry d), step 0 of action/reward is NaN, and
    episode e has task e % 30."""
    import torch

    e = torch.arange(first, first + episodes, dtype=torch.float32).view(-1, 1)
    tag = 1000 * e + torch.arange(steps, dtype=torch.float32)
    obs = tag.unsqueeze(-1) + torch.arange(obs_dim, dtype=torch.float32) / 64
    action = tag.unsqueeze(-1).repeat(1, 1, action_dim)
    action[:, :, 1:] = torch.linspace(-1, 1, action_dim - 1)
    reward = tag.clone()
    action[:, 0] = float("nan")
    reward[:, 0] = float("nan")
    task = (e.to(torch.int32) % 30).expand(episodes, steps).contiguous()
    return {"obs": obs, "action": action, "reward": reward, "task": task}


class _LegacyTensorDict:
    """Pickles exactly as tensordict <= 0.2 pickled a TensorDict (the public files' release):
    the class under `tensordict.tensordict`, created by NEWOBJ and filled by BUILD with its slots."""

    def __init__(self, fields: dict, batch_size: tuple[int, ...]) -> None:
        import torch

        self.state = {
            "_tensordict": _LegacyStringOnlyDict(fields),
            "_batch_size": torch.Size(batch_size),
            "_is_shared": False,
            "_is_memmap": False,
            "_device": None,
            "_is_locked": False,
            "_td_dim_names": None,
            "_lock_id": set(),
            "_locked_tensordicts": [],
        }

    def __reduce_ex__(self, protocol: int) -> tuple:
        return copyreg.__newobj__, (type(self),), self.state


class _LegacyStringOnlyDict(dict):
    """Pickles as tensordict <= 0.2's key dict `tensordict.utils._StringOnlyDict`."""

    def __reduce_ex__(self, protocol: int) -> tuple:
        return copyreg.__newobj__, (type(self),), None, None, iter(self.items())


class _LegacyPickler(pickle._Pickler):
    """Writes the two stand-ins above under tensordict 0.2's global names."""

    names = {
        _LegacyTensorDict: b"tensordict.tensordict\nTensorDict\n",
        _LegacyStringOnlyDict: b"tensordict.utils\n_StringOnlyDict\n",
    }

    def save_global(self, obj: object, name: str | None = None) -> None:
        if obj in self.names:
            self.write(pickle.GLOBAL + self.names[obj])
            self.memoize(obj)
            return
        super().save_global(obj, name)


def save_chunk(path: Path, fields: dict, legacy: bool = False) -> Path:
    """`torch.save` a TensorDict of `fields` (batch [E, T]) as the public chunk files are:
    with tensordict 0.15's pickling, or with `legacy` as tensordict 0.2 pickled it."""
    import torch
    from tensordict import TensorDict

    batch_size = tuple(fields["reward"].shape[:2])
    if legacy:
        module = types.SimpleNamespace(__name__="legacy_pickle", Pickler=_LegacyPickler)
        torch.save(_LegacyTensorDict(fields, batch_size), path, pickle_module=module)
    else:
        torch.save(TensorDict(fields, batch_size=batch_size), path)
    return path


@pytest.fixture
def make_chunk(tmp_path: Path) -> Callable[..., Path]:
    """`make_chunk(name, episodes, steps=501, first=0, legacy=False, edit=None)` writes a chunk
    of `tdmpc2_episodes` under tmp_path; `edit(fields)` may corrupt the fields first."""

    def make(
        name: str,
        episodes: int,
        steps: int = 501,
        first: int = 0,
        legacy: bool = False,
        edit: Callable[[dict], None] | None = None,
    ) -> Path:
        fields = tdmpc2_episodes(episodes, steps, first=first)
        if edit is not None:
            edit(fields)
        return save_chunk(tmp_path / name, fields, legacy)

    return make
