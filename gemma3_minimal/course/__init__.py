"""The course helpers: figures (`viz`), widgets (`widgets`) and exercise checkers (`exercises`).

The model library never imports this package; the notebooks do. It needs matplotlib and ipywidgets;
`reference` needs transformers too (the `course` extra, which `python3 tasks.py lab` installs).
"""
