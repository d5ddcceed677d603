"""Jinja2 templates of the dashboard (a package so that packaging picks up the *.html files)."""
