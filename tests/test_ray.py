"""Scale-out on a real local Ray cluster: the same numbers as a local run, a killed worker
survived, and a separate `ray start --head` cluster reached by address (all on 127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import ray  # the [ray] extra; the test extra installs it, so these always run

from onnx_infodiscard import SolverSettings, analyze, open_session
from onnx_infodiscard.embedded import DEFAULT_MODEL, MODELS

IMAGES = sorted((MODELS / "digits_cnn" / "images").glob("digit_0[0-5]*.png"))
LAYERS = ["/relu1/Relu_output_0", "/relu2/Relu_output_0"]
QUICK = SolverSettings(steps=4, samples=8, max_batch=16, eval_samples=16, max_eval_samples=64)


@pytest.fixture(scope="module")
def session():
    return open_session(DEFAULT_MODEL, IMAGES, LAYERS, device="cpu")


@pytest.fixture(scope="module")
def local(session):
    return analyze(session, settings=QUICK)


@pytest.fixture
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def same_results(a, b) -> None:
    assert [(r.image, r.layer) for r in a.results] == [(r.image, r.layer) for r in b.results]
    np.testing.assert_allclose(
        np.stack([r.entropy for r in a.results]), np.stack([r.entropy for r in b.results]), atol=1e-5
    )
    np.testing.assert_allclose([r.cid for r in a.results], [r.cid for r in b.results], atol=1e-6)


def test_ray_run_equals_the_local_run(session, local, cluster):
    same_results(analyze(session, settings=QUICK, ray="auto"), local)


def test_a_pool_keeps_its_workers_across_models(session, local, cluster):
    """`compare` and studies share one `RayPool` over their models: the workers start once, and
    each model's rows still equal the local run's."""
    from onnx_infodiscard.scale import RayPool

    other = open_session(MODELS / "torchscript_digits" / "torchscript_digits.onnx", IMAGES, ["1", "-1"], device="cpu")
    with RayPool("auto") as pool:
        first = analyze(session, settings=QUICK, ray=pool)
        started = list(pool.actors)
        second = analyze(other, settings=QUICK, ray=pool)
        assert pool.actors == started and len(started) == 2  # the same two actors (2 CPUs), none added
        again = analyze(session, settings=QUICK, ray=pool)  # back to the first model: its session reopened
    assert pool.actors == []
    same_results(first, local)
    same_results(again, local)
    same_results(second, analyze(other, settings=QUICK))


def test_a_study_on_ray_answers_as_the_local_run(tmp_path, cluster):
    """`compare --groups ... --ray auto`: every model's rows on the cluster, the same answer."""
    from onnx_infodiscard.study import read_study, run_study

    shipped = {name: MODELS / name / f"{name}.onnx" for name in ("digits_cnn", "torchscript_digits")}
    path = tmp_path / "STUDY.toml"
    path.write_text(
        f"images = {[str(p) for p in IMAGES[:2]]}\n"
        'hypotheses = ["cid[1.0] plain > scripted"]\n'
        f'[groups.plain]\nmodels = ["{shipped["digits_cnn"]}"]\n'
        f'[groups.scripted]\nmodels = ["{shipped["torchscript_digits"]}"]\n'
    )
    study = read_study(path)

    def run(ray=None):
        return run_study(
            study, settings=QUICK, device="cpu", rng=np.random.default_rng(0), converged_only=False, ray=ray
        )

    local_answer, ray_answer = run().results[0], run("auto").results[0]
    assert (ray_answer.effect, ray_answer.low, ray_answer.high) == pytest.approx(
        (local_answer.effect, local_answer.low, local_answer.high), abs=1e-6
    )
    assert ray_answer.verdict == local_answer.verdict


def test_a_worker_killed_mid_run_is_survived(session, local, cluster):
    killed = []

    def kill_one_worker(stage, advance, total):
        if advance and not killed:  # after the first group came back, while others run
            pids = subprocess.run(["pgrep", "-f", "ray::RowWorker"], capture_output=True, text=True).stdout.split()
            if pids:
                os.kill(int(pids[0]), signal.SIGKILL)
                killed.append(pids[0])

    report = analyze(session, settings=QUICK, ray="auto", progress=kill_one_worker)
    assert killed, "no Ray worker process was found to kill"
    same_results(report, local)


def test_a_cluster_started_with_ray_start_is_reached_by_address(session, local):
    """`ray start --head --block` in its own process on 127.0.0.1; ending that process stops only
    this cluster (never `ray stop`, which would stop every Ray instance on the machine)."""
    command = str(Path(sys.executable).parent / "ray")  # installed with the [ray] extra
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    with socket.socket() as probe:  # a free loopback port for the head's GCS
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    head = subprocess.Popen(
        [
            command,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen = []
        for line in head.stdout:  # until the head says it runs (or exits)
            seen.append(line)
            if "Ray runtime started" in line:
                break
        assert any("Local node IP" in line and "127.0.0.1" in line for line in seen), "".join(seen)[-2000:]
        same_results(analyze(session, settings=QUICK, ray=f"127.0.0.1:{port}"), local)
    finally:
        ray.shutdown()
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_sigterm_during_a_ray_run_exits_143_with_one_line_and_no_report(tmp_path):
    """ray.init installs a SIGTERM handler that aborts the driver (exit 134, a C++ stack line), and
    Ray's C++ wait hides a raised handler in a SystemError (exit 70): the run must end as a
    terminated one, and stderr carries no Ray notice (the token-authentication warning)."""
    out = tmp_path / "r"
    image = sorted((MODELS / "digits_cnn" / "images").glob("*.png"))[0]
    command = [sys.executable, "-m", "onnx_infodiscard_cli.main", "--debug", "--threads", "1", "analyze"]
    command += [str(DEFAULT_MODEL), str(image), "-l", "-1", "--samples", "4", "--steps", "100000"]
    process = subprocess.Popen(
        [*command, "--ray", "auto", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": ""},  # a new local cluster of its own
    )
    try:
        for _ in range(600):  # until this run's actor solves (it holds the only RowWorker)
            if subprocess.run(["pgrep", "-f", "ray::RowWorker"], capture_output=True).returncode == 0:
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        time.sleep(2.0)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    lines = stderr.strip().splitlines()
    assert process.returncode == 143, stderr
    assert lines[-1] == "error: terminated" and all(line.startswith("debug: ") for line in lines[:-1]), stderr
    assert not out.exists()
