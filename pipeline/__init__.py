"""pipeline: train RNN / LSTM / GRU sequence models from one command."""

__version__ = "0.1.0"
