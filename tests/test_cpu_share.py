"""cpu_share: torch's threads for the server's contribution jobs, from the cores other tasks leave free."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import pytest
import torch

from tensorboard_plugin_aevis import cpu_share

linux = pytest.mark.skipif(not os.path.exists(cpu_share.LOADAVG), reason="reads Linux's /proc/loadavg")


def loadavg_file(tmp_path, running: int) -> str:
    path = tmp_path / "loadavg"
    path.write_text(f"0.52 0.58 0.59 {running}/467 12345\n")
    return str(path)


def test_free_cores_leaves_out_one_core_per_other_runnable_task(tmp_path):
    cores = cpu_share.usable_cores()
    assert cpu_share.free_cores(loadavg_file(tmp_path, 1), interval_s=0) == cores  # the caller alone
    assert cpu_share.free_cores(loadavg_file(tmp_path, 2), interval_s=0) == max(cores - 1, 1)
    assert cpu_share.free_cores(loadavg_file(tmp_path, cores + 1), interval_s=0) == 1
    assert cpu_share.free_cores(loadavg_file(tmp_path, 10 * cores + 7), interval_s=0) == 1  # never 0


@pytest.mark.parametrize("content", ["", "garbage\n", "0.1 0.2 0.3 x/10 5\n", "0.1 0.2 0.3\n"])
def test_an_unreadable_count_leaves_every_usable_core(tmp_path, content):
    path = tmp_path / "loadavg"
    path.write_text(content)
    assert cpu_share.free_cores(str(path), interval_s=0) == cpu_share.usable_cores()
    assert cpu_share.free_cores(str(tmp_path / "missing"), interval_s=0) == cpu_share.usable_cores()


@contextlib.contextmanager
def busy_loops(count: int):
    """``count`` other processes that never stop running (each wants a whole core)."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the kernel counts them as running
            if cpu_share.running_tasks() > count:
                break
            time.sleep(0.05)
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


@linux
def test_every_core_held_by_another_task_leaves_one_thread_and_the_count_is_restored():
    before = torch.get_num_threads()
    with busy_loops(cpu_share.usable_cores()):
        assert cpu_share.free_cores() == 1
        with cpu_share.torch_threads() as threads:
            assert threads == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_torch_threads_never_raises_torchs_own_count():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with cpu_share.torch_threads() as threads:
            assert threads == 1 == torch.get_num_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@linux
def test_a_contribution_job_on_a_busy_cpu_runs_on_one_thread_with_the_same_answer(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from run_fixtures import write_small_run
    from test_contribution_service import CTX, provider_for, request

    from tensorboard_plugin_aevis.contribution_service import ContributionService, provider_loader

    small = write_small_run(str(tmp_path), run="small", seed=0)
    load = provider_loader(provider_for(str(tmp_path)), str(tmp_path), CTX, "")
    params = request(small, examples=[0, 1, 2])
    status, idle = ContributionService(timeout_s=120).handle(dict(params), load)
    assert status == 200 and 1 <= idle["threads"] <= torch.get_num_threads()
    with busy_loops(cpu_share.usable_cores()):
        status, busy = ContributionService(timeout_s=120).handle(dict(params), load)
    assert status == 200 and busy["threads"] == 1
    assert busy["scores"] == pytest.approx(idle["scores"], abs=1e-4)  # threads change only the rounding
