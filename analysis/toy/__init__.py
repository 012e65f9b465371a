"""Optimizers on 2-D test functions: the functions (functions.py), the paths the optimizers of configs/optimizer/
take on them (paths.py), their figures and animations (plots.py); ``python -m analysis.toy`` draws them."""
