import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vidprior.io.media import write_image, write_video
from vidprior.unic.judge_types import CRITERIA
from vidprior.unic.review import export_review, sample_positives

DATA_URL = re.compile(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)")


def clip(shade, n_frames=9, size=32):
    frames = np.zeros((n_frames, size, size, 3), dtype=np.uint8)
    frames[..., 0] = shade
    frames[..., 1] = np.linspace(0, 250, n_frames, dtype=np.uint8)[:, None, None]  # changes per frame
    return frames


@pytest.fixture
def dataset(tmp_path):
    """Eight positives (one of them image-only), four negatives, one positive with a corrupt video."""
    root = tmp_path / "data"
    rows = []
    for i in range(12):
        video = f"videos/v{i:02d}.mp4"
        write_video(root / video, clip(20 * i), fps=8)
        write_image(root / f"images/v{i:02d}.png", clip(20 * i, n_frames=1)[0])
        rows.append(
            {
                "id": f"v{i:02d}",
                "prompt": f"prompt {i} <b>&\"'</b>",
                "image_path": f"images/v{i:02d}.png",
                "video_path": video,
                "label": 1 if i < 8 else 0,
                "decided_by": "judge" if i < 10 else "flow_rule",
                "reasons": "" if i < 8 else "c4_motion",
            }
        )
    rows[7]["video_path"] = ""  # image-only row (Image-Priors ablation)
    (root / "videos/bad.mp4").write_bytes(b"\x00\x00\x00 ftypisom not really a video")
    rows.append({**rows[0], "id": "v99", "video_path": "videos/bad.mp4", "image_path": "images/v00.png"})
    labels = pd.DataFrame(rows)
    for key in CRITERIA:
        labels[key] = pd.array([True if lab == 1 else None for lab in labels["label"]], dtype="boolean")
    labels.loc[labels["id"] == "v07", ["c3_consistent", "c4_motion", "c5_not_camera_only"]] = None
    return root, labels


def strips(page):
    return [Image.open(io.BytesIO(base64.b64decode(b64))) for b64 in DATA_URL.findall(page)]


def test_sample_is_reproducible_and_only_positives(dataset, tmp_path):
    root, labels = dataset
    first = export_review(labels, root, tmp_path / "a", sample_size=5, seed=7)
    again = export_review(labels.sample(frac=1, random_state=3), root, tmp_path / "b", sample_size=5, seed=7)
    export_review(labels, root, tmp_path / "c", sample_size=5, seed=8)
    assert first == again and first["review_items"] == 5 and first["positives_available"] == 9
    a, b, c = (pd.read_csv(tmp_path / d / "review.csv", keep_default_na=False) for d in "abc")
    assert a["id"].tolist() == b["id"].tolist()  # row order of the input does not matter
    assert a["id"].tolist() != c["id"].tolist()
    positives = set(labels.loc[labels["label"] == 1, "id"])
    assert set(a["id"]) <= positives
    assert list(a.columns) == ["id", "prompt", "reviewer_ok", "reviewer_note"]
    assert (a["reviewer_ok"] == "").all() and (a["reviewer_note"] == "").all()
    assert (tmp_path / "a" / "index.html").read_text() == (tmp_path / "b" / "index.html").read_text()


def test_page_escapes_text_and_shows_criteria(dataset, tmp_path):
    root, labels = dataset
    export_review(labels, root, tmp_path / "out", sample_size=50, seed=0)
    page = (tmp_path / "out" / "index.html").read_text()
    assert "prompt 3 &lt;b&gt;&amp;&quot;&#x27;&lt;/b&gt;" in page
    assert "<b>&" not in page
    for key in CRITERIA:
        assert key in page
    assert "not asked" in page  # the image-only row's temporal criteria
    assert "decided_by" in page and "judge" in page
    assert "prompt 9" not in page  # a negative


def test_strips_decode_as_images_with_the_sampled_frames(dataset, tmp_path):
    root, labels = dataset
    positives_ok = labels[(labels["label"] == 1) & (labels["id"] != "v99")]
    counts = export_review(positives_ok, root, tmp_path / "out", sample_size=3, seed=1, frames_per_strip=4)
    page = (tmp_path / "out" / "index.html").read_text()
    images = strips(page)
    assert len(images) == 3 and counts["media_errors"] == 0
    video_strips = [im for im in images if im.width > im.height * 2]
    for image in video_strips:
        image.verify()
    assert video_strips, "expected at least one multi-frame strip"
    assert "frames [0, 3, 5, 8] of 9" in page  # regular intervals starting with the first frame


def test_image_only_row_falls_back_to_the_image(dataset, tmp_path):
    root, labels = dataset
    export_review(labels[labels["id"] == "v07"], root, tmp_path / "out", sample_size=1, seed=0)
    page = (tmp_path / "out" / "index.html").read_text()
    (image,) = strips(page)
    assert image.width == image.height and "image (no video)" in page


def test_unreadable_video_is_shown_with_its_error(dataset, tmp_path):
    root, labels = dataset
    subset = pd.concat([labels[labels["id"] == "v99"], labels[labels["id"] == "v01"]])
    subset = pd.concat([subset, subset.iloc[[0]].assign(id="v98", video_path="videos/missing.mp4")])
    counts = export_review(subset, root, tmp_path / "out", sample_size=10, seed=0)
    page = (tmp_path / "out" / "index.html").read_text()
    assert counts["review_items"] == 3 and counts["media_errors"] == 2
    assert page.count("media unavailable") == 2 and "video not found" in page
    assert len(strips(page)) == 1


def test_fewer_positives_than_requested_exports_all_and_says_so(dataset, tmp_path):
    root, labels = dataset
    counts = export_review(labels, root, tmp_path / "out", sample_size=100, seed=0)
    assert counts["review_items"] == counts["positives_available"] == 9
    assert "Only 9 positive(s) available" in (tmp_path / "out" / "index.html").read_text()


def test_no_positives_still_writes_both_files(dataset, tmp_path):
    root, labels = dataset
    counts = export_review(labels[labels["label"] == 0], root, tmp_path / "out", sample_size=5, seed=0)
    assert counts["review_items"] == 0
    assert pd.read_csv(tmp_path / "out" / "review.csv").columns.tolist()[0] == "id"
    assert (tmp_path / "out" / "index.html").exists()


def test_sample_positives_handles_nullable_labels():
    labels = pd.DataFrame({"id": ["a", "b", "c"], "label": pd.array([1, None, 0], dtype="Int64")})
    sample, available = sample_positives(labels, 5, seed=0)
    assert available == 1 and sample["id"].tolist() == ["a"]
