"""What every benchmark records about the machine it ran on, so numbers from different runs can be compared."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from typing import Any

import torch


def run_info(benchmark: str, *, quick: bool) -> dict[str, Any]:
    """Name, date, torch version and threads, CPU count, load average and platform of this run."""
    return {
        "benchmark": benchmark,
        "quick": quick,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "processor": platform.processor(),
    }
