"""Serial thermometers: parsers, a reconnecting reader and a pty simulator. Imports nothing of ours."""
