"""Training infrastructure shared by every task: run directories, exact resume, atomic checkpoints."""
