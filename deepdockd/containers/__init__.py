"""Containers: the container service (``service``, which orchestrates) and its words
(``model``); what a container may take (``allocation``: SSH ports and GPUs; ``resources``); a
network per owner (``networks``) and a home volume per user (``homes``); the container's shape
for Docker (``spec``); what goes into a new container with its entrypoint (``bootstrap`` and
``bootstrap.sh``, ``passwords``, ``sshkeys``, ``ssh_server``) and the wait for its sshd
(``sshd_wait``); the live view (``view``) and the reaper (``reaper``)."""
