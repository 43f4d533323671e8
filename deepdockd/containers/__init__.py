"""Containers: the container service (``service``), what a container may take (``allocation``:
SSH ports and GPUs), a network per owner (``networks``), and what goes into a new container
with its entrypoint (``bootstrap.sh``, ``passwords``, ``sshkeys``)."""
