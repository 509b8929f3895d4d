"""`presso search` on a real two-node Ray cluster started on this machine (`ray start --head`
and a second `ray start --address`, one CPU and one `presso_timer` each): the search spreads
over both nodes, survives a killed worker, and resumes after the driver is killed without
measuring a finished candidate again. Slow (a minute or two each); the cluster's processes are
stopped by id in teardown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.tune", reason="presso search needs the `search` extra (ray[tune], optuna)")
pytest.importorskip("optuna", reason="presso search needs the `search` extra (ray[tune], optuna)")

from search_models import classifier, data  # noqa: E402

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))
SPACE = "quant: [none, int8]\ncalibration: [minmax, percentile]\nprune: [0.0]\nsparsity: [0.0, 0.5]\nbackend: [onnxruntime]\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry)] = (parent, command)
    return found


def _cluster_processes(marker: str) -> set[int]:
    """The processes of the cluster whose temp dir is ``marker``, and all their descendants."""
    processes = _processes()
    mine = {os.getpid(), os.getppid()}
    found = {pid for pid, (_, command) in processes.items() if marker in command and pid not in mine}
    grew = True
    while grew:
        grew = False
        for pid, (parent, _) in processes.items():
            if parent in found and pid not in found and pid not in mine:
                found.add(pid)
                grew = True
    return found


def _stop(marker: str) -> None:
    for _ in range(3):
        pids = _cluster_processes(marker)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.5)


@pytest.fixture
def cluster(monkeypatch):
    """A head node and a worker node on 127.0.0.1; yields (address, env)."""
    temp = tempfile.mkdtemp(prefix="presso-ray-")
    port = _free_port()
    # token auth, as a local ray.init uses: a process that ran a local Ray keeps that mode for later sessions
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    common = ["--num-cpus", "1", "--resources", '{"presso_timer": 1}', "--object-store-memory", "80000000",
              "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    try:
        subprocess.run([RAY, "start", "--head", "--port", str(port), "--temp-dir", temp, "--include-dashboard",
                        "false", *common], env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", *common], env=env, check=True,
                       capture_output=True, timeout=180)
        yield f"127.0.0.1:{port}", env, temp
    finally:
        _stop(temp)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    return {"model": classifier(tmp_path / "m.onnx"), "calib": data(tmp_path / "calib.npz", (3, 16, 16), 16, seed=0),
            "eval": data(tmp_path / "eval.npz", (3, 16, 16), 16, seed=1), "space": tmp_path / "space.yaml"}


def _command(tiny, out: Path, address: str, budget: int) -> list[str]:
    return [sys.executable, "-m", "presso.tools.main", "search", str(tiny["model"]), "--data", str(tiny["calib"]),
            "--eval", str(tiny["eval"]), "--budget", str(budget), "-o", str(out), "--space", str(tiny["space"]),
            "--ray-address", address, "--runs", "5", "--timeout", "300"]


def _recorded(out: Path) -> list[dict]:
    try:
        return json.loads((out / "results.json").read_text())["candidates"]
    except (OSError, ValueError, KeyError):
        return []


def _wait_for_build(out: Path, finished: int, deadline: float, cluster_marker: str) -> int:
    """Wait until ``finished`` candidates are recorded and this cluster builds another; its pid."""
    while time.time() < deadline:
        if len(_recorded(out)) >= finished:
            ours = _cluster_processes(cluster_marker)  # not another search's builds on this machine
            builds = [pid for pid, (_, command) in _processes().items()
                      if "presso.search.candidate build" in command and pid in ours]
            if builds:
                return builds[0]
        time.sleep(0.5)
    pytest.fail(f"no candidate was being built after {finished} were recorded")


def test_search_runs_on_both_nodes(cluster, tiny, tmp_path):
    address, _, _ = cluster
    import ray

    from presso.search.runner import search

    result = search(tiny["model"], tiny["calib"], tiny["eval"], output=tmp_path / "out", budget=4, concurrency=2,
                    space=str(tiny["space"]), ray_address=address, runs=5, metric="top1", progress=False)
    assert not ray.is_initialized()  # the search disconnected from the cluster it joined
    ok = [c for c in result.candidates if c["status"] == "ok"]
    assert len(ok) == len(result.candidates) >= 2
    assert len({c["node_id"] for c in ok}) == 2  # both nodes ran candidates
    assert result.front and all((tmp_path / "out" / "front" / c["key"] / "manifest.json").exists()
                                for c in result.front)


def test_killed_worker_loses_no_finished_candidate(cluster, tiny, tmp_path):
    address, env, marker = cluster
    out = tmp_path / "out"
    search = subprocess.Popen(_command(tiny, out, address, 5), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        build = _wait_for_build(out, 1, time.time() + 600, marker)
        before = _recorded(out)
        worker = _processes()[build][0]  # the Ray worker running that trial
        os.kill(worker, signal.SIGKILL)
        _, err = search.communicate(timeout=600)
    finally:
        if search.poll() is None:
            search.kill()
    assert search.returncode == 0, err[-2000:]
    after = _recorded(out)
    assert len(after) == 5 and len({c["key"] for c in after}) == 5
    assert all(record in after for record in before)  # recorded before the kill, kept as they were


def test_resume_after_the_driver_is_killed(cluster, tiny, tmp_path):
    address, env, marker = cluster
    out = tmp_path / "out"
    first = subprocess.Popen(_command(tiny, out, address, 5), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        _wait_for_build(out, 2, time.time() + 600, marker)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    before = _recorded(out)
    assert 2 <= len(before) < 5
    done = subprocess.run(_command(tiny, out, address, 5) + ["--resume"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _recorded(out)
    assert len(after) == 5 and len({c["key"] for c in after}) == 5
    assert after[:len(before)] == before  # finished candidates kept, not measured again
    measured_now = [line for line in done.stderr.splitlines() if line.startswith("presso search: [")]
    assert len(measured_now) == 5 - len(before)
