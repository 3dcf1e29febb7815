"""resviz: see residual learning, layer by layer, while a ResNet trains."""
from resviz.models import cifar_resnet
from resviz.probes import Recorder, register_block

__version__ = "0.1.0"
__all__ = ["Recorder", "cifar_resnet", "register_block", "__version__"]
