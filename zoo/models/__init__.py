"""Model families of the zoo.

Each family lives in its own sub-package (`zoo/models/<family>/`) and exposes a
`register(registry)` function; `zoo.registry` calls those functions explicitly, in one
place (`zoo.registry._register_builtin_families`). Importing this package is cheap: it
does not import TensorFlow.
"""
