"""The serving peer (bench/peer_server.py) and its benchmark (bench/peer.py), at tiny size.

The peer must make the images our server makes (same network, same sampler, same seeds) and
batch as it claims: one pipeline call per step count within its window, at most max_batch
images. Speed is not asserted here; bench/peer.py measures it and docs/benchmarks.md reports it.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.peer import main as bench_main
from bench.peer_pipeline import PeerPipeline, PeerRow
from bench.peer_server import DynamicBatcher, PeerRequest, PeerSettings
from bench.server import serve_process
from model import load_checkpoint
from model.images import decode_png


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint: Path) -> PeerPipeline:
    return PeerPipeline.from_checkpoint(tiny_checkpoint)


def test_peer_makes_our_images(pipeline: PeerPipeline, tiny_checkpoint: Path) -> None:
    """diffusers' DDIMPipeline on the exported network against our sampler: same seeds, same images."""
    ours = load_checkpoint(tiny_checkpoint, device="cpu", runtime="torch")
    rows = [PeerRow(5, None), PeerRow(6, 3), PeerRow(7, 9)]
    for steps in (1, 4):
        theirs = pipeline.generate(rows, steps, 0.0)
        expected = np.concatenate([ours.sample(1, steps=steps, sampler="ddim", eta=0.0, seed=r.seed, label=r.label)
                                   for r in rows])
        assert theirs.shape == expected.shape == (3, 8, 8, 1) and theirs.dtype == np.uint8
        assert theirs.std() > 5  # not a blank image
        # float32 noise may move a pixel across a rounding edge, never further
        assert np.abs(theirs.astype(int) - expected.astype(int)).max() <= 1


def test_batcher_groups_by_steps_within_the_window(pipeline: PeerPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    generate = pipeline.generate

    def recorded(rows: list[PeerRow], steps: int, eta: float) -> np.ndarray:
        calls.append((len(rows), steps))
        return generate(rows, steps, eta)

    monkeypatch.setattr(pipeline, "generate", recorded)

    async def scenario() -> list[np.ndarray]:
        batcher = DynamicBatcher(pipeline, PeerSettings(window_s=0.3, max_batch=3))
        runner = asyncio.create_task(batcher.run())
        bodies = [PeerRequest(steps=2), PeerRequest(steps=3), PeerRequest(steps=2, n=2), PeerRequest(steps=2)]
        try:
            return await asyncio.gather(*(batcher.submit(b, seed=10 * i) for i, b in enumerate(bodies)))
        finally:
            runner.cancel()
            batcher.executor.shutdown()

    results = asyncio.run(scenario())
    # Oldest first: the two 2-step requests that fit in 3 images, then the 3-step one, then the last.
    assert calls == [(3, 2), (1, 3), (1, 2)]
    assert [r.shape[0] for r in results] == [1, 1, 2, 1]
    # Each request gets its own images: what its seeds make alone.
    np.testing.assert_array_equal(results[2], generate([PeerRow(20, None), PeerRow(21, None)], 2, 0.0))
    np.testing.assert_array_equal(results[3], generate([PeerRow(30, None)], 2, 0.0))


def test_peer_server_over_http(tiny_checkpoint: Path, tmp_path: Path) -> None:
    argv = ["-m", "bench.peer_server", "--checkpoint", str(tiny_checkpoint), "--port", "{port}",
            "--max-batch", "4", "--window-ms", "5"]
    with serve_process(argv, tmp_path / "peer.log") as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/generate", json={"n": 1, "steps": 2, "sampler": "ddim", "seed": 3, "label": 1})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.headers["x-seed"] == "3"
        assert decode_png(r.content).shape == (8, 8, 1)
        grid = c.post("/generate", json={"n": 4, "steps": 2})
        assert grid.status_code == 200 and decode_png(grid.content).shape[0] > 8
        for body, field in [({"n": 5}, "n"), ({"sampler": "ddpm"}, "sampler"), ({"label": 10}, "label"),
                            ({"steps": 0}, "steps"), ({"steps": 1001}, "steps"), ({"guidance": 2.0}, "guidance")]:
            bad = c.post("/generate", json=body)
            assert bad.status_code == 422 and field in bad.text, (body, bad.text)
        stats = c.get("/stats").json()
        assert stats["pipeline_calls"] >= 2 and [1, 2] in stats["calls"] and [4, 2] in stats["calls"]


def test_peer_server_refuses_absurd_settings(tiny_checkpoint: Path) -> None:
    from bench.peer_server import main

    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tiny_checkpoint), "--max-batch", "0"])


@pytest.mark.slow
def test_bench_end_to_end(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Both servers, both loads, two rounds in reversed order: every field present and sane."""
    out = tmp_path / "peer.json"
    bench_main(["--checkpoint", str(tiny_checkpoint), "--servers", "ours", "peer", "--rounds", "2",
                "--clients", "2", "--uniform-steps", "2", "--uniform-requests", "1", "--mixed-steps", "1", "2", "3",
                "--mixed-requests", "3", "--log", str(tmp_path / "servers.log"), "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["orders"] == [["ours", "peer"], ["peer", "ours"]]
    assert data["settings"]["clients"] == 2 and data["machine"]["cores"] >= 1 and data["wall_s"] > 0
    assert len(data["load_average_start"]) == 3 and all(x >= 0 for x in data["load_average_end"])
    during = data["load_average_during"]
    assert during["samples"] >= 1 and during["min"] <= during["median"] <= during["max"]
    for rnd in data["rounds"]:
        assert len(rnd["ours"]["uniform"]["latencies"]) == 2 and len(rnd["peer"]["mixed"]["latencies"]) == 6
        runner = rnd["ours"]["server"]["runner"]
        assert runner["requested"] == "auto" and runner["name"] in ("torch", "onnxruntime", "openvino")
        for load in ("uniform", "mixed"):
            calls = rnd["peer"][load]["peer_calls"]
            assert calls["pipeline_calls"] == len(calls["calls"]) >= 1
            assert 1 <= calls["images_per_call"] <= 2  # 2 clients: 2 images at most
            assert {steps for _, steps in calls["calls"]} == ({2} if load == "uniform" else {1, 2, 3})
    for load, classes in (("uniform", {"2"}), ("mixed", {"1", "2", "3"})):
        for name in ("ours", "peer"):
            row = data["summary"][load][name]
            assert row["images_per_s"] > 0 and len(row["images_per_s_runs"]) == 2
            assert set(row["classes"]) == classes
            for c in row["classes"].values():
                assert 0 < c["p50_s"] <= c["p99_s"] < 60 and c["count"] == 4  # 2 rounds x 2 per class
    ratios = data["ratios"]["ours"]
    assert data["ratios_by_peer"] == {"peer": {"ours": ratios}}  # one peer: the headline is its ratios
    assert set(ratios) == set(data["aims"]) and all(math.isfinite(v) and v > 0 for v in ratios.values())
    assert data["aims_met"]["ours"] == {k: ratios[k] >= data["aims"][k] for k in ratios}
