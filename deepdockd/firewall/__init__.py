"""The egress policy: what containers may reach outside their own networks.

``rules`` writes the policy as iptables rules (pure data), ``iptables`` is the one door to the
iptables binaries, ``keeper`` applies the rules, checks them every few seconds and puts them
back when dockerd or an admin removed them, and removes them at uninstall
(docs/security.md#egress).
"""
