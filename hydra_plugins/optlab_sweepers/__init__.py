"""This project's Hydra sweepers (Hydra loads plugins only from the ``hydra_plugins`` namespace package)."""
