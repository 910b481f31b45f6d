"""Reacher tasks TD-MPC2 adds for MT30: a three-link arm reaching a big or a small target."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from dm_control.rl import control
from dm_control.suite import reacher

from tdmpc_ray.tasks.custom.common import Model, Random, TaskFactory, element, stock_model, to_model

_LINK = ".09"  # length of each of the three links (m); the stock arm has .12 + .12
_LIMITED = {"limited": "true", "range": "-80 80"}  # both inner joints, in degrees


def _three_link_model() -> Model:
    """The stock two-link reacher with a third link inserted between shoulder and hand.

    Links: arm0 (unlimited shoulder0) -> arm1 (shoulder1, +-80 deg) -> hand (wrist, +-80 deg) ->
    finger, each .09 m; one motor per joint, with the stock motor defaults.
    """
    root = stock_model("reacher.xml")
    arm = element(root, "body", "arm")
    hand = element(arm, "body", "hand")
    arm.set("name", "arm0")
    element(arm, "geom", "arm").attrib.update(name="arm0", fromto=f"0 0 0 {_LINK} 0 0")
    element(arm, "joint", "shoulder").set("name", "shoulder0")

    middle = ET.SubElement(arm, "body", name="arm1", pos=f"{_LINK} 0 0")
    ET.SubElement(
        middle, "geom", name="arm1", type="capsule", fromto=f"0 0 0 {_LINK} 0 0", size=".01"
    ).set("material", "self")
    ET.SubElement(middle, "joint", name="shoulder1", **_LIMITED)
    arm.remove(hand)
    middle.append(hand)
    hand.set("pos", f"{_LINK} 0 0")
    element(hand, "joint", "wrist").attrib.update(_LIMITED)
    element(hand, "body", "finger").set("pos", f"{_LINK} 0 0")

    actuators = root.find("actuator")
    shoulder = element(actuators, "motor", "shoulder")
    shoulder.attrib.update(name="shoulder0", joint="shoulder0")
    actuators.insert(
        list(actuators).index(shoulder) + 1,
        ET.Element("motor", name="shoulder1", joint="shoulder1"),
    )
    return to_model(root)


def _three_links(target_size: float, random: Random) -> control.Environment:
    """The stock reacher task and timing on the three-link arm."""
    physics = reacher.Physics.from_xml_string(*_three_link_model())
    task = reacher.Reacher(target_size=target_size, random=random)
    return control.Environment(physics, task, time_limit=reacher._DEFAULT_TIME_LIMIT)


TASKS: dict[str, TaskFactory] = {
    "reacher-three-easy": lambda random: _three_links(reacher._BIG_TARGET, random),
    "reacher-three-hard": lambda random: _three_links(reacher._SMALL_TARGET, random),
}
