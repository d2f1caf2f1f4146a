"""Convolution kernels: dense (:mod:`.conv`) and masked (:mod:`.masked_conv`)."""
