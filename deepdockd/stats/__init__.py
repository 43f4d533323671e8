"""Per-container resource use: CPU, memory, block I/O, pids and network, read from each running
container's cgroup (cgroup.py) by one sampler task (sampler.py), shown in the container
answers, ``GET /containers/{name}/stats`` and the Prometheus exposition (exposition.py)."""
