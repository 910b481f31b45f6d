"""The dashboard's web server (one page, its two assets, and `/api/results`) and static export.

The page polls `/api/results`, which re-reads the results folder through a `ResultsReader`
(only changed files are parsed again). `export_html` inlines the same page, assets and one
payload into a single file that needs neither the server nor the network, and names no path
of this machine (nor its host name): the file is made to be shared.

Every response carries `X-Content-Type-Options: nosniff` and a Content-Security-Policy that
lets the page load only its own script, stylesheet and `/api/results`; the export carries the
same policy as a `<meta>` element, with its inline script and style allowed by their hashes.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import ipaddress
import json
import os
import re
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from tdmpc_ray.atomic import atomic_path
from tdmpc_ray.dashboard.results import ResultsReader

_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
}
_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
_STYLE_TAG = '<link rel="stylesheet" href="static/style.css">'
_SCRIPT_TAG = '<script src="static/app.js"></script>'
_CHARSET_TAG = '<meta charset="utf-8">'
CSP = (
    "default-src 'none'; script-src {scripts}; style-src {styles}; img-src data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)
"""The Content-Security-Policy: only the page's own script and stylesheet, no other origin."""
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP.format(scripts="'self'", styles="'self'")
    + "; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
"""Headers of every response."""


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def asset(name: str) -> str:
    """The text of a file of `tdmpc_ray/dashboard/static/`."""
    return (resources.files("tdmpc_ray.dashboard") / "static" / name).read_text(encoding="utf-8")


def _script_json(payload: dict) -> str:
    """`payload` as JSON that is safe inside a <script> element."""
    return json.dumps(payload, allow_nan=False).replace("<", "\\u003c")


def _digest(text: str) -> str:
    """A CSP source allowing the inline element whose content is `text`."""
    return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"


def render_export(payload: dict) -> str:
    """The page with its stylesheet, script and `payload` inlined: one self-contained file,
    under a CSP that allows exactly these inline elements."""
    page, style, script = asset("index.html"), asset("style.css"), asset("app.js")
    style, script = f"\n{style}", f"\n{script}"
    data = f"window.DASHBOARD_DATA = {_script_json(payload)};"
    policy = CSP.format(scripts=f"{_digest(data)} {_digest(script)}", styles=_digest(style))
    meta = f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
    page = page.replace(_CHARSET_TAG, f"{_CHARSET_TAG}\n{meta}")
    page = page.replace(_STYLE_TAG, f"<style>{style}</style>")
    return page.replace(_SCRIPT_TAG, f"<script>{data}</script>\n<script>{script}</script>")


def portable(payload: dict, root: Path) -> dict:
    """`payload` naming no path or host of this machine: a string that is an absolute path
    becomes its path from the results folder's parent (inside it) or its file name (outside);
    the folder's path, the home folder and the host name inside other strings are shortened."""
    real, home, host = root.absolute(), str(Path.home()), socket.gethostname()
    parent = real.parent
    swaps = [(str(real), real.name), (str(root.resolve()), real.name)]
    swaps += [(home, "~")] if home not in ("", "/") else []
    host_word = re.compile(rf"(?<![\w.-]){re.escape(host)}(?![\w-])") if host else None

    def clean(value: object) -> object:
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if not isinstance(value, str):
            return value
        if os.path.isabs(value) and "\n" not in value:
            path = Path(value)
            return str(path.relative_to(parent)) if path.is_relative_to(real) else path.name
        for old, new in swaps:
            value = value.replace(old, new)
        return host_word.sub("<host>", value) if host_word else value

    return clean(payload)


def printable(text: object) -> str:
    """`text` with every control or otherwise unprintable character escaped (`\\x1b`), so a
    crafted trial id or folder name cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def export_html(results_dir: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write a static snapshot of the sweep in `results_dir` to `out` (atomically); return the
    payload it holds (`portable`). Raises FileNotFoundError/ValueError (printable) when there
    is nothing to export."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{printable(root)}: no such results folder")
    payload = ResultsReader(root).read()
    if not payload["trials"]:
        raise ValueError(printable(payload["message"]))
    payload = portable(payload, root)
    with atomic_path(out) as tmp:
        tmp.write_text(render_export(payload), encoding="utf-8")
    return payload


class DashboardServer(ThreadingHTTPServer):
    """Serves one results folder; `refresh_s` tells the page how often to poll. Bound to a
    loopback address, it only answers requests addressed to this machine by name (no DNS
    rebinding)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], reader: ResultsReader, refresh_s: float) -> None:
        self.reader = reader
        self.refresh_s = refresh_s
        self.assets = {
            path: (asset(name).encode(), ctype) for path, (name, ctype) in _ASSETS.items()
        }
        super().__init__(address, _Handler)
        self.local_only = is_loopback(self.server_address[0])

    @property
    def url(self) -> str:
        """Where a browser on this machine finds the page."""
        host, port = self.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer

    def do_GET(self) -> None:
        """The page, an asset, or the results payload; 404 for anything else."""
        path = urlsplit(self.path).path
        if self.server.local_only and not self._addressed_locally():
            self.send_error(HTTPStatus.FORBIDDEN, "this dashboard only answers localhost")
        elif path == "/api/results":
            payload = {**self.server.reader.read(), "refresh_s": self.server.refresh_s}
            self._send(json.dumps(payload, allow_nan=False).encode(), "application/json")
        elif path in self.server.assets:
            self._send(*self.server.assets[path])
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def _addressed_locally(self) -> bool:
        """Whether the Host header names this machine."""
        return urlsplit(f"//{self.headers.get('Host', '')}").hostname in _LOCAL_NAMES

    def end_headers(self) -> None:
        """Every response, errors included, with the security headers."""
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def _send(self, body: bytes, ctype: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the page polls every few seconds."""


def make_server(
    results_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8050,
    refresh_s: float = 3.0,
) -> DashboardServer:
    """A bound (not yet serving) dashboard server for `results_dir`; port 0 picks a free one."""
    if refresh_s <= 0:
        raise ValueError(f"--refresh must be positive seconds, got {refresh_s}")
    try:
        return DashboardServer((host, port), ResultsReader(results_dir), refresh_s)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} on {host} is in use: pick another with --port") from None
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
