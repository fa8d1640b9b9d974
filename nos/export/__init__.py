"""A rule taken out of nos: standalone Python source of a torch optimizer
(:mod:`nos.export.torch_module`) or an optax transformation
(:mod:`nos.export.optax_module`), written from the parsed rule; ``nos export``."""
