"""`convplat report RUN`: one self-contained HTML page with everything the run holds."""

from __future__ import annotations

import base64
import json
import re

import pytest
from conftest import make_imagenet_tree

from convplat.config import PrepareConfig
from convplat.pipeline import prepare
from convplat.report import write_report
from convplat.training.checkpoints import state_dict_bytes
from convplat.training.models import create_model


@pytest.fixture(scope="module")
def run(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("raw")
    make_imagenet_tree(root, classes=3, train_per_class=4, val_per_class=3, quirks=False)
    shards = tmp_path_factory.mktemp("shards")
    prepare(
        PrepareConfig(source=str(root), out=str(shards), size=256, shard_size=8, progress=False)
    )
    run = tmp_path_factory.mktemp("runs") / "alexnet-tiny"
    run.mkdir()
    model = create_model("alexnet", num_classes=3)
    (run / "model.safetensors").write_bytes(state_dict_bytes(model))
    config = {
        "model": "alexnet",
        "num_classes": 3,
        "data": str(shards),
        "input_scale": 1.0,
        "run_name": "alexnet-tiny",
        "lr": 0.01,
    }
    (run / "config.json").write_text(json.dumps(config))
    rows = [
        {
            "epoch": e,
            "lr": 0.01,
            "train_loss": 1.1 - 0.1 * e,
            "val_loss": 1.0,
            "top1_err": 0.6,
            "top5_err": 0.0,
            "images_per_s": 10.0,
            "seconds": 1.0,
        }
        for e in (1, 2)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "eval-ten-crop-val.json").write_text(
        json.dumps(
            {"mode": "ten-crop", "weights": "final", "top1_err": 0.5, "top5_err": 0.0, "count": 9}
        )
    )
    (run / "visualize").mkdir()
    (run / "visualize" / "occlusion-cat.png").write_bytes(_tiny_png())
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "ignored.png").write_bytes(_tiny_png())
    return run


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_report_is_self_contained_and_complete(run):
    uri = write_report(str(run))
    assert uri == str(run / "report.html")
    page = (run / "report.html").read_text()
    # Self-contained: no scripts, no external references; every image is an embedded PNG.
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"(src|href)=['\"](?!data:)", page)
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    for heading in (
        "Configuration (resolved)",
        "Training curves",
        "Top-1 / top-5 error",
        "First-layer filters",
        "Confusion matrix",
        "Figures from the run",
    ):
        assert heading in page, heading
    assert "ten-crop" in page and "50.0 %" in page  # the evaluate result
    assert "visualize/occlusion-cat.png" in page and "ignored.png" not in page
    assert len(images) == 4  # curves, filters, confusion, occlusion


def test_confusion_counts_every_validation_image(run):
    from convplat.report import confusion_counts

    model = create_model("alexnet", num_classes=3).eval()
    config = json.loads((run / "config.json").read_text())
    counts, names = confusion_counts(model, config)
    assert counts.sum() == 9 and len(names) == 3


def test_a_damaged_metrics_file_is_one_line(run, tmp_path):
    from convplat.errors import ConvplatError

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo')
    with pytest.raises(ConvplatError, match="metrics.jsonl:2"):
        write_report(str(bad))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xf3\x00garbage", "metrics.jsonl: not UTF-8 text"),  # was a UnicodeDecodeError
        (b'{"epoch": 1}\n[1, 2]\n', "metrics.jsonl:2: expected a JSON object"),
    ],
)
def test_metrics_that_are_not_json_lines_are_one_line(tmp_path, content, message):
    from convplat.errors import ConvplatError

    (tmp_path / "metrics.jsonl").write_bytes(content)
    with pytest.raises(ConvplatError, match=message):
        write_report(str(tmp_path))
    assert not (tmp_path / "report.html").exists()


def test_report_command(run):
    from convplat.cli.main import main

    (run / "report.html").unlink(missing_ok=True)
    assert main(["report", str(run), "--no-confusion"]) == 0
    page = (run / "report.html").read_text()
    assert "First-layer filters" in page and "Confusion matrix" not in page
    assert main(["report", str(run / "missing")]) == 2


def test_a_report_html_of_the_users_own_is_never_replaced(tmp_path, capsys):
    from convplat.cli.main import main

    (tmp_path / "report.html").write_text("<html><title>my notes</title></html>")
    assert main(["report", str(tmp_path)]) == 2  # before: replaced by convplat's page
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`convplat report` did not write it" in err[0]
    assert (tmp_path / "report.html").read_text() == "<html><title>my notes</title></html>"
    (tmp_path / "report.html").unlink()
    assert main(["report", str(tmp_path)]) == 0  # its own page it replaces on a rerun
    assert main(["report", str(tmp_path)]) == 0
