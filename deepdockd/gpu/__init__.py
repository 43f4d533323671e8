"""GPUs: NVML (nvml.py, the only pynvml importer) and the sampler that keeps their history."""
