"""The swap daemon: control socket, sessions, the pager (fault path) and the reclaimer."""
