"""Containers: the container service (``service``, which orchestrates) and its words
(``model``); what a container may take (``allocation``: SSH ports and GPUs; ``resources``); a
network per owner (``networks``) and a home volume per user (``homes``); the container's shape
for Docker (``spec``); what a new container gets with its entrypoint (``bootstrap`` and
``bootstrap.sh``, given from the host by ``bootstrap_inputs``; ``passwords``, ``sshkeys``,
``ssh_server``) and the wait for its sshd (``sshd_wait``); a create's timing (``phases``) and
what a failed one left (``leftovers``); the live view (``view``), the containers as the API
describes them (``descriptions``) and the reaper (``reaper``)."""
