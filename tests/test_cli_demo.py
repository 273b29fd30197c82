"""``aevis demo``: bad input gives one clear line and leaves nothing behind."""

import os
import subprocess
import sys

import pytest

AEVIS = [sys.executable, "-m", "tensorboard_plugin_aevis"]


def aevis(*args, **kwargs):
    return subprocess.run(AEVIS + list(args), capture_output=True, text=True, timeout=600, **kwargs)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_logdir_is_one_clear_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = aevis("demo", "--logdir", str(locked / "demo"))
    assert result.returncode != 0
    assert "cannot write to --logdir" in result.stderr
    assert "Traceback" not in result.stderr


def test_logdir_that_is_a_file_is_one_clear_line(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    result = aevis("demo", "--logdir", str(blocker / "demo"))
    assert result.returncode != 0
    assert "cannot write to --logdir" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert blocker.read_text() == "not a folder"


def test_unknown_model_lists_the_choices(tmp_path):
    result = aevis("demo", "--model", "alexnet-9000", "--logdir", str(tmp_path / "demo"))
    assert result.returncode != 0
    assert "invalid choice: 'alexnet-9000'" in result.stderr
    assert "efficientnet-lite0" in result.stderr and "fashion-cnn" in result.stderr
    assert not (tmp_path / "demo").exists()


def test_cuda_without_cuda_is_one_clear_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = aevis("demo", "--device", "cuda", "--logdir", str(tmp_path / "demo"))
    assert result.returncode != 0
    assert "CUDA is not available" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    env = dict(os.environ, AEVIS_FASHION_MNIST_ROOT=str(tmp_path / "no-data-here"))
    result = aevis("demo", "--model", "fashion-cnn", "--logdir", str(tmp_path / "runs" / "fashion"), env=env)
    assert result.returncode != 0
    assert "apt-get install dataset-fashion-mnist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "fashion").exists()
