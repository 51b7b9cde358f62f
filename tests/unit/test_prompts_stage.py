"""The `unic.prompts` stage end to end: the manifest/rejects contract, sources, rules, cap, LLM filter, CLI.

The LLM filter runs against a real HTTP server on 127.0.0.1 that speaks OpenAI chat completions
(the `chat_server` fixture of tests/conftest.py).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from vidprior.cli import app
from vidprior.config import Params, params_from_dict
from vidprior.io.checkpoint import PARTIAL_DIR, ChunkStore
from vidprior.io.manifest import read_manifest, read_rejects
from vidprior.models import build_text_embedder
from vidprior.unic import prompt_llm_filter, prompts
from vidprior.unic.prompt_sources import PromptSourceError, builtin_path

if TYPE_CHECKING:
    from conftest import ChatServer, Recorded

ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = ROOT / "params.yaml"

KNOWN_REASONS = {
    "missing_id",
    "duplicate_id",
    "empty",
    "non_english",
    "too_short",
    "too_long",
    "no_motion",
    "duplicate",
    "llm_rejected",
    "llm_unanswered",
    "over_max_prompts",
}
PROVENANCE = ["source", "source_row", "embedder", "dedup_threshold", "llm_filter"]


# --------------------------------------------------------------------------- helpers


def _deep_update(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def params_data(prompts_update: dict | None = None) -> dict:
    """params.yaml as a dict, uncapped (the tiny run's `max_prompts` is a run-time budget, not part of
    the contract tested here), with `unic.prompts` deep-updated."""
    data = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))
    data["unic"]["prompts"]["max_prompts"] = None
    data["unic"]["prompts"] = _deep_update(data["unic"]["prompts"], copy.deepcopy(prompts_update or {}))
    return data


def params_with(prompts_update: dict | None = None) -> Params:
    return params_from_dict(params_data(prompts_update))


def run_stage(params: Params, inputs, out: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    metrics = prompts.run(params, inputs, out)
    return metrics, read_manifest(out), read_rejects(out)


def write_csv(path: Path, rows: list[tuple[str, str]], **extra: list) -> Path:
    df = pd.DataFrame({"uuid": [u for u, _ in rows], "prompt": [p for _, p in rows], **extra})
    df.to_csv(path, index=False)
    return path


def input_rows(sources: dict[str, Path]) -> pd.DataFrame:
    """Every input row as (source, source_row, uuid), read independently of the stage's reader."""
    frames = []
    for name, path in sources.items():
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        frames.append(
            pd.DataFrame(
                {"source": name, "source_row": range(len(df)), "uuid": df["uuid"].astype(str).str.strip()}
            )
        )
    return pd.concat(frames, ignore_index=True)


