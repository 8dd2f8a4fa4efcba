"""The course helpers: figures (`viz`), widgets (`widgets`) and exercise checkers (`exercises`).

The model library never imports this package; the notebooks do. It needs matplotlib and ipywidgets.
"""
