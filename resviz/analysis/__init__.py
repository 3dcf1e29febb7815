"""Experiments from the follow-up literature, one module each (imported on demand):

invariance  Ba et al. 2016 Table 1, measured; batch dependence of BN vs LN nets
lesion      Veit et al. 2016: remove blocks at test time
shattered   Balduzzi et al. 2017: gradient correlation across inputs vs depth
signal      Brock et al. 2021 signal-propagation plots; De & Smith 2020 / Fixup / ReZero at init
"""
