"""monGARS Edge: a private AI assistant that lives in a box on your own network."""

import logging

__version__ = "0.1.0"

# Only the CLI configures handlers (STYLE habit 7).
logging.getLogger(__name__).addHandler(logging.NullHandler())
