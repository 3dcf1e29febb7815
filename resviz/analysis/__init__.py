"""Experiments on trained or freshly built nets, one module each (imported on demand):

bn_check    He et al. Fig. 7 on trained nets, and the BatchNorm γ/β cross-check of the response std
invariance  Ba et al. 2016 Table 1, measured; batch dependence of BN vs LN nets
lesion      Veit et al. 2016: remove blocks at test time
shattered   Balduzzi et al. 2017: gradient correlation across inputs vs depth
shattered_1d  Balduzzi et al.'s 1-D experiment read as the paper does: curves with intervals, rates, kinks
signal      Brock et al. 2021 signal-propagation plots; De & Smith 2020 / Fixup / ReZero at init

and what they share:

nets        `Net` (a model with its input normalisation), akamaster checkpoints and run folders as `Net`s

The train/eval switches they use (eval, batch statistics, calibrated eval) are `resviz.modes`.
"""