def assert_contract(rows: pd.DataFrame, manifest: pd.DataFrame, rejects: pd.DataFrame, params: Params):
    """The stage's contract on any input. A near-duplicate points at a prompt that passed dedup: one in
    the manifest unless a later stage (LLM filter, cap) dropped it."""
    cfg = params.unic.prompts
    threshold = cfg.dedup.threshold

    # ids unique in the manifest
    assert manifest["id"].is_unique
    # every input row in exactly one of manifest / rejects
    assert len(manifest) + len(rejects) == len(rows)
    key = ["source", "source_row"]
    seen = pd.concat([manifest[key], rejects[key]], ignore_index=True)
    assert not seen.duplicated().any()
    expected = sorted(zip(rows["source"], rows["source_row"], strict=True))
    assert sorted(zip(seen["source"], seen["source_row"].astype(int), strict=True)) == expected
    # the ids are the input uuids, row for row
    by_row = {
        (s, int(r)): u for s, r, u in zip(rows["source"], rows["source_row"], rows["uuid"], strict=True)
    }
    for table in (manifest, rejects):
        for s, r, i in zip(table["source"], table["source_row"], table["id"], strict=True):
            assert by_row[(s, int(r))] == i
    assert sorted(list(manifest["id"]) + list(rejects["id"])) == sorted(rows["uuid"])

    # every reject has a known reason and a non-empty detail
    assert set(rejects["reason"]) <= KNOWN_REASONS
    assert rejects["reason"].notna().all()
    assert (rejects["reason"].str.len() > 0).all()
    assert (rejects["detail"].str.len() > 0).all()

    # near-duplicates point at a kept prompt, at or above the threshold
    dups = rejects[rejects["reason"] == "duplicate"]
    if len(dups):
        passed_dedup = set(manifest["id"]) | set(
            rejects.loc[rejects["stage"].isin(["llm_filter", "cap"]), "id"]
        )
        assert dups["duplicate_of"].isin(passed_dedup).all()
        assert (dups["similarity"] >= threshold - 1e-5).all()

    # no kept pair reaches the threshold, recomputed from scratch with the same embedder
    if len(manifest) > 1:
        emb = build_text_embedder(cfg.embedder).embed(manifest["prompt"].tolist())
        sims = emb @ emb.T
        np.fill_diagonal(sims, -1.0)
        assert sims.max() < threshold

    # provenance
    for column in PROVENANCE:
        assert column in manifest.columns, column
    assert (manifest["embedder"] == cfg.embedder.model_id).all()
    assert (manifest["dedup_threshold"] == threshold).all()


# --------------------------------------------------------------------------- the shipped file


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> tuple[Params, dict, pd.DataFrame, pd.DataFrame]:
    params = params_with()
    assert params.unic.prompts.sources == ["builtin"]
    metrics, manifest, rejects = run_stage(params, None, tmp_path_factory.mktemp("shipped"))
    return params, metrics, manifest, rejects


def test_shipped_file_contract(shipped):
    params, metrics, manifest, rejects = shipped
    rows = input_rows({"builtin": builtin_path()})
    assert_contract(rows, manifest, rejects, params)
    # Nothing after dedup drops prompts here, so every near-duplicate points into the manifest.
    assert rejects.loc[rejects["reason"] == "duplicate", "duplicate_of"].isin(manifest["id"]).all()
    # The shipped file exercises several reasons, not just the happy path.
    assert {"empty", "duplicate", "non_english", "no_motion", "too_short", "too_long"} <= set(
        rejects["reason"]
    )
    assert (manifest["llm_filter"] == "off").all()
    assert (manifest["source"] == "builtin").all()


