"""The pipeline's stages, one module per DVC stage, each a plain function of the typed Config.

A stage module is the recipe a reader opens to see what the stage does: which inputs it reads (p2p.layout), which
library functions it calls with which params, what it writes. The Prefect flows (flows/<stage>.py) and the CLI
are thin shells over these; the library below takes plain arguments (docs/architecture.md §2).
"""
