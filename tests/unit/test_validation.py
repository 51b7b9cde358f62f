import json

import numpy as np
import pandas as pd
import pytest

from vidprior.io.manifest import write_manifest, write_table
from vidprior.unic.judge_types import CRITERIA
from vidprior.validation import (
    SuiteCheck,
    ValidationFailed,
    flow_statistics_suite,
    label_accounting_frame,
    label_accounting_suite,
    labels_suite,
    run_suites,
    validate_flow,
    validate_frame,
    validate_labels,
)


def flow_table(n=4):
    ids = [f"v{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    passed = [i % 2 == 0 for i in range(n)]
    return pd.DataFrame(
        {
            "id": ids,
            "mean_u": rng.normal(size=n),  # signed components may be negative
            "var_u": rng.random(n),
            "mean_v": rng.normal(size=n),
            "var_v": rng.random(n),
            "mean_mag": rng.random(n),
            "var_mag": np.zeros(n),  # zero variance is legal
            "n_pairs": np.full(n, 15, dtype="int64"),
            "flow_backend": "farneback",
            "flow_pass": passed,
            "flow_clause": ["" if ok else "mean_mag < 0.4" for ok in passed],
        }
    )


def labels_table():
    rows = [
        ("i0", 1, "judge", "", [True] * 5),
        ("i1", 0, "judge", "c4_motion", [True, True, True, False, True]),
        ("i2", 0, "flow_rule", "mean_mag < 0.4", [None] * 5),
        ("i3", 1, "judge", "", [True, True, None, None, None]),  # image-only: temporal criteria not asked
    ]
    df = pd.DataFrame(
        {
            "id": [r[0] for r in rows],
            "prompt_id": [f"p{i}" for i in range(len(rows))],
            "prompt": ["a cat <jumps>", "a dog runs", "a car", "a bird"],
            "image_path": [f"images/{r[0]}.png" for r in rows],
            "video_path": ["videos/i0.mp4", "videos/i1.mp4", "videos/i2.mp4", ""],
            "label": np.array([r[1] for r in rows], dtype="int64"),
            "decided_by": [r[2] for r in rows],
            "reasons": [r[3] for r in rows],
        }
    )
    for j, key in enumerate(CRITERIA):
        df[key] = pd.array([r[4][j] for r in rows], dtype="boolean")
    return df


def images_table(ids=("i0", "i1", "i2", "i3", "i4")):
    return pd.DataFrame({"id": list(ids)})


def rejects_table(ids=("i4",), reasons=("endpoint_error",)):
    return pd.DataFrame({"id": list(ids), "stage": "label", "reason": list(reasons), "detail": ""})


def failed_names(report):
    return {(o.expectation, o.column) for o in report.failed}


# --- flow ------------------------------------------------------------------------------------------


def test_good_flow_table_passes():
    report = validate_frame(flow_table(), flow_statistics_suite(4), "flow")
    assert report.success, report.failure_message()
    assert report.rows == {"flow": 4} and len(report.results) > 20
    print(f"GX validation of the flow suite: {report.seconds:.3f} s")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d.assign(mean_mag=[0.1, np.nan, 0.2, 0.3]),
            ("expect_column_values_to_not_be_null", "mean_mag"),
        ),
        (
            lambda d: d.assign(mean_u=[0.1, np.inf, 0.2, 0.3]),
            ("expect_column_values_to_be_between", "mean_u"),
        ),
        (lambda d: d.assign(var_v=[0.1, -0.5, 0.2, 0.3]), ("expect_column_values_to_be_between", "var_v")),
        (
            lambda d: d.assign(n_pairs=np.array([15, 0, 15, 15])),
            ("expect_column_values_to_be_between", "n_pairs"),
        ),
        (lambda d: d.assign(id=["v0", "v0", "v2", "v3"]), ("expect_column_values_to_be_unique", "id")),
        (lambda d: d.assign(flow_clause=""), ("expect_column_values_to_match_regex", "flow_clause")),
        (lambda d: d.drop(columns="var_mag"), ("expect_column_to_exist", "var_mag")),
    ],
    ids=[
        "nan",
        "inf",
        "negative_variance",
        "no_pairs",
        "duplicate_id",
        "failed_without_clause",
        "missing_col",
    ],
)
def test_bad_flow_statistics_fail(mutate, expected):
    report = validate_frame(mutate(flow_table()), flow_statistics_suite(4), "flow")
    assert not report.success
    assert expected in failed_names(report)


