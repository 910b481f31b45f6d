"""Sweep dashboard: a web page that follows a Ray Tune results folder, and its static export."""

from tdmpc_ray.dashboard.results import ResultsReader
from tdmpc_ray.dashboard.server import export_html, make_server

__all__ = ["ResultsReader", "export_html", "make_server"]
