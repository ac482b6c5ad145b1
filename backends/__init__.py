"""Allocator backends for swapd: zbud, z3fold and zsmalloc, registered as entry points."""
