"""fleet's HTTP API v1, served by every fleetpyd (``app``), with its JSON shapes (``schema``)."""
