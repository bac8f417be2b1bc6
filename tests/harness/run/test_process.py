"""harness.run.process: the process settings of a run (threads, glibc's malloc policy)."""

import ctypes
import subprocess
import sys
import textwrap

import pytest

from harness.run import process as host
from harness.spec.settings import RunSettings

_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from harness.run.process import apply_process_settings
    from harness.spec.settings import RunSettings
    apply_process_settings(RunSettings(threads=1, malloc_retain=sys.argv[1] == "1"))
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        torch.ones(10 << 20).sum()
    f0 = faults()
    for _ in range(10):  # 40 MiB, above the largest adaptive mmap threshold (32 MiB)
        torch.ones(10 << 20).sum()
    print(faults() - f0)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_malloc_retain_stops_page_faults_on_large_tensors():
    """Default glibc maps a block above its mmap threshold afresh on every allocation (one
    fault per touched page: 10240 for 40 MiB); with malloc_retain the freed block is
    reused. (A training step's multi-MiB tensors fault the same way whenever the freed heap
    top is trimmed: ~4900 faults per ivit_micro step.)"""
    def run(flag):
        out = subprocess.run([sys.executable, "-c", _FAULTS, flag], capture_output=True,
                             text=True, check=True)
        return int(out.stdout.split()[-1])
    default, retained = run("0"), run("1")
    assert default >= 10 * 10000  # every allocation
    assert retained <= default / 2  # (a few first touches as the heap grows, at most)


def test_without_mallopt_the_setting_is_refused(monkeypatch):
    def no_libc(name):
        raise OSError("no such library")
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    with pytest.raises(RuntimeError, match="malloc_retain = false"):
        host.retain_freed_memory()


def test_malloc_retain_is_a_run_setting_and_off_by_default():
    assert RunSettings().malloc_retain is False
    assert RunSettings(malloc_retain=True).malloc_retain is True


def test_process_settings_are_applied_and_read_back():
    import torch

    before = torch.get_num_threads()
    try:
        assert host.apply_process_settings(RunSettings(threads=1)) == {"threads": 1}
        assert torch.get_num_threads() == 1
        assert host.expected_threads(RunSettings(threads=3)) == 3
        assert host.expected_threads(RunSettings()) == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(False)


def test_the_float_pretraining_runs_on_torchs_default_threads():
    """A design measured on 1 thread pretrains on all of torch's (the pretraining measures
    nothing), into the same cached float start as a design on any other thread count."""
    import torch

    from harness.run.pretrained import pretrain_settings, pretrained_path

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # a 1-thread run came first in this process
        ran = []
        for threads in (1, 2):
            s = pretrain_settings(RunSettings(model="ivit_micro", threads=threads))
            ran.append(host.apply_process_settings(s)["threads"])
            assert s.threads == host.DEFAULT_THREADS
        assert ran == [host.DEFAULT_THREADS] * 2
        assert (pretrained_path(RunSettings(model="ivit_micro", threads=1))
                == pretrained_path(RunSettings(model="ivit_micro", threads=2)))
    finally:
        torch.set_num_threads(before)
