"""Run by tests under ``torchrun --nproc_per_node=2``: ``python -m detnas search ...`` whose rank
``FAILING_RANK`` raises while scoring its second candidate (a stand-in for a CUDA error or a
broken image on one GPU). Not collected by pytest (no test_ prefix). The main-module guard is what
every script that runs a search needs: the search's evaluator process is started by spawning,
which imports the main script again."""

import os
import sys

from detnas import scoring
from detnas.cli import main

if __name__ == "__main__":
    if int(os.environ["RANK"]) == int(os.environ["FAILING_RANK"]):
        score = scoring.DetectionScorer.detections
        calls = []

        def failing(self, arch):
            calls.append(arch)
            if len(calls) == 2:
                raise RuntimeError("scoring failed on this rank")
            return score(self, arch)

        scoring.DetectionScorer.detections = failing

    raise SystemExit(main(sys.argv[1:]))