def test_bad_row_is_reported_by_id_and_value():
    report = validate_frame(
        flow_table().assign(var_v=[0.1, -0.5, 0.2, 0.3]), flow_statistics_suite(4), "flow"
    )
    (outcome,) = report.failed
    assert outcome.unexpected_ids == ["v1"] and outcome.unexpected_values == [-0.5]
    assert outcome.unexpected_count == 1 and outcome.element_count == 4


def test_flow_count_mismatch_fails():
    report = validate_frame(flow_table(), flow_statistics_suite(5), "flow")
    (outcome,) = report.failed
    assert outcome.expectation == "expect_table_row_count_to_equal" and outcome.observed_value == 4
    assert "observed 4" in outcome.explain() and "'value': 5" in outcome.explain()


def write_flow_stage(tmp_path, flow, video_ids, reject_ids):
    write_manifest(pd.DataFrame({"id": video_ids}), tmp_path / "videos")
    write_table(flow, tmp_path / "flow" / "manifest.parquet")
    reasons = ["unreadable_video"] * len(reject_ids)
    write_table(
        rejects_table(reject_ids, reasons).assign(stage="flow"), tmp_path / "flow" / "rejects.parquet"
    )


def test_validate_flow_counts_videos_minus_rejects(tmp_path):
    write_flow_stage(tmp_path, flow_table(), ["v0", "v1", "v2", "v3", "bad"], ["bad"])
    report = validate_flow(tmp_path / "flow", tmp_path / "videos", tmp_path / "reports" / "flow.json")
    assert report.success
    saved = json.loads((tmp_path / "reports" / "flow.json").read_text())
    assert (
        saved["success"] is True
        and saved["info"]["expected_rows"] == 4
        and saved["info"]["flow_rejects"] == 1
    )
    assert (tmp_path / "reports" / "flow.html").exists()


def test_validate_flow_saves_report_before_raising(tmp_path):
    # A video vanished: neither in the flow table nor in the rejects.
    write_flow_stage(
        tmp_path, flow_table().assign(mean_v=[0.0, np.nan, 0.0, 0.0]), ["v0", "v1", "v2", "v3", "v4"], []
    )
    out = tmp_path / "reports" / "flow.json"
    with pytest.raises(ValidationFailed) as caught:
        validate_flow(tmp_path / "flow", tmp_path / "videos", out)
    message = str(caught.value)
    assert "'flow_statistics'" in message and str(out) in message
    assert "expect_table_row_count_to_equal" in message and "observed 4" in message
    assert "expect_column_values_to_not_be_null[mean_v]" in message and "'v1'" in message
    saved = json.loads(out.read_text())
    assert saved["success"] is False
    assert "flow_statistics: expect_table_row_count_to_equal" in saved["failed"]
    assert saved["info"]["expected_rows"] == 5
    # Non-finite values are written as strings: strict JSON (and MLflow's viewer) has no NaN.
    json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


# --- labels ----------------------------------------------------------------------------------------


def test_good_labels_pass():
    report = validate_frame(labels_table(), labels_suite(), "labels")
    assert report.success, report.failure_message()
    accounting = label_accounting_frame(images_table(), labels_table(), rejects_table())
    report = validate_frame(accounting, label_accounting_suite(), "label_accounting")
    assert report.success, report.failure_message()
    print(f"GX validation of the labels suite: {report.seconds:.3f} s")


def test_label_two_fails():
    labels = labels_table()
    labels.loc[1, "label"] = 2
    report = validate_frame(labels, labels_suite(), "labels")
    assert ("expect_column_values_to_be_in_set", "label") in failed_names(report)
    assert report.failed[0].unexpected_ids == ["i1"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.assign(decided_by=["judge", "human", "flow_rule", "judge"]), "decided_by"),
        (
            lambda d: d.assign(reasons=["", " ", "mean_mag < 0.4", ""]),
            "reasons",
        ),  # blank reason on a negative
        (lambda d: d.assign(reasons=["", None, "x", ""]), "reasons"),
        (lambda d: d.assign(c4_motion=pd.array([False, False, None, None], dtype="boolean")), "c4_motion"),
        (lambda d: d.assign(label=pd.array([1, None, 0, 1], dtype="Int64")), "label"),
    ],
    ids=["unknown_decider", "blank_reason", "null_reason", "positive_failing_criterion", "null_label"],
)
def test_bad_labels_fail(mutate, expected):
    report = validate_frame(mutate(labels_table()), labels_suite(), "labels")
    assert not report.success
    assert expected in {o.column for o in report.failed}, report.failure_message()


