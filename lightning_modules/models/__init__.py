"""Nets torchvision lacks. Each takes `in_channels`, `image_size`, `num_classes` from the data."""
from .lenet import LeNet5, LeNet300
from .mlp import MLP
from .resnet_cifar import CifarResNet

__all__ = ["LeNet300", "LeNet5", "CifarResNet", "MLP"]
