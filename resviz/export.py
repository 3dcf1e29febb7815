"""Figures to files: HTML that opens offline (one plotly.min.js per folder), and PNG / SVG / PDF through Kaleido with one browser per batch.

Every file is written through `resviz.io.atomic_write_bytes` (a temporary name in the target folder,
then `os.replace`), so a reader never sees half a file. Without Chrome/Chromium the HTML files are still
written and `BrowserNotFoundError` says how to install one.
"""
from __future__ import annotations

import asyncio
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

import kaleido
import plotly.graph_objects as go
import plotly.io as pio
from choreographer.browsers.chromium import Chromium
from plotly.offline import get_plotlyjs

from resviz.io import atomic_write_bytes

FORMATS = ("html", "png", "svg", "pdf")
STATIC_FORMATS = ("png", "svg", "pdf")
PLOTLYJS_MODES = ("embed", "directory")
INSTALL_HINT = (
    "install Chromium (Debian/Ubuntu: `apt-get install chromium`) or Google Chrome, "
    "or set BROWSER_PATH to a Chrome/Chromium executable"
)


class BrowserNotFoundError(RuntimeError):
    """Static export needs Chrome/Chromium; `written` lists the files that were written anyway (HTML)."""

    def __init__(self, message: str, written: list[Path]):
        super().__init__(message)
        self.written = written


