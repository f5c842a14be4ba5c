"""Networks over the lattice: periodic convolutions for any Nd (4D from one 3D convolution),
CP / Tucker factorized convolutions, and the context networks used by the flows."""

from hpcflow.nn.context import build_context_net
from hpcflow.nn.conv import ConvNd, periodic_conv
from hpcflow.nn.factorized import CPConvNd, TuckerConvNd

__all__ = ["CPConvNd", "ConvNd", "TuckerConvNd", "build_context_net", "periodic_conv"]
