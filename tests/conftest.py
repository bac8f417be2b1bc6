import os

import pytest
import torch

# Deterministic, CPU, two threads (the machine's size): tests must not depend on the host.
torch.use_deterministic_algorithms(True, warn_only=True)
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
