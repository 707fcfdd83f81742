"""`convplat report RUN`: one self-contained HTML page per run (``RUN/report.html``).

A run's results are spread over config.json, metrics.jsonl, eval-*.json, TensorBoard and PNGs
in several folders; the page puts them in one file a browser opens from disk (images embedded
as data URIs, no scripts, no network): the resolved config, the training curves, the final and
best top-1/top-5 (centre, ten-crop, dense where evaluated), a confusion matrix of the
validation split, the first-layer filters, and whatever the run's other studies wrote
(occlusion, deconvnet, evolution, transfer tables, localization and detection results).
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np

from convplat.storage import Location, resolve

REPORT = "report.html"
_TITLE = "convplat report"  # every page's <title> starts so: how a rerun knows its own
_EVAL_ORDER = ("center", "ten-crop", "dense")
_SKIP_DIRS = ("checkpoints", "tensorboard")


def write_report(run: str, *, confusion: bool = True, max_batches: int | None = None) -> str:
    """Write ``RUN/report.html`` and return its URI.

    ``confusion`` evaluates the final weights on the validation split (centre crops) for the
    confusion matrix; ``max_batches`` bounds that pass (None: the whole split).
    """
    from convplat.errors import ConvplatError

    location = resolve(run)
    if not location.is_dir():
        raise ConvplatError(f"{run}: no such run directory")
    config = _read_json(location, "config.json") or {}
    history = _read_jsonl(location, "metrics.jsonl")
    sections = [_results_section(location, history)]
    if history:
        sections.append(_curves_section(history, config))
    if config.get("model") and location.exists("model.safetensors"):
        model_sections = _model_sections(run, config, confusion, max_batches)
        sections.extend(model_sections)
    sections.extend(_study_sections(location))
    sections.append(_config_section(config))  # long: last, folded
    title = f"{_TITLE} — {config.get('run_name') or location.uri.rstrip('/').split('/')[-1]}"
    page = _page(title, sections)
    _check_ours(location)
    location.write_bytes(REPORT, page.encode())
    return location.child(REPORT).uri


def _check_ours(location: Location) -> None:
    """A ``report.html`` already there is replaced only when a report wrote it: ``report``
    takes any directory, and a page of the user's own must not be lost."""
    from convplat.errors import ConvplatError

    if location.exists(REPORT):
        head = location.read_bytes(REPORT)[:512]
        if f"<title>{_TITLE}".encode() not in head:
            raise ConvplatError(
                f"{location.child(REPORT).uri} exists and `convplat report` did not write it; "
                "move it away first"
            )


# --------------------------------------------------------------------------- sections
def _config_section(config: dict) -> str:
    if not config:
        return _section("Configuration", "<p>No config.json in this run.</p>")
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in sorted(config.items())
    )
    table = f"<details><summary>every setting</summary><table class='kv'>{rows}</table></details>"
    return _section("Configuration (resolved)", table)


def _curves_section(history: list[dict], config: dict) -> str:
    from convplat.training.plots import curves_png

    png = curves_png(history, title=str(config.get("run_name", "")))
    return _section("Training curves", _img(png, "loss and validation error per epoch"))


def _results_section(location: Location, history: list[dict]) -> str:
    rows = []
    if history:
        last = history[-1]
        rows.append(("final epoch (centre crop, during training)", last))
        scored = [h for h in history if h.get("top1_err") is not None]
        if scored:
            best = min(scored, key=lambda h: h["top1_err"])
            rows.append((f"best epoch ({best['epoch']})", best))
    for mode in _EVAL_ORDER:
        for split in ("val", "train"):
            result = _read_json(location, f"eval-{mode}-{split}.json")
            if result:
                label = f"convplat evaluate --mode {mode} ({split}, {result.get('weights', '')})"
                rows.append((label, result))
    if not rows:
        return _section("Top-1 / top-5 error", "<p>No metrics in this run.</p>")
    body = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{_pct(r.get('top1_err'))}</td>"
        f"<td>{_pct(r.get('top5_err'))}</td><td>{r.get('count', r.get('val_count', ''))}</td></tr>"
        for label, r in rows
    )
    table = (
        "<table><tr><th>result</th><th>top-1 error</th><th>top-5 error</th>"
        f"<th>images</th></tr>{body}</table>"
    )
    return _section("Top-1 / top-5 error", table)


def _model_sections(run: str, config: dict, confusion: bool, max_batches: int | None):
    from convplat.training.checkpoints import load_run_model
    from convplat.visualize.plots import filters_png

    model, _ = load_run_model(run, "final")
    sections = [_section("First-layer filters", _img(filters_png(model), "conv1 filters"))]
    recorded = _read_json(resolve(run), "confusion-val.json")
    if recorded is not None:  # counted by the training workers after the last epoch
        names = config.get("classes") or [str(i) for i in range(len(recorded["counts"]))]
        picture = _img(confusion_png(np.asarray(recorded["counts"]), names), "confusion matrix")
        title = "Confusion matrix (validation, centre crops, after the last epoch)"
        sections.append(_section(title, picture))
    elif confusion:
        from convplat.errors import ConvplatError

        try:
            counts, names = confusion_counts(model, config, max_batches)
        except ConvplatError as exc:  # e.g. shards too small for the model: say so on the page
            counts, names = None, None
            sections.append(_section("Confusion matrix", f"<p>{html.escape(str(exc))}</p>"))
        if counts is not None:
            sections.append(
                _section(
                    "Confusion matrix (validation, centre crops, final weights)",
                    _img(confusion_png(counts, names), "confusion matrix"),
                )
            )
    return sections


