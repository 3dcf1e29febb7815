"""resviz: see residual learning, layer by layer, while a ResNet trains."""
from resviz.models import cifar_resnet

__version__ = "0.1.0"
__all__ = ["cifar_resnet", "__version__"]
