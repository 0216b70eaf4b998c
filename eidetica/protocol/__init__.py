"""Pure, sans-IO protocol code: entries, keys, permissions, limits. No I/O, no clocks."""
