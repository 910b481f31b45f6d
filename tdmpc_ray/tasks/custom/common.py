"""Shared types and MJCF helpers for the custom MT30 tasks.

TD-MPC2's custom tasks run on lightly edited versions of dm_control's suite models. We derive
them from the stock XMLs installed with dm_control, so each edit is explicit in code and no
model files are copied into the repo.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

import numpy as np
from dm_control.rl import control
from dm_control.suite import common

Random = int | np.random.RandomState | None
TaskFactory = Callable[[Random], control.Environment]
Model = tuple[str, dict[str, bytes]]


def stock_model(filename: str) -> ET.Element:
    """Parsed root of one of dm_control's suite XMLs, e.g. `walker.xml`."""
    return ET.fromstring(common.read_model(filename))


def element(root: ET.Element, tag: str, name: str) -> ET.Element:
    """The `<tag name="name">` element anywhere under `root`."""
    found = root.find(f".//{tag}[@name='{name}']")
    if found is None:
        raise KeyError(f"no <{tag} name={name!r}> in model {root.get('model')!r}")
    return found


def to_model(root: ET.Element) -> Model:
    """XML text plus the suite's shared include files, as `Physics.from_xml_string` takes them."""
    return ET.tostring(root, encoding="unicode"), common.ASSETS


def longer_floor_model(filename: str, floor: str) -> Model:
    """A stock model whose floor plane is twice as long along x (TD-MPC2's backwards tasks).

    MuJoCo planes collide as infinite planes, so this only changes how far the floor is drawn.
    """
    root = stock_model(filename)
    geom = element(root, "geom", floor)
    half_length, *rest = geom.get("size", "").split()
    geom.set("size", " ".join([f"{2 * float(half_length):g}", *rest]))
    return to_model(root)
