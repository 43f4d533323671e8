"""Prometheus exposition: GPU gauges under dcgm-exporter's names (with the deepdockd container
and owner that hold each GPU), and deepdockd's own metrics. Built with prometheus-client on a
registry of the app's own."""