def _study_sections(location: Location) -> list[str]:
    """Every PNG the run's studies wrote (visualize/, localize/, plots/ but the curves) and the
    tables of transfer, localization and detection results."""
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(location.path, recursive=True, allow_not_found=True)
    infos = sorted(location.fs.get_file_info(selector), key=lambda i: i.path)
    figures, tables = [], []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        name = info.path[len(location.path.rstrip("/")) + 1 :]
        if name.split("/")[0] in _SKIP_DIRS or name in ("plots/curves.png",):
            continue
        if name.endswith(".png"):
            figures.append(
                f"<figure>{_img(location.read_bytes(name), name)}"
                f"<figcaption>{html.escape(name)}</figcaption></figure>"
            )
        elif name == "results.json" or name.startswith(("localize/eval-", "detect-eval-")):
            data = _read_json(location, name)
            if data is not None:
                tables.append(f"<h3>{html.escape(name)}</h3>{_json_table(data)}")
    sections = []
    if tables:
        sections.append(_section("Transfer, localization and detection results", "".join(tables)))
    if figures:
        sections.append(_section("Figures from the run's studies", "".join(figures)))
    return sections


# --------------------------------------------------------------------------- confusion
def confusion_counts(model, config: dict, max_batches: int | None = None):
    """(classes, classes) counts of (true, predicted) on the validation split, centre crops;
    (None, None) when the shards have no validation split or are gone."""
    import torch

    from convplat.pipeline.shardset import load_stats, read_manifest
    from convplat.training.augment import BatchTransform
    from convplat.training.data import eval_loader

    data = config.get("data")
    try:
        manifest = read_manifest(data)
    except Exception:  # noqa: BLE001 - shards moved or deleted: the page says so instead
        return None, None
    if "val" not in manifest.get("splits", {}):
        return None, None
    names = [c.get("name") or c.get("wnid") for c in manifest["classes"]]
    transform = BatchTransform.from_stats(
        load_stats(data), lighting_std=0.0, input_scale=config.get("input_scale", 1.0)
    )
    batches = eval_loader(data, "val", batch_size=64, crop_size=model.input_size, num_workers=0)
    counts = np.zeros((len(names), len(names)), np.int64)
    device = torch.device("cpu")
    with torch.inference_mode():
        for n, (images, labels, windows) in enumerate(batches):
            if max_batches is not None and n >= max_batches:
                break
            predicted = model(transform(images.to(device), windows)).argmax(1)
            np.add.at(counts, (labels.numpy(), predicted.numpy()), 1)
    return counts, names


def confusion_png(counts: np.ndarray, names: list[str]) -> bytes:
    """Row-normalised confusion matrix with the counts written in (up to 30 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = min(12, 2 + 0.45 * len(names))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if len(names) <= 30:
        ax.set_xticks(range(len(names)), names, rotation=90)
        ax.set_yticks(range(len(names)), names)
        for (i, j), value in np.ndenumerate(counts):
            if value:
                colour = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, str(value), ha="center", va="center", color=colour, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


# --------------------------------------------------------------------------- HTML
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;font-size:.9em}table.kv th{background:#f6f6f6;font-weight:500}
img{max-width:100%;border:1px solid #eee}figure{display:inline-block;margin:.5em;
max-width:48%;vertical-align:top}figcaption{font-size:.8em;color:#555}
"""


def _page(title: str, sections: list[str]) -> str:
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _pct(value) -> str:
    return "–" if value is None else f"{100 * float(value):.1f} %"


def _json_table(data, depth: int = 0) -> str:
    """Nested JSON as nested tables (lists of scalars inline), small enough to read."""
    if isinstance(data, dict) and depth < 3:
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{_json_table(v, depth + 1)}</td></tr>"
            for k, v in data.items()
        )
        return f"<table class='kv'>{rows}</table>"
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data) and depth < 3:
        return "".join(_json_table(v, depth + 1) for v in data[:50])
    text = json.dumps(data)
    return html.escape(text if len(text) < 400 else text[:400] + " …")


def _read_json(location: Location, name: str):
    from convplat.errors import ConvplatError

    if not location.exists(name):
        return None
    try:
        return json.loads(location.read_bytes(name))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConvplatError(f"{location.child(name).uri}: not valid JSON ({exc})") from None


def _read_jsonl(location: Location, name: str) -> list[dict]:
    from convplat.errors import ConvplatError

    if not location.exists(name):
        return []
    uri = location.child(name).uri
    try:
        text = location.read_bytes(name).decode()
    except UnicodeDecodeError as exc:
        raise ConvplatError(
            f"{uri}: not UTF-8 text (byte {exc.start}); the file is damaged"
        ) from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                raise ConvplatError(f"{uri}:{n}: not valid JSON") from None
            if not isinstance(row, dict):
                raise ConvplatError(f"{uri}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows
