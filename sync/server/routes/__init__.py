"""One router per resource (sync.md §5.9); ``sync.server.app`` mounts them."""
