"""Small building blocks shared by the model families."""
import torch.nn as nn

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU,
               "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation={name!r} is unknown; allowed: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()
