"""The deccm demo page (Gradio): upload a clip, press Suggest music, listen.

Thin on purpose: this file lays out the page and maps each event to ``deccm.demo``, where
every check, ranking, preview and text is computed and tested. The champion
(``deccm-student@champion``) is loaded once at start and shared by every request.

    python demo/app.py [--host 127.0.0.1] [--port 7860] [--device auto]

Events (stable API names for ``gradio_client``): ``/suggest`` (clip, k → status, ranking,
players, genre chart, side-by-side table, JSON) and ``/preview`` (the clip with the top
track under it; chained after ``/suggest`` on the page).

Hostile uploads (docs/architecture.md, "Media admission"): the upload size is capped by
Gradio before anything is stored; both events run the cheap checks of ``deccm.demo`` first
and then share :data:`deccm.demo.HEAVY_SLOTS` slots for decoding and encoding; the queue
holds at most :data:`QUEUE_MAX` waiting requests; only checked files under the served
model's dataset media folder are served as static files.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import gradio as gr
import pandas as pd

from deccm import demo as lib

TITLE = "deccm: background music for a short video"
QUEUE_MAX = 32  # waiting requests; more are refused at once ("queue is full") instead of piling up
EVENT_THREADS = 8  # /suggest and /preview handlers at once, in one group: cheap checks run here, heavy work in a slot
RANKING_COLUMNS = ["rank", "title", "composer / artist", "genre", "score"]


def _error_page(message: str) -> gr.Blocks:
    with gr.Blocks(title=TITLE) as app:
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(f"**No model to serve.** {message}", elem_id="status")
    return app


def build_app(rec: Any = None, device: str = "auto", service: lib.DemoService | None = None) -> gr.Blocks:
    """The page for ``rec`` (a ``deccm.serve.Recommender``), or for the registered champion when None.

    Without a registered champion the page shows the registry's message (how to train one).
    """
    from deccm.registry import RegistryError
    from deccm.runs import RunError

    try:
        svc = service or lib.DemoService(rec, device=device)
    except (RegistryError, RunError) as e:
        return _error_page(str(e))
    # the checked example clips, one by one (never a folder); track audio reaches the page as snapshots of checked files
    gr.set_static_paths(svc.static_files())
    n_tracks = len(svc.rec.catalog.tracks)
    k_default = min(10, n_tracks)

    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as app:  # uploads and copies older than 1 h go
        gr.Markdown(f"# {TITLE}\nUpload a short clip (or pick an example), press **Suggest music** and listen. "
                    f"Model: **{svc.label}**. Clips up to {svc.max_bytes // 10**6} MB; longer than "
                    f"{svc.max_seconds:g} s: the first {svc.max_seconds:g} s are used.")
        if svc.warning:
            gr.Markdown(svc.warning, elem_id="data-warning")
        with gr.Row():
            with gr.Column(scale=2):
                video = gr.Video(label="Your clip", sources=["upload"], elem_id="clip")
                k = gr.Slider(1, min(50, n_tracks), value=k_default, step=1, label="How many tracks (K)", elem_id="k")
                go = gr.Button("Suggest music", variant="primary", elem_id="suggest")
                if svc.examples:
                    gr.Examples(svc.examples, inputs=[video], label=svc.examples_label)
            with gr.Column(scale=3):
                status = gr.Markdown("Upload a clip and press **Suggest music**.", elem_id="status")
                table = gr.Dataframe(pd.DataFrame(columns=RANKING_COLUMNS), label="Suggested tracks", interactive=False,
                                     wrap=True, column_widths=["9%", "36%", "27%", "16%", "12%"], elem_id="ranking")
                players = [gr.Audio(label=f"#{i + 1}", visible=False, interactive=False, elem_id=f"track-{i + 1}")
                           for i in range(lib.TOP_AUDIO)]
        with gr.Row():
            preview = gr.Video(label="Preview: your clip with the top track under it", interactive=False, elem_id="preview")
            chart = gr.BarPlot(pd.DataFrame(columns=["bar", "share", "list"]), x="bar", y="share", color="list",
                               title="Genre mix: the suggestions beside the whole catalog", x_title="genre",
                               y_title="share", x_label_angle=-35, sort=None, y_lim=[0, 1], elem_id="genre-mix")
        gr.Markdown(f"### Side by side: {svc.label} and {svc.comparison_label}")
        compare = gr.Dataframe(pd.DataFrame(columns=["rank", svc.label, svc.comparison_label]), interactive=False,
                               elem_id="comparison", label=svc.comparison_note or None)
        with gr.Accordion("Model card", open=True):
            gr.Markdown(svc.card, elem_id="model-card")
        with gr.Accordion("Result as JSON", open=False):
            raw = gr.JSON(elem_id="raw")
        top_audio = gr.State(None)

        def on_suggest(clip: str | None, kk: float) -> list[Any]:
            page = svc.respond(clip, int(kk))
            if page.error:
                gr.Warning(page.error)
            items = page.result.suggestions if page.result else []
            # updates, not new components: a component would have its whole config and schema rebuilt per request
            audio = [gr.update(value=s.audio, label=f"#{s.rank} {s.title} · {s.artist} ({s.genre})", visible=True)
                     if s.audio else gr.update(value=None, visible=False) for s in items[:lib.TOP_AUDIO]]
            audio += [gr.update(value=None, visible=False)] * (lib.TOP_AUDIO - len(audio))
            compare_rows = page.side_by_side()
            return [page.status(), pd.DataFrame(page.table(), columns=RANKING_COLUMNS), *audio,
                    pd.DataFrame(page.genre_bars(), columns=["bar", "share", "list"]),
                    gr.update(value=pd.DataFrame(compare_rows, columns=["rank", svc.label, svc.comparison_label]),
                              label=page.comparison_note or None),
                    page.to_dict(), items[0].audio if items else None]

        def on_preview(clip: str | None, audio: str | None) -> Any:
            try:
                return svc.preview(clip, audio)
            except lib.DemoError as e:
                gr.Warning(f"No preview: {e}")
                return None

        media = {"concurrency_id": "media", "concurrency_limit": EVENT_THREADS}
        go.click(on_suggest, inputs=[video, k], outputs=[status, table, *players, chart, compare, raw, top_audio],
                 api_name="suggest", **media).then(on_preview, inputs=[video, top_audio], outputs=[preview],
                                                   api_name="preview", **media)
    app.queue(default_concurrency_limit=2, max_size=QUEUE_MAX)
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python demo/app.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--ensure", metavar="SOURCE", default=None,
                   help="first make sure a champion is registered: when none is, run the pipeline once on SOURCE "
                        "(e.g. demo: builds the demo corpus; what `make demo` does)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads per request (default 1: two requests run at once on two cores)")
    args = p.parse_args(argv)
    import torch

    if args.ensure:
        from deccm import log as deccm_log
        from deccm.pipeline import ensure_champion

        deccm_log.setup()
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
        try:
            ensure_champion({"source": args.ensure, "device": args.device})  # one process: no second interpreter start-up
        except Exception as e:  # noqa: BLE001 - a clear line for the person at the terminal, not a traceback
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
    torch.set_num_threads(max(1, args.torch_threads))
    app = build_app(device=args.device)
    app.launch(server_name=args.host, server_port=args.port, max_file_size=lib.MAX_BYTES, prevent_thread_lock=True)
    print(f"deccm demo: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
