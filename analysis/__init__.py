"""The optimization lab: toy-function paths, run comparisons, loss landscapes, Hessian spectra, the LR finder."""
