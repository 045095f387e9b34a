"""One module per family; each calls ``register_arch`` for the official architectures."""
