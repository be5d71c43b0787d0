"""The harness: one LightningModule, its callbacks, models and (pure torch) compression methods."""
