"""Linux-specific calls (affinity, madvise, socket options by number, sysfs) live here."""
