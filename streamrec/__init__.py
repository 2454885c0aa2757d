"""streamrec: a streaming, event-driven recommender for a video catalogue.

This package holds the pieces shared by every runtime folder (``streams``, ``models``,
``producers``, ``consumers``): settings, the event schema, Kafka and Redis connection
helpers, the embedded services, metrics and the command line.
"""

__version__ = "0.1.0"
