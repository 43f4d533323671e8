"""The dashboard: a page and its files (static/), served by the daemon from the installed
package, that speak only to this daemon's API. No build step and no library: plain ES
modules and an SVG plot of our own."""
