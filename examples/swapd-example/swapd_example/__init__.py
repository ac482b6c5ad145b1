"""Example swapd plugins: the ``slab`` allocator backend and the ``lfu`` policy."""
