"""The control plane: the one config the fleet serves, where it is kept and how it changes."""
