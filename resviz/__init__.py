"""resviz: see residual learning, layer by layer, while a ResNet trains."""
from resviz.environment import __version__
from resviz.models import cifar_resnet
from resviz.probes import Recorder, register_block

__all__ = ["Recorder", "cifar_resnet", "register_block", "__version__"]
