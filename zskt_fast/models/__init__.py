"""Networks of the method: classifiers return (logits, attention features); the generator maps noise to images."""
from .generator import Generator
from .registry import ARCHITECTURE_HELP, build_classifier, check_pairable, feature_shapes
from .resnet import ResNet
from .wrn import WideResNet

__all__ = ["ARCHITECTURE_HELP", "Generator", "ResNet", "WideResNet", "build_classifier", "check_pairable",
           "feature_shapes"]
