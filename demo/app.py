"""The deccm demo page (Gradio): upload a clip, press Suggest music, listen.

Thin on purpose: this file lays out the page and maps each event to ``deccm.demo``, where
every check, ranking, preview and text is computed and tested. The page serves the champion
(``deccm-student@champion``) and follows the alias: every ``--poll-seconds`` (``$DECCM_POLL_S``,
default 15) it reads the alias's version, and a new version is loaded and swapped in between
requests (docs/architecture.md, "Serving follows the registry"). Before any champion exists it
serves a "no model yet" page. ``GET /healthz`` reports the served version, model name and
provenance, and answers 503 while no model is served (compose's healthcheck uses it).

    python demo/app.py [--host 127.0.0.1] [--port 7860] [--device auto] [--poll-seconds 15]

Events (stable API names for ``gradio_client``): ``/suggest`` (clip, k, licence filter →
status, ranking with each track's licence and attribution, players, genre chart, side-by-side
table, JSON; the licence filter is optional, default ``any``: every known licence, no track of
unknown licence; each track with its moment, the part of it that plays under the clip, cut
on the beat to the clip's length, in the table, the JSON and the players) and ``/preview``
(the clip with the top track's moment under it, and the same mp4 as the "Download clip with
this music" button; chained after ``/suggest`` on the page). The side by side shows the champion beside the ``baseline`` that
``make demo`` registers with it (``--ensure``), else beside an earlier version.

Hostile uploads (docs/architecture.md, "Media admission"): the upload size is capped by
Gradio before anything is stored; both events run the cheap checks of ``deccm.demo`` first
and then share :data:`deccm.demo.HEAVY_SLOTS` slots for decoding and encoding; the queue
holds at most :data:`QUEUE_MAX` waiting requests; only checked files under the served
model's dataset media folder are served as static files.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

import gradio as gr
import pandas as pd
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from deccm import demo as lib
from deccm import upload
from deccm.data import licences
from deccm.watch import ENV_POLL, POLL_S, poll_seconds

TITLE = "deccm: background music for a short video"
QUEUE_MAX = 32  # waiting requests; more are refused at once ("queue is full") instead of piling up
EVENT_THREADS = 8  # /suggest and /preview handlers at once, in one group: cheap checks run here, heavy work in a slot
RANKING_COLUMNS = ["rank", "title", "composer / artist", "genre", "score", "moment", "licence", "attribution"]


def build_app(rec: Any = None, device: str = "auto", service: lib.DemoService | None = None,
              poll_s: float | None = None) -> gr.Blocks:
    """The page for ``rec`` (a ``deccm.serve.Recommender``), or for the registered champion when None.

    The champion is followed every ``poll_s`` seconds when set. Without one the page says so (and
    how to train one) and answers every Suggest with that; it serves the champion once one is registered.
    """
    svc = service or lib.DemoService(rec, device=device, poll_s=poll_s)
    # the checked example clips, one by one (never a folder); track audio reaches the page as snapshots of checked files
    gr.set_static_paths(svc.static_files())
    refresh = svc.watcher.poll_s if svc.watcher is not None and svc.watcher.running else None

    def header() -> str:
        model = f"Model: **{svc.label}**." if svc.served else f"**{lib.NO_MODEL}**"
        return (f"# {TITLE}\nUpload a short clip (or pick an example), press **Suggest music** and listen. {model} "
                f"Clips up to {svc.max_bytes // 10**6} MB; longer than {svc.max_seconds:g} s: the first "
                f"{svc.max_seconds:g} s are used.")

    def side_by_side_title() -> str:
        about = f"\n\n{svc.comparison_label}: {svc.comparison_about}" if svc.comparison_about else ""
        return f"### Side by side: {svc.label} and {svc.comparison_label}{about}"

    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as app:  # uploads and copies older than 1 h go
        # what depends on the served model is rendered from it: at each page load and, while it follows the
        # registry, at each tick, so an open page shows the version it is being served by
        served = [gr.Markdown(header(), elem_id="header"), gr.Markdown(svc.warning, elem_id="data-warning")]
        with gr.Row():
            with gr.Column(scale=2):
                video = gr.Video(label="Your clip", sources=["upload"], elem_id="clip")
                k = gr.Slider(1, 50, value=10, step=1, label="How many tracks (K, at most the catalog's size)", elem_id="k")
                licence = gr.Dropdown([(label, name) for name, label in licences.FILTERS.items()], value=lib.DEFAULT_LICENCE,
                                      label="Licences (filtered before ranking; unknown licences only when asked for)",
                                      elem_id="licence")
                go = gr.Button("Suggest music", variant="primary", elem_id="suggest")
                if svc.examples:
                    gr.Examples(svc.examples, inputs=[video], label=svc.examples_label)
            with gr.Column(scale=3):
                status = gr.Markdown("Upload a clip and press **Suggest music**.", elem_id="status")
                # the attribution is the long column (a credit line); the table grows rather than hide rows behind a scroll
                table = gr.Dataframe(pd.DataFrame(columns=RANKING_COLUMNS), label="Suggested tracks", interactive=False,
                                     wrap=True, column_widths=["5%", "15%", "12%", "10%", "6%", "12%", "10%", "30%"],
                                     max_height=1000, elem_id="ranking")
                players = [gr.Audio(label=f"#{i + 1}", visible=False, interactive=False, elem_id=f"track-{i + 1}")
                           for i in range(lib.TOP_AUDIO)]
        with gr.Row():
            with gr.Column():
                preview = gr.Video(label="Preview: your clip with the top track's moment under it", interactive=False,
                                   elem_id="preview")
                download = gr.DownloadButton("Download clip with this music", visible=False, elem_id="download")
            chart = gr.BarPlot(pd.DataFrame(columns=["bar", "share", "list"]), x="bar", y="share", color="list",
                               title="Genre mix: the suggestions beside the whole catalog", x_title="genre",
                               y_title="share", x_label_angle=-35, sort=None, y_lim=[0, 1], elem_id="genre-mix")
        served.append(gr.Markdown(side_by_side_title(), elem_id="side-by-side"))
        compare = gr.Dataframe(pd.DataFrame(columns=["rank", svc.label, svc.comparison_label]), interactive=False, wrap=True,
                               column_widths=["6%", "47%", "47%"], elem_id="comparison", label=svc.comparison_note or None)
        with gr.Accordion("Model card", open=True):
            served.append(gr.Markdown(svc.card, elem_id="model-card"))
        with gr.Accordion("Result as JSON", open=False):
            raw = gr.JSON(elem_id="raw")
        top_audio = gr.State(None)

        def on_suggest(clip: str | None, kk: float, licence_filter: str | None = lib.DEFAULT_LICENCE) -> list[Any]:
            page = svc.respond(clip, int(kk), licence_filter)
            if page.error:
                gr.Warning(page.error)
            items = page.result.suggestions if page.result else []
            # updates, not new components: a component would have its whole config and schema rebuilt per request
            audio = [gr.update(value=s.audio, label=f"#{s.rank} {s.title} · {s.artist} ({s.genre}) · {lib.moment_text(s.moment)}",
                               visible=True)
                     if s.audio else gr.update(value=None, visible=False) for s in items[:lib.TOP_AUDIO]]
            audio += [gr.update(value=None, visible=False)] * (lib.TOP_AUDIO - len(audio))
            compare_rows = page.side_by_side()
            return [page.status(), pd.DataFrame(page.table(), columns=RANKING_COLUMNS), *audio,
                    pd.DataFrame(page.genre_bars(), columns=["bar", "share", "list"]),
                    gr.update(value=pd.DataFrame(compare_rows, columns=page.columns), label=page.comparison_note or None),
                    page.to_dict(), items[0].audio if items else None]

        def on_preview(clip: str | None, audio: str | None) -> list[Any]:
            try:
                path = svc.preview(clip, audio)
            except upload.DemoError as e:
                gr.Warning(f"No preview: {e}")
                path = None
            return [path, gr.update(value=path, visible=path is not None)]

        media = {"concurrency_id": "media", "concurrency_limit": EVENT_THREADS}
        go.click(on_suggest, inputs=[video, k, licence], outputs=[status, table, *players, chart, compare, raw, top_audio],
                 api_name="suggest", **media).then(on_preview, inputs=[video, top_audio], outputs=[preview, download],
                                                   api_name="preview", **media)

        def on_refresh() -> list[str]:
            return [header(), svc.warning, side_by_side_title(), svc.card]

        # cheap (no model work): outside the media slots, and not part of the documented API
        quiet = {"outputs": served, "show_progress": "hidden", "api_visibility": "private", "concurrency_id": "refresh",
                 "concurrency_limit": None}
        app.load(on_refresh, **quiet)
        if refresh:
            gr.Timer(refresh).tick(on_refresh, **quiet)
    app.queue(default_concurrency_limit=2, max_size=QUEUE_MAX)
    return app


def add_health(server: FastAPI, svc: lib.DemoService) -> None:
    """``GET /healthz``: 200 with the served version, model name and provenance; 503 while no model is served."""

    def healthz() -> JSONResponse:
        report = svc.health()
        return JSONResponse(report, status_code=200 if report["status"] == "serving" else 503)

    server.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)


def launch(app: gr.Blocks, svc: lib.DemoService, host: str = "127.0.0.1", port: int = 7860, quiet: bool = False) -> str:
    """Start the page of ``svc`` and its health endpoint in background threads; returns the page's URL."""
    server, url, _ = app.launch(server_name=host, server_port=port, max_file_size=upload.MAX_BYTES, prevent_thread_lock=True,
                                quiet=quiet)
    add_health(server, svc)
    return url


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python demo/app.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--ensure", metavar="SOURCE", default=None,
                   help="first make sure a champion is registered (when none is, run the pipeline once on SOURCE, e.g. "
                        "demo: builds the demo corpus) and a baseline beside it for the side by side (what `make demo` "
                        "does)")
    p.add_argument("--poll-seconds", type=float, default=None,
                   help=f"how often the champion alias is read; a new version is loaded and swapped in between requests "
                        f"(default ${ENV_POLL} or {POLL_S:g})")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads per request (default 1: two requests run at once on two cores)")
    args = p.parse_args(argv)
    try:
        poll_s = args.poll_seconds if args.poll_seconds is not None else poll_seconds()
    except ValueError as e:
        p.error(str(e))
    if not poll_s > 0:
        p.error(f"--poll-seconds must be positive, got {poll_s:g}")
    import torch

    from deccm import logsetup as deccm_log

    deccm_log.setup()  # the watcher's swaps and refusals reach the server log
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    if args.ensure:
        from deccm.pipeline import ensure_champion

        try:
            ensure_champion({"source": args.ensure, "device": args.device})  # one process: no second interpreter start-up
        except Exception as e:  # noqa: BLE001 - a clear line for the person at the terminal, not a traceback
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
    torch.set_num_threads(max(1, args.torch_threads))
    svc = lib.DemoService(device=args.device, poll_s=poll_s)
    app = build_app(service=svc)
    launch(app, svc, args.host, args.port)
    print(f"deccm demo: http://{args.host}:{args.port}  (health: /healthz; Ctrl-C stops it)", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `docker stop` stops it like Ctrl-C: the service's temp dirs go with it
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