def test_shipped_file_exact_duplicates_and_blank_prompt(shipped):
    _, _, manifest, rejects = shipped
    raw = pd.read_csv(builtin_path(), dtype=str, keep_default_na=False)
    normalised = raw["prompt"].str.split().str.join(" ")
    # A blank prompt is rejected as `empty`, never embedded.
    blank = raw.loc[normalised == "", "uuid"].tolist()
    assert blank
    assert set(rejects.loc[rejects["reason"] == "empty", "id"]) == set(blank)
    # Exact repeats of a prompt: at most one copy survives; a later copy of a kept prompt is its duplicate.
    groups = raw.assign(text=normalised)[normalised.duplicated(keep=False) & (normalised != "")]
    assert len(groups)
    kept = set(manifest["id"])
    by_id = rejects.set_index("id")
    first_kept = 0
    for _, group in groups.groupby("text"):
        ids = group["uuid"].tolist()
        assert sum(i in kept for i in ids) <= 1
        if ids[0] in kept:
            first_kept += 1
            for later in ids[1:]:
                row = by_id.loc[later]
                assert (row["reason"], row["duplicate_of"]) == ("duplicate", ids[0])
                assert row["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert first_kept  # the check above really ran


def test_shipped_file_metrics_match_outputs(shipped):
    _, metrics, manifest, rejects = shipped
    raw_rows = len(pd.read_csv(builtin_path(), dtype=str, keep_default_na=False))
    assert metrics["prompts_read"] == raw_rows
    assert metrics["prompts_kept"] == len(manifest)
    assert metrics["prompts_rejected"] == len(rejects)
    assert metrics["resumed_chunks"] == 0
    counts = rejects["reason"].value_counts().to_dict()
    assert {k.removeprefix("rejected_"): v for k, v in metrics.items() if k.startswith("rejected_")} == counts


def test_contract_with_repeated_and_missing_uuids(tmp_path):
    shipped_rows = pd.read_csv(builtin_path(), dtype=str, keep_default_na=False)
    repeated = shipped_rows["uuid"].iloc[[0, 5, 9]].tolist()
    extra = write_csv(
        tmp_path / "extra.csv",
        [
            (repeated[0], "a skateboarder jumping over a fire hydrant at dusk"),
            ("", "a balloon drifting over a quiet village at sunrise"),
            ("  ", "a balloon floating over a sleepy harbour at noon"),
            (repeated[1], "a fox chasing its tail in deep snow"),
            ("x-empty", "   "),
            ("x-new", "a jellyfish pulsing slowly through deep blue water"),
            ("x-new", "a jellyfish pulsing slowly through deep blue water"),
            (repeated[2], ""),
        ],
    )
    params = params_with()
    _, manifest, rejects = run_stage(params, ["builtin", str(extra)], tmp_path / "out")
    rows = input_rows({"builtin": builtin_path(), str(extra): extra})
    assert_contract(rows, manifest, rejects, params)

    dup_ids = rejects[rejects["reason"] == "duplicate_id"]
    assert sorted(dup_ids["id"]) == sorted([*repeated, "x-new"])
    assert (dup_ids["source"] == str(extra)).all()
    for uuid in repeated:
        first_row = int(shipped_rows.index[shipped_rows["uuid"] == uuid][0])
        detail = dup_ids.loc[dup_ids["id"] == uuid, "detail"].item()
        assert "builtin" in detail and f"row {first_row}" in detail
    assert sorted(rejects.loc[rejects["reason"] == "missing_id", "source_row"]) == [1, 2]
    assert "x-empty" in set(rejects.loc[rejects["reason"] == "empty", "id"])
    assert "x-new" in set(manifest["id"])  # the first copy of a repeated uuid is judged on its own


def test_two_runs_are_identical(tmp_path):
    params = params_with()
    _, manifest_a, rejects_a = run_stage(params, None, tmp_path / "a")
    _, manifest_b, rejects_b = run_stage(params, None, tmp_path / "b")
    pd.testing.assert_frame_equal(manifest_a, manifest_b)
    pd.testing.assert_frame_equal(rejects_a, rejects_b)
    # ...and a rerun over an existing output directory as well
    _, manifest_c, rejects_c = run_stage(params, None, tmp_path / "a")
    pd.testing.assert_frame_equal(manifest_a, manifest_c)
    pd.testing.assert_frame_equal(rejects_a, rejects_c)
    assert not (tmp_path / "a" / PARTIAL_DIR).exists()


# --------------------------------------------------------------------------- sources

MOVING = [
    "a golden retriever running across a sunny beach",
    "an eagle soaring over snowy mountains at dawn",
    "a red sports car racing through a desert canyon",
    "children jumping into a lake on a summer afternoon",
    "a chef flipping pancakes in a busy kitchen",
    "waves crashing against a lighthouse during a storm",
    "a horse galloping through a field of sunflowers",
    "a silver robot dancing in a neon lit street",
    "a violinist playing on a rainy rooftop at night",
    "a giant robot walking through a burning city",
]


def test_vidprom_parquet_and_csv_are_both_read(tmp_path):
    pq_path = tmp_path / "part-0.parquet"
    pd.DataFrame(
        {
            "uuid": ["p0", "p1", "p2"],
            "prompt": MOVING[:3],
            "nsfw": [0.01, 0.2, 0.003],
            "user_name": list("abc"),
        }
    ).to_parquet(pq_path, index=False)
    csv_path = write_csv(
        tmp_path / "part-1.csv",
        [("c0", MOVING[3]), ("c1", MOVING[4]), ("p1", MOVING[5])],
        nsfw=[0.0, 0.5, 0.1],
    )
    params = params_with()
    _, manifest, rejects = run_stage(params, [pq_path, csv_path], tmp_path / "out")
    assert_contract(input_rows({str(pq_path): pq_path, str(csv_path): csv_path}), manifest, rejects, params)
    assert manifest["id"].tolist() == ["p0", "p1", "p2", "c0", "c1"]
    assert manifest["prompt"].tolist() == MOVING[:5]
    assert manifest["source"].tolist() == [str(pq_path)] * 3 + [str(csv_path)] * 2
    assert manifest["source_row"].tolist() == [0, 1, 2, 0, 1]
    assert "nsfw" not in manifest.columns

    # `p1` is repeated across the two files: the second copy is a duplicate_id naming the first file.
    (dup,) = rejects.itertuples()
    assert (dup.id, dup.reason, dup.source, dup.source_row) == ("p1", "duplicate_id", str(csv_path), 2)
    assert str(pq_path) in dup.detail and "row 1" in dup.detail


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_file_without_prompt_column_names_file_and_column(tmp_path, suffix):
    path = tmp_path / f"bad.{suffix}"
    df = pd.DataFrame({"uuid": ["a", "b"], "text": MOVING[:2], "nsfw": [0.0, 0.1]})
    df.to_parquet(path, index=False) if suffix == "parquet" else df.to_csv(path, index=False)
    with pytest.raises(PromptSourceError) as err:
        prompts.run(params_with(), [path], tmp_path / "out")
    message = str(err.value)
    assert str(path) in message
    assert "'prompt'" in message
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_missing_file_names_the_path(tmp_path):
    good = write_csv(tmp_path / "good.csv", [("a", MOVING[0])])
    missing = tmp_path / "nowhere" / "prompts.parquet"
    with pytest.raises(PromptSourceError) as err:
        prompts.run(params_with(), [good, missing], tmp_path / "out")
    assert str(missing) in str(err.value)
    assert "not found" in str(err.value)


# --------------------------------------------------------------------------- rules and cap


def test_rule_filter_reasons_land_in_rejects(tmp_path):
    cases = {
        "ok-1": MOVING[0],
        "es": "un perro corriendo en la playa con el sol",
        "zh": "一只小狗在草地上奔跑",
        "short": "dog runs",
        "long": "a dog running " + "very " * 70 + "fast",
        "static": "portrait of an old fisherman, oil painting, 4k",
        "blank": " \t ",
        "ok-2": "  an eagle   soaring\nover snowy mountains at dawn ",
    }
    path = write_csv(tmp_path / "rules.csv", list(cases.items()))
    params = params_with()
    metrics, manifest, rejects = run_stage(params, [path], tmp_path / "out")
    assert_contract(input_rows({str(path): path}), manifest, rejects, params)
    reasons = dict(zip(rejects["id"], rejects["reason"], strict=True))
    assert reasons == {
        "es": "non_english",
        "zh": "non_english",
        "short": "too_short",
        "long": "too_long",
        "static": "no_motion",
        "blank": "empty",
    }
    assert manifest["id"].tolist() == ["ok-1", "ok-2"]
    # whitespace is normalised before anything else looks at the text
    assert manifest["prompt"].tolist()[1] == "an eagle soaring over snowy mountains at dawn"
    assert manifest["n_words"].tolist() == [len(t.split()) for t in manifest["prompt"]]
    stage_of = dict(zip(rejects["id"], rejects["stage"], strict=True))
    assert stage_of["blank"] == "sources" and stage_of["static"] == "rule_filter"
    assert metrics["rejected_non_english"] == 2 and metrics["rejected_too_long"] == 1


def test_rules_follow_params(tmp_path):
    path = write_csv(
        tmp_path / "rules.csv",
        [("static", "portrait of an old fisherman, oil painting"), ("lantern", "a paper lantern glowing")],
    )
    params = params_with({"rule_filter": {"require_motion": False, "min_words": 5}})
    _, manifest, rejects = run_stage(params, [path], tmp_path / "a")
    assert manifest["id"].tolist() == ["static"]
    assert rejects["reason"].tolist() == ["too_short"]
    params = params_with({"rule_filter": {"extra_motion_words": ["Glowing"], "min_words": 3}})
    _, manifest, rejects = run_stage(params, [path], tmp_path / "b")
    assert manifest["id"].tolist() == ["lantern"]
    assert rejects["reason"].tolist() == ["no_motion"]


def test_max_prompts_caps_manifest_and_rejects_the_rest(tmp_path):
    _, full, _ = run_stage(params_with(), None, tmp_path / "full")
    cap = 5
    params = params_with({"max_prompts": cap})
    metrics, manifest, rejects = run_stage(params, None, tmp_path / "capped")
    assert_contract(input_rows({"builtin": builtin_path()}), manifest, rejects, params)
    pd.testing.assert_frame_equal(manifest, full.iloc[:cap])
    over = rejects[rejects["reason"] == "over_max_prompts"]
    assert over["id"].tolist() == full["id"].iloc[cap:].tolist()
    assert (over["detail"] == f"max_prompts={cap}").all()
    assert metrics["prompts_kept"] == cap and metrics["rejected_over_max_prompts"] == len(full) - cap


# --------------------------------------------------------------------------- LLM filter

KEY_ENV = "VIDPRIOR_TEST_PROMPTS_LLM_KEY"
SECRET = "sk-test-prompts-0123456789SECRET"
MODEL = "test-filter-model"
MALFORMED_MARK = "violinist"


class FakeChat:
    """Judges each prompt by its text: 'robot' -> reject, the violinist -> not JSON, else keep."""

    def __init__(self, server: ChatServer) -> None:
        self.server = server
        self.malformed_answer = "Sure! This prompt looks fine to me."

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def requests(self) -> list[dict[str, Any]]:
        return [
            {"headers": r.headers, "body": r.body, "prompt": _prompt_of(r.body)} for r in self.server.requests
        ]

    def __call__(self, request: Recorded) -> str:
        prompt = _prompt_of(request.body)
        if MALFORMED_MARK in prompt:
            return self.malformed_answer
        if "robot" in prompt:
            return json.dumps({"keep": False, "reason": "mentions a robot"})
        return json.dumps({"keep": True, "reason": "clear motion"})


def _prompt_of(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"].removeprefix("Prompt: ")


@pytest.fixture
def chat(chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch) -> FakeChat:
    monkeypatch.setenv(KEY_ENV, SECRET)
    fake = FakeChat(chat_server)
    chat_server.responder = fake
    return fake


def llm_params(chat: FakeChat, **prompts_update: Any) -> Params:
    update = {
        "llm_filter": {
            "enabled": True,
            "base_url": chat.base_url,
            "model": MODEL,
            "api_key_env": KEY_ENV,
            "max_workers": 4,
            "timeout_s": 5.0,
            "max_retries": 0,
        },
        "dedup": {"chunk_size": 4},
    }
    return params_with(_deep_update(update, prompts_update))


def llm_input(tmp_path: Path) -> Path:
    rows = [(f"m{i}", text) for i, text in enumerate(MOVING)]
    rows.insert(3, ("dup-of-m0", MOVING[0] + "."))  # dedup removes it before the LLM sees it
    rows.insert(6, ("static", "a vintage camera on a wooden desk"))  # so do the rules
    return write_csv(tmp_path / "llm.csv", rows)


def test_llm_filter_against_local_server(tmp_path, chat):
    path = llm_input(tmp_path)
    params = llm_params(chat)
    metrics, manifest, rejects = run_stage(params, [path], tmp_path / "out")
    assert_contract(input_rows({str(path): path}), manifest, rejects, params)

    # One request per unique prompt that reached the LLM; none for rule rejects or near-duplicates.
    assert sorted(r["prompt"] for r in chat.requests) == sorted(MOVING)
    assert metrics["prompts_read"] == len(MOVING) + 2
    assert {r["body"]["model"] for r in chat.requests} == {MODEL}
    assert all(r["headers"]["authorization"] == f"Bearer {SECRET}" for r in chat.requests)

    reasons = dict(zip(rejects["id"], rejects["reason"], strict=True))
    robots = [f"m{i}" for i, t in enumerate(MOVING) if "robot" in t]
    violinist = next(f"m{i}" for i, t in enumerate(MOVING) if MALFORMED_MARK in t)
    assert reasons == {
        "dup-of-m0": "duplicate",
        "static": "no_motion",
        **dict.fromkeys(robots, "llm_rejected"),
        violinist: "llm_unanswered",  # never guessed
    }
    detail = dict(zip(rejects["id"], rejects["detail"], strict=True))
    assert all(detail[r] == "mentions a robot" for r in robots)
    assert "JSON" in detail[violinist]
    assert set(rejects.loc[rejects["reason"].str.startswith("llm_"), "stage"]) == {"llm_filter"}
    expected_kept = [f"m{i}" for i in range(len(MOVING)) if f"m{i}" not in reasons]
    assert manifest["id"].tolist() == expected_kept
    assert (manifest["llm_filter"] == MODEL).all()
    assert (manifest["llm_prompt_version"] == prompt_llm_filter.PROMPT_VERSION).all()
    assert metrics["rejected_llm_rejected"] == 2 and metrics["rejected_llm_unanswered"] == 1

    # The key is sent to the server but never written anywhere.
    for name in ("manifest.parquet", "rejects.parquet"):
        assert SECRET.encode() not in (tmp_path / "out" / name).read_bytes()
    for table in (manifest, rejects):
        assert not table.astype(str).apply(lambda col: col.str.contains(SECRET, regex=False)).any().any()
    assert not (tmp_path / "out" / PARTIAL_DIR).exists()

    # A completed run leaves no checkpoints, so a rerun asks again, once per prompt, same result.
    first = len(chat.requests)
    _, manifest_2, rejects_2 = run_stage(params, [path], tmp_path / "out")
    assert len(chat.requests) - first == len(MOVING)
    pd.testing.assert_frame_equal(manifest, manifest_2)
    pd.testing.assert_frame_equal(rejects, rejects_2)


def test_llm_filter_stops_asking_once_max_prompts_are_kept(tmp_path, chat):
    path = llm_input(tmp_path)
    params = llm_params(chat, max_prompts=2, dedup={"chunk_size": 3})
    _, manifest, rejects = run_stage(params, [path], tmp_path / "out")
    assert_contract(input_rows({str(path): path}), manifest, rejects, params)
    # The first LLM chunk (3 prompts: 2 keeps) already fills the cap: no further requests.
    assert sorted(r["prompt"] for r in chat.requests) == sorted(MOVING[:3])
    assert manifest["id"].tolist() == ["m0", "m1"]
    over = rejects[rejects["reason"] == "over_max_prompts"]
    assert over["id"].tolist() == ["m2", *[f"m{i}" for i in range(3, len(MOVING))]]


def test_llm_filter_off_when_nothing_reaches_it(tmp_path, chat):
    path = write_csv(tmp_path / "static.csv", [("s", "a vintage camera on a wooden desk")])
    _, manifest, rejects = run_stage(llm_params(chat), [path], tmp_path / "out")
    assert chat.requests == [] and len(manifest) == 0 and rejects["reason"].tolist() == ["no_motion"]


def test_key_echoed_in_malformed_answer_is_not_written(tmp_path, chat):
    chat.malformed_answer = f"error: invalid api key {SECRET}"
    path = llm_input(tmp_path)
    _, _, rejects = run_stage(llm_params(chat), [path], tmp_path / "out")
    assert "llm_unanswered" in set(rejects["reason"])
    assert not rejects["detail"].str.contains(SECRET, regex=False).any()


class _Interrupted(Exception):
    pass


def test_llm_checkpoints_survive_a_chunk_size_change(tmp_path, chat, monkeypatch):
    path = llm_input(tmp_path)
    original = ChunkStore.records

    def records(self, index, compute):
        result = original(self, index, compute)
        if self.computed >= 2:
            raise _Interrupted
        return result

    monkeypatch.setattr(ChunkStore, "records", records)
    with pytest.raises(_Interrupted):
        prompts.run(llm_params(chat, dedup={"chunk_size": 3}), [path], tmp_path / "out")
    monkeypatch.undo()
    assert len(list((tmp_path / "out" / PARTIAL_DIR / "llm_filter").glob("chunk-*.json"))) == 2

    params = llm_params(chat, dedup={"chunk_size": 4})
    _, clean_manifest, clean_rejects = run_stage(params, [path], tmp_path / "clean")
    _, manifest, rejects = run_stage(params, [path], tmp_path / "out")
    pd.testing.assert_frame_equal(manifest, clean_manifest)
    pd.testing.assert_frame_equal(rejects, clean_rejects)


# --------------------------------------------------------------------------- CLI


def _params_file(tmp_path: Path, data: dict, name: str = "params.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _cli(params_file: Path, out: Path, metrics: Path):
    args = ["unic", "prompts", "--params", str(params_file), "-o", str(out), "--metrics", str(metrics)]
    return CliRunner().invoke(app, [*args, "--no-track"])


def test_cli_writes_outputs_and_reproducible_metrics(tmp_path):
    params_file = _params_file(tmp_path, params_data())
    result = _cli(params_file, tmp_path / "out", tmp_path / "metrics.json")
    assert result.exit_code == 0, result.output
    manifest, rejects = read_manifest(tmp_path / "out"), read_rejects(tmp_path / "out")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert not [k for k in metrics if "seconds" in k or k.startswith("resumed_")]
    assert metrics["prompts_kept"] == len(manifest) and metrics["prompts_rejected"] == len(rejects)
    assert json.loads(result.stdout)["prompts_kept"] == len(manifest)
    _, direct_manifest, direct_rejects = run_stage(params_with(), None, tmp_path / "direct")
    pd.testing.assert_frame_equal(manifest, direct_manifest)
    pd.testing.assert_frame_equal(rejects, direct_rejects)


def test_cli_metrics_file_is_identical_across_runs(tmp_path):
    # The metrics file is committed (DVC): no timing of any name may make it differ run to run.
    params_file = _params_file(tmp_path, params_data())
    for name in ("a", "b"):
        assert _cli(params_file, tmp_path / name, tmp_path / f"{name}.json").exit_code == 0
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_cli_unknown_params_key_exits_2_naming_key_and_file(tmp_path):
    data = params_data()
    data["unic"]["prompts"]["dedupe"] = {"threshold": 0.9}
    params_file = _params_file(tmp_path, data, "bad-params.yaml")
    result = _cli(params_file, tmp_path / "out", tmp_path / "metrics.json")
    assert result.exit_code == 2
    assert "unknown key 'unic.prompts.dedupe'" in result.stderr
    assert str(params_file) in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "metrics.json").exists()


def test_cli_missing_input_exits_1_naming_it(tmp_path):
    params_file = _params_file(tmp_path, params_data())
    missing = tmp_path / "missing.csv"
    args = ["unic", "prompts", "--params", str(params_file), "-i", str(missing), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--no-track"])
    assert result.exit_code == 1
    assert str(missing) in result.stderr
