"""LightningDataModules. Each exposes `name`, `in_channels`, `image_size`, `num_classes`."""