def find_browser() -> str | None:
    """The Chrome/Chromium Kaleido would start (BROWSER_PATH first, then PATH and usual places), or None."""
    path = Chromium.find_browser(skip_local=False)
    return str(path) if path and Path(path).is_file() else None


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """Normalise "html,png" or ["PNG", "svg"] to a tuple of known formats; ValueError naming the valid ones."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out = tuple(dict.fromkeys(str(f).strip().lower().lstrip(".") for f in items if str(f).strip()))
    bad = [f for f in out if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown format(s) {bad}; valid formats: {', '.join(FORMATS)}")
    if not out:
        raise ValueError(f"no format given; valid formats: {', '.join(FORMATS)}")
    return out


def _slug(text: str) -> str:
    text = re.sub(r"<[^>]+>", " ", text)  # drop HTML tags of titles
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60].strip("-")


def figure_names(figs: list[go.Figure], names: Iterable[str] | None) -> list[str]:
    """File stems: the given names, else slugs of the titles (else figure-NN), made unique."""
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(figs):
            raise ValueError(f"got {len(names)} name(s) for {len(figs)} figure(s); pass one name per figure")
        bad = [n for n in names if not n or "/" in n or "\\" in n or n in (".", "..")]
        if bad:
            raise ValueError(f"figure name(s) {bad} are not plain file names; use names like 'response_std'")
    else:
        names = [_slug(f.layout.title.text or "") or f"figure-{i + 1:02d}" for i, f in enumerate(figs)]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def prepare_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed and check a file can be written there; one clear error otherwise."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".resviz-write-test-", delete=True)
        probe.close()
    except FileExistsError:
        raise NotADirectoryError(f"cannot export to {str(path)!r}: it is a file, not a folder; choose a folder") from None
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise PermissionError(f"cannot write to folder {str(path)!r} ({reason}); choose a writable output folder") from None
    return path


def plotlyjs_bytes() -> bytes:
    """plotly.js (minified) as shipped with the installed plotly: what every page of a folder loads."""
    return get_plotlyjs().encode()


def to_html(fig: go.Figure, plotlyjs: str = "embed") -> bytes:
    """A full HTML page; plotly.js embedded, or loaded from plotly.min.js beside it ("directory")."""
    if plotlyjs not in PLOTLYJS_MODES:
        raise ValueError(f"plotlyjs={plotlyjs!r} must be one of {PLOTLYJS_MODES}")
    include = True if plotlyjs == "embed" else "directory"
    return pio.to_html(fig, include_plotlyjs=include, full_html=True, include_mathjax=False).encode()


# Kaleido asks its page for its render function before the page has defined it when Chromium starts slowly (a
# busy machine): the render then fails with this message although nothing is wrong; a fresh browser succeeds.
KALEIDO_NOT_READY = "kaleido_scopes is not defined"
KALEIDO_ATTEMPTS = 3


def _run_in_thread(coro_fn):
    """Run an async function to completion in its own thread and event loop (safe inside Jupyter)."""
    box: dict[str, object] = {}

    def target():
        try:
            box["value"] = asyncio.run(coro_fn())
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = err

    t = threading.Thread(target=target, name="resviz-kaleido")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


def render_static(jobs: list[tuple[dict, str]], *, width: int | None = None, height: int | None = None,
                  scale: float = 1.0) -> list[bytes]:
    """Render (figure dict, format) jobs in ONE headless browser; returns the image bytes in order."""

    def opts(fig: dict, fmt: str) -> dict:
        layout = fig.get("layout", {})
        return dict(format=fmt, width=width or layout.get("width") or 900,
                    height=height or layout.get("height") or 500, scale=scale)

    async def run() -> list[bytes]:
        async with kaleido.Kaleido(n=1, mathjax=False) as k:
            return [await k.calc_fig(fig, opts=opts(fig, fmt)) for fig, fmt in jobs]

    for attempt in range(KALEIDO_ATTEMPTS):
        try:
            return _run_in_thread(run)
        except Exception as err:  # noqa: BLE001 - only Kaleido's start-up race is tried again
            if KALEIDO_NOT_READY not in str(err) or attempt == KALEIDO_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def export(
    fig_or_figs: go.Figure | Iterable[go.Figure] | Mapping[str, go.Figure],
    folder: str | os.PathLike,
    formats: str | Iterable[str] = FORMATS,
    names: Iterable[str] | None = None,
    *,
    plotlyjs: str = "directory",
    width: int | None = None,
    height: int | None = None,
    scale: float = 1.0,
) -> list[Path]:
    """Write each figure in each format to `folder/<name>.<format>`; returns the paths (figure-major order).

    A mapping's keys are the names. HTML pages load plotly.min.js, written once per folder beside them
    (`plotlyjs="embed"` puts its 4.8 MB inside every page instead); never anything from a CDN. PNG/SVG/PDF need Chrome/Chromium: one
    browser renders the whole batch. Without one, the HTML is written and BrowserNotFoundError is raised.
    """
    fmts = parse_formats(formats)
    if isinstance(fig_or_figs, Mapping):
        if names is None:
            names = list(fig_or_figs.keys())
        figs = list(fig_or_figs.values())
    elif hasattr(fig_or_figs, "to_plotly_json"):
        figs = [fig_or_figs]
    else:
        figs = list(fig_or_figs)
    if not figs:
        raise ValueError("no figures to export; pass a figure, a list of figures or a dict name -> figure")
    bad = [type(f).__name__ for f in figs if not hasattr(f, "to_plotly_json")]
    if bad:
        raise ValueError(f"can only export plotly figures, got {bad}")
    stems = figure_names(figs, names)
    out = prepare_folder(folder)
    if plotlyjs not in PLOTLYJS_MODES:
        raise ValueError(f"plotlyjs={plotlyjs!r} must be one of {PLOTLYJS_MODES}")

    written: dict[tuple[int, str], Path] = {}
    if "html" in fmts:
        if plotlyjs == "directory":
            atomic_write_bytes(out / "plotly.min.js", plotlyjs_bytes())
        for i, (fig, stem) in enumerate(zip(figs, stems)):
            written[i, "html"] = atomic_write_bytes(out / f"{stem}.html", to_html(fig, plotlyjs))

    static = [f for f in fmts if f in STATIC_FORMATS]
    if static:
        html_done = [written[k] for k in sorted(written)]
        browser = find_browser()
        if browser is None:
            raise BrowserNotFoundError(_no_browser_message(static, html_done), html_done)
        dicts = [f.to_plotly_json() for f in figs]
        jobs = [(i, fmt) for i in range(len(figs)) for fmt in static]
        try:
            images = render_static([(dicts[i], fmt) for i, fmt in jobs], width=width, height=height, scale=scale)
        except Exception as err:
            if type(err).__name__ == "ChromeNotFoundError":
                raise BrowserNotFoundError(_no_browser_message(static, html_done), html_done) from None
            raise
        for (i, fmt), data in zip(jobs, images):
            written[i, fmt] = atomic_write_bytes(out / f"{stems[i]}.{fmt}", data)
    return [written[i, fmt] for i in range(len(figs)) for fmt in fmts if (i, fmt) in written]


def _no_browser_message(static: list[str], html: list[Path]) -> str:
    where = os.environ.get("BROWSER_PATH")
    found = f"no browser at BROWSER_PATH={where!r}" if where else "no Chrome/Chromium found"
    kept = f"; the HTML was written ({len(html)} file(s) in {html[0].parent})" if html else ""
    return f"{'/'.join(static).upper()} export needs Chrome or Chromium: {found}; {INSTALL_HINT}{kept}"
