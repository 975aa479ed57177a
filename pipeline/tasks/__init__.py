"""LightningModules, one per task; each receives a plain torch network."""
