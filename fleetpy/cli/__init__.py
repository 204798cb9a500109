"""The command lines: ``fleetpyd`` (the daemon, and ``fleetpyd dev``) and ``fleetpyctl`` (fleetctl's commands)."""
