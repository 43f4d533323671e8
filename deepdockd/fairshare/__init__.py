"""Fair share: per-user quotas, leases, and reclaiming GPUs that stay idle."""
