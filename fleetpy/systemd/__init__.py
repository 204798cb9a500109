"""The systemd adapter: units on this host, through D-Bus (``dbus``) and the agent's unit directory
(``unitdir``). ``base`` holds the narrow protocol the agent depends on."""
