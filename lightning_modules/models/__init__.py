"""Nets torchvision lacks, and torchvision's nets built for the run's data. Each takes
`in_channels`, `image_size`, `num_classes` from the data."""
from .compact import MobileNetV1, ShuffleNet, VGGSmall
from .efficientnet import EfficientNet
from .lenet import LeNet5, LeNet300
from .mlp import MLP
from .resnet_cifar import CifarResNet
from .shift import ActiveShift, Shift, ShiftResNet
from .sspq import SSPQNet
from .torchvision_nets import alexnet, densenet_bc, mobilenet_v2, resnet, vgg16

__all__ = ["LeNet300", "LeNet5", "CifarResNet", "MLP", "MobileNetV1", "ShuffleNet", "VGGSmall",
           "EfficientNet", "Shift", "ActiveShift", "ShiftResNet", "SSPQNet", "alexnet", "vgg16",
           "resnet", "mobilenet_v2", "densenet_bc"]