def test_image_neither_labelled_nor_rejected_fails():
    accounting = label_accounting_frame(images_table(), labels_table(), rejects_table(ids=[], reasons=[]))
    report = validate_frame(accounting, label_accounting_suite(), "label_accounting")
    (outcome,) = report.failed
    assert outcome.column == "status" and outcome.unexpected_ids == ["i4"]
    assert outcome.unexpected_values == ["missing"]


def test_image_both_labelled_and_rejected_or_unknown_fails():
    rejects = rejects_table(ids=["i4", "i0", "stray"], reasons=["r", "r", "r"])
    accounting = label_accounting_frame(images_table(), labels_table(), rejects)
    report = validate_frame(accounting, label_accounting_suite(), "label_accounting")
    (outcome,) = report.failed
    assert set(outcome.unexpected_values) == {"labelled_and_rejected", "not_in_images"}


@pytest.mark.parametrize("reason", ["", "   ", None])
def test_reject_with_empty_reason_fails(reason):
    accounting = label_accounting_frame(images_table(), labels_table(), rejects_table(reasons=[reason]))
    report = validate_frame(accounting, label_accounting_suite(), "label_accounting")
    (outcome,) = report.failed
    assert outcome.column == "reject_reason" and outcome.unexpected_ids == ["i4"]


def write_label_stage(tmp_path, labels, rejects):
    write_manifest(images_table(), tmp_path / "images")
    write_table(labels, tmp_path / "labels" / "manifest.parquet")
    # write_rejects refuses blank reasons; a buggy stage writing the file some other way must still be caught.
    write_table(rejects, tmp_path / "labels" / "rejects.parquet")


def test_validate_labels_reports_class_balance(tmp_path):
    write_label_stage(tmp_path, labels_table(), rejects_table())
    report = validate_labels(tmp_path / "labels", tmp_path / "images", tmp_path / "labels.json")
    assert report.success and report.rows == {"labels": 4, "label_accounting": 5}
    balance = json.loads((tmp_path / "labels.json").read_text())["info"]["class_balance"]
    assert balance["counts_per_label"] == {"0": 2, "1": 2} and balance["positive_fraction"] == 0.5


def test_validate_labels_fails_after_saving_and_names_everything(tmp_path):
    labels = labels_table()
    labels.loc[0, "label"] = 2
    write_label_stage(tmp_path, labels, rejects_table(reasons=[""]))
    out = tmp_path / "reports" / "labels.json"
    with pytest.raises(ValidationFailed) as caught:
        validate_labels(tmp_path / "labels", tmp_path / "images", out)
    message = str(caught.value)
    assert str(out) in message and "'labels'" in message
    assert "labels: expect_column_values_to_be_in_set[label]" in message
    assert "label_accounting: expect_column_values_to_match_regex[reject_reason]" in message
    assert "every reject has a reason" in message
    saved = json.loads(out.read_text())
    assert saved["success"] is False and len(saved["failed"]) == 2
    assert caught.value.reports[0].path == out


def test_run_suites_saves_every_report_then_raises(tmp_path):
    checks = [
        SuiteCheck("flow_ok", flow_table(), lambda: flow_statistics_suite(4)),
        SuiteCheck("flow_short", flow_table(), flow_statistics_suite(9)),
        SuiteCheck("labels_ok", labels_table(), labels_suite),
    ]
    with pytest.raises(ValidationFailed) as caught:
        run_suites(checks, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "flow_ok.json",
        "flow_short.json",
        "labels_ok.json",
    ]
    assert [r.name for r in caught.value.reports] == ["flow_short"]
    assert "flow_short" in str(caught.value) and "flow_ok" not in str(caught.value)


def test_gx_context_creation_and_validation_are_quiet_and_offline(monkeypatch, capfd):
    import socket

    from vidprior.validation import runner

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(runner, "_BATCH_DEFINITION", None)  # force a fresh context under the guard
    report = validate_frame(flow_table(), flow_statistics_suite(4), "flow")
    assert report.success, report.failure_message()
    out, err = capfd.readouterr()
    assert out == "" and err == "", err  # no progress bars, no banners
