"""The public operations, one module per family: each declares its arguments, checks them,
computes the output shapes and calls the implementation registered for the input's device."""
