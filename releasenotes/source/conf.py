"""Release notes of cinder-rbd-incremental, built by reno from releasenotes/notes/."""

project = "cinder-rbd-incremental Release Notes"
copyright = "cinder-rbd-incremental developers"
extensions = ["reno.sphinxext"]
master_doc = "index"
exclude_patterns = []
html_theme = "alabaster"
