"""pipeline: train RNN / LSTM / GRU sequence models from one command."""

import os

# OpenMP threads that spin while waiting turn any other load on a small CPU machine (a DataLoader worker, a second
# DDP rank, another job) into a many-fold slowdown (measured here: 523 vs 10,658 chars/s for the char LM under load).
# Passive waiting costs little when the machine is idle. Set before torch is imported; an explicit value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
