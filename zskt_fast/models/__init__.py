"""Networks of the method: classifiers return (logits, attention features); the generator maps noise to images."""
from .features import (FeatureNetwork, FeatureNode, automatic_pairs, classifier_logits, describe_network_nodes,
                       feature_nodes, pair_networks, parse_pairs, probe, strided_convolutions_on_small_maps,
                       unwrap)
from .generator import Generator
from .label_generator import LabelGenerator
from .registry import (ARCHITECTURE_HELP, TORCHVISION_PREFIX, architecture_key, build_classifier,
                       torchvision_classifiers)
from .resnet import ResNet
from .wrn import WideResNet

__all__ = ["ARCHITECTURE_HELP", "FeatureNetwork", "FeatureNode", "Generator", "LabelGenerator", "ResNet",
           "TORCHVISION_PREFIX",
           "WideResNet", "architecture_key", "automatic_pairs", "build_classifier", "classifier_logits",
           "describe_network_nodes", "feature_nodes", "pair_networks", "parse_pairs", "probe",
           "strided_convolutions_on_small_maps",
           "torchvision_classifiers", "unwrap"]
